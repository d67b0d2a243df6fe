// Package bf16 converts between float32 and bfloat16: float32's sign and
// exponent with 7 mantissa bits, so the full float32 range at a relative
// precision of 2^-8. The pipeline sends activations in it and averaging can
// compress gradients with it; unlike IEEE half it never flushes the small
// values that adaptive optimizers rescale.
package bf16

import "math"

// From32 rounds f to bfloat16 (nearest, ties to even). NaN stays NaN and
// infinities stay infinite, so receivers that reject them still do.
func From32(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40 // NaN: keep it a (quiet) NaN
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

// To32 widens a bfloat16 to float32 (exactly).
func To32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }
