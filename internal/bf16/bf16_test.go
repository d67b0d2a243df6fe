package bf16

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestConvert(t *testing.T) {
	for _, c := range []struct {
		in   float32
		want uint16
	}{
		{1, 0x3f80},
		{-2, 0xc000},
		{0, 0},
		{float32(math.Inf(1)), 0x7f80},
		{float32(math.Inf(-1)), 0xff80},
		{math.Float32frombits(0x3f808000), 0x3f80}, // tie: to even (down)
		{math.Float32frombits(0x3f818000), 0x3f82}, // tie: to even (up)
		{math.Float32frombits(0x3f808001), 0x3f81}, // above the tie: up
	} {
		if got := From32(c.in); got != c.want {
			t.Errorf("From32(%g) = %#04x, want %#04x", c.in, got, c.want)
		}
	}
	if v := To32(From32(float32(math.NaN()))); !math.IsNaN(float64(v)) {
		t.Errorf("NaN became %g; receivers must still see it", v)
	}
	// Signalling NaN whose payload is all in the low bits must not round to Inf.
	if v := To32(From32(math.Float32frombits(0x7f800001))); !math.IsNaN(float64(v)) {
		t.Errorf("low-payload NaN became %g", v)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		x := float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(40)-20)))
		y := To32(From32(x))
		if rel := math.Abs(float64(y-x)) / math.Abs(float64(x)); rel > 1.0/256 {
			t.Fatalf("%g -> %g: relative error %g above 2^-8", x, y, rel)
		}
	}
}
