package fvec

import (
	"math"
	"math/rand/v2"
	"testing"
)

// naive is the definition.
func naive(v []float32) int {
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return i
		}
	}
	return -1
}

func TestFirstNonFinite(t *testing.T) {
	specials := []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)),
		math.Float32frombits(0x7fc00001), math.Float32frombits(0xffffffff), math.Float32frombits(0x7f800001)}
	finite := []float32{0, float32(math.Copysign(0, -1)), math.MaxFloat32, -math.MaxFloat32,
		math.SmallestNonzeroFloat32, math.Float32frombits(0x7f7fffff), math.Float32frombits(0x00800000), 1, -1}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 7, 8, 9, 15, 16, 17, 1023, 1024, 1025, 3000} {
		for off := range 2 { // a slice that starts at an odd index: unaligned pairs
			base := make([]float32, n+off)
			v := base[off:]
			for i := range v {
				if rng.IntN(4) == 0 {
					v[i] = finite[rng.IntN(len(finite))]
				} else {
					v[i] = float32(rng.NormFloat64())
				}
			}
			if got := FirstNonFinite(v); got != -1 || !AllFinite(v) {
				t.Fatalf("n %d off %d: all finite, got %d", n, off, got)
			}
			for trial := 0; trial < 20 && n > 0; trial++ {
				w := append([]float32(nil), v...)
				k := rng.IntN(n)
				w[k] = specials[rng.IntN(len(specials))]
				if rng.IntN(2) == 0 && k+1 < n { // a second one after it
					w[k+1+rng.IntN(n-k-1)] = specials[rng.IntN(len(specials))]
				}
				if got, want := FirstNonFinite(w), naive(w); got != want || AllFinite(w) {
					t.Fatalf("n %d off %d: first non-finite %d, want %d", n, off, got, want)
				}
			}
		}
	}
}

func FuzzFirstNonFinite(f *testing.F) {
	f.Add([]byte{0, 0, 0x80, 0x7f, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, b []byte) {
		v := make([]float32, len(b)/4)
		for i := range v {
			v[i] = math.Float32frombits(uint32(b[4*i]) | uint32(b[4*i+1])<<8 | uint32(b[4*i+2])<<16 | uint32(b[4*i+3])<<24)
		}
		if got, want := FirstNonFinite(v), naive(v); got != want {
			t.Fatalf("got %d, want %d", got, want)
		}
		if AllFinite(v) != (naive(v) == -1) {
			t.Fatal("AllFinite disagrees")
		}
	})
}

func BenchmarkAllFinite(b *testing.B) {
	v := make([]float32, 1<<20)
	for i := range v {
		v[i] = float32(i)
	}
	b.SetBytes(4 << 20)
	for b.Loop() {
		if !AllFinite(v) {
			b.Fatal("not finite")
		}
	}
}

func BenchmarkNaive(b *testing.B) {
	v := make([]float32, 1<<20)
	b.SetBytes(4 << 20)
	for b.Loop() {
		if naive(v) != -1 {
			b.Fatal("not finite")
		}
	}
}

func BenchmarkMaskLoop(b *testing.B) {
	v := make([]float32, 1<<20)
	b.SetBytes(4 << 20)
	for b.Loop() {
		for _, x := range v {
			if math.Float32bits(x)&exp == exp {
				b.Fatal("x")
			}
		}
	}
}

// SumSquares of small integers is exact in any order: it must equal the
// plain sum, at every length (the tail after the blocks of four included).
func TestSumSquares(t *testing.T) {
	for n := range 19 {
		v := make([]float32, n)
		var want float64
		for i := range v {
			v[i] = float32(i%7) - 3
			want += float64(v[i]) * float64(v[i])
		}
		if got := SumSquares(v); got != want {
			t.Fatalf("n %d: %v, want %v", n, got, want)
		}
	}
}
