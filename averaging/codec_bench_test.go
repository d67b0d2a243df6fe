package averaging

import "testing"

func BenchmarkCodec(b *testing.B) {
	src := make([]float32, 1<<20)
	for i := range src {
		src[i] = float32(i%1000) - 500
	}
	dst := make([]float32, len(src))
	for _, c := range []Codec{CodecNone, CodecFP16, CodecInt8, CodecBF16} {
		buf := c.Encode(nil, src)
		b.Run(c.String()+"/encode", func(b *testing.B) {
			b.SetBytes(4 << 20)
			for b.Loop() {
				buf = c.Encode(buf[:0], src)
			}
		})
		b.Run(c.String()+"/decode", func(b *testing.B) {
			b.SetBytes(4 << 20)
			for b.Loop() {
				if err := c.Decode(dst, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
