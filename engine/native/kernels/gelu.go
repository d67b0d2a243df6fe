package kernels

import "math"

// GELU (tanh approximation) element-wise: dst[i] = gelu(src[i]), computed as
// x·σ(2u), u = √(2/π)·(x + 0.044715·x³), since 0.5·(1 + tanh(u)) = σ(2u).
// dst and src may be the same slice. Vectorised on amd64 (relative error
// ~1e-7); elsewhere, and for the last len%8 values, in float64.
func GELU(dst, src []float32) {
	n := len(src)
	_ = dst[n-1:]
	v := vectorGELU(dst[:n], src)
	for i := v; i < n; i++ {
		x := float64(src[i])
		dst[i] = float32(x / (1 + math.Exp(-2*geluC*(x+0.044715*x*x*x))))
	}
}

// GELUBackward multiplies d[i] by gelu′(x[i]) in place:
// gelu′(x) = s + x·s·(1−s)·2u′, s = σ(2u), u′ = √(2/π)·(1 + 3·0.044715·x²).
func GELUBackward(d, x []float32) {
	n := len(x)
	_ = d[n-1:]
	v := vectorGELUBackward(d[:n], x)
	for i := v; i < n; i++ {
		xv := float64(x[i])
		s := 1 / (1 + math.Exp(-2*geluC*(xv+0.044715*xv*xv*xv)))
		du := geluC * (1 + 3*0.044715*xv*xv)
		d[i] = float32(float64(d[i]) * (s + 2*xv*s*(1-s)*du))
	}
}

const geluC = 0.7978845608028654 // √(2/π)

// ExpShift sets x[i] = e^(x[i]·scale − shift) in place and returns the sum of
// the results: the exponentials of a softmax, with shift the row's maximum
// of x·scale (so every exponent is ≤ 0). Vectorised on amd64 for the first
// multiple of 8 values; the rest in float64.
func ExpShift(x []float32, scale, shift float32) float32 {
	k, sum := vectorExpShift(x, scale, shift)
	for i := k; i < len(x); i++ {
		e := float32(math.Exp(float64(x[i])*float64(scale) - float64(shift)))
		x[i] = e
		sum += e
	}
	return sum
}
