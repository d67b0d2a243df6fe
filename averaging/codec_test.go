package averaging

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

func TestCodecErrorBounds(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, scale := range []float64{1e-6, 1e-3, 1, 100, 1e4} { // beyond ±65504 fp16 clamps (TestFP16Specials)
		src := make([]float32, 1000)
		for i := range src {
			src[i] = float32(rng.NormFloat64() * scale)
		}
		src[0], src[1] = 0, float32(-scale)
		for _, c := range []Codec{CodecNone, CodecFP16, CodecInt8, CodecBF16} {
			enc := c.Encode(nil, src)
			if len(enc) != c.EncodedLen(len(src)) {
				t.Fatalf("%s: %d bytes, want %d", c, len(enc), c.EncodedLen(len(src)))
			}
			dst := make([]float32, len(src))
			if err := c.Decode(dst, enc); err != nil {
				t.Fatalf("%s scale %g: %v", c, scale, err)
			}
			for b := 0; b < len(src); b += Int8Block {
				blk := src[b:min(b+Int8Block, len(src))]
				var amax float64
				for _, v := range blk {
					amax = math.Max(amax, math.Abs(float64(v)))
				}
				for i, v := range blk {
					x, got := float64(v), float64(dst[b+i])
					var bound float64
					switch c {
					case CodecFP16:
						bound = math.Max(math.Abs(x)*math.Pow(2, -11), math.Pow(2, -25))
					case CodecInt8:
						bound = amax/254 + amax*1e-6
					case CodecBF16: // relative at every scale: no flush of small values
						bound = math.Abs(x) * math.Pow(2, -8)
					}
					if math.Abs(got-x) > bound {
						t.Fatalf("%s scale %g: %v decoded as %v (error %g > bound %g)", c, scale, x, got, math.Abs(got-x), bound)
					}
				}
			}
		}
	}
}

func TestFP16Specials(t *testing.T) {
	cases := map[float32]float32{
		65504: 65504, 1e6: 65504, -1e6: -65504, 1: 1, 0.5: 0.5, -2: -2,
		float32(math.Pow(2, -24)): float32(math.Pow(2, -24)), 1e-9: 0,
	}
	for in, want := range cases {
		if got := f16to32(f32to16(in)); got != want {
			t.Errorf("%v -> %v, want %v", in, got, want)
		}
	}
	// Every half value survives a round trip through float32.
	for h := 0; h < 1<<16; h++ {
		if (h>>10)&0x1f == 0x1f {
			continue
		}
		if got := f32to16(f16to32(uint16(h))); got != uint16(h) && !(h == 0x8000 && got == 0x8000) {
			t.Fatalf("half %#04x -> %#04x", h, got)
		}
	}
}

func TestCodecRejectsBadInput(t *testing.T) {
	dst := make([]float32, 4)
	nan := CodecNone.Encode(nil, []float32{1, float32(math.NaN()), 3, 4})
	if err := CodecNone.Decode(dst, nan); err == nil {
		t.Fatal("NaN accepted")
	}
	if err := CodecNone.Decode(dst, nan[:15]); err == nil {
		t.Fatal("short data accepted")
	}
	inf := CodecFP16.Encode(nil, []float32{1, 2, 3, 4})
	inf[0], inf[1] = 0x00, 0x7c // +Inf
	if err := CodecFP16.Decode(dst, inf); err == nil {
		t.Fatal("fp16 Inf accepted")
	}
	bad := CodecInt8.Encode(nil, []float32{1, 2, 3, 4})
	copy(bad, []byte{0, 0, 0xc0, 0x7f}) // NaN scale
	if err := CodecInt8.Decode(dst, bad); err == nil {
		t.Fatal("int8 NaN scale accepted")
	}
	if _, err := ParseCodec("zstd"); err == nil {
		t.Fatal("unknown codec name accepted")
	}
}

// The sparse codecs: a round trip through Codec, and a message that
// declares more values than the part has is refused before a write.
func TestSparseCodecs(t *testing.T) {
	src := make([]float32, 5000)
	src[7], src[4095], src[4096], src[4999] = 3, -1, 0.25, 2
	for _, bits := range []int{8, 4, 2} {
		c, err := SparseCodec(bits)
		if err != nil || c.String() != fmt.Sprintf("sparse%d", bits) {
			t.Fatalf("SparseCodec(%d) = %v, %v", bits, c, err)
		}
		enc := c.Encode(nil, src)
		if len(enc) > c.EncodedLen(len(src)) || len(enc) > 40 {
			t.Fatalf("%s: %d bytes for 4 values (bound %d)", c, len(enc), c.EncodedLen(len(src)))
		}
		dst := make([]float32, len(src))
		if err := c.Decode(dst, enc); err != nil {
			t.Fatal(err)
		}
		if dst[7] != 3 || dst[4999] != 2 || dst[0] != 0 { // block maxima are exact
			t.Fatalf("%s: decoded %v %v %v", c, dst[7], dst[4999], dst[0])
		}
		// The same message for a part of 4000 values: index 4999 is past it.
		short := make([]float32, 4000)
		if err := c.Decode(short, enc); !errors.Is(err, errCodec) {
			t.Fatalf("%s: a part of 4000 took index 4999: %v", c, err)
		}
		// A count larger than the part.
		if err := c.Decode(make([]float32, 3), []byte{4}); !errors.Is(err, errCodec) {
			t.Fatalf("%s: 4 values in a part of 3: %v", c, err)
		}
	}
	if _, err := SparseCodec(3); err == nil {
		t.Fatal("3 bits accepted")
	}
}

func FuzzCodecDecode(f *testing.F) {
	for _, c := range []Codec{CodecNone, CodecFP16, CodecInt8, CodecBF16, CodecSparse8, CodecSparse4, CodecSparse2} {
		f.Add(uint8(c), uint16(3), c.Encode(nil, []float32{1, -2, 3.5}))
	}
	f.Add(uint8(9), uint16(1), []byte{1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, c uint8, n uint16, data []byte) {
		dst := make([]float32, int(n)%4096)
		if err := Codec(c).Decode(dst, data); err == nil {
			for _, v := range dst {
				if !finite32(v) {
					t.Fatalf("decoded non-finite %v without error", v)
				}
			}
		}
	})
}
