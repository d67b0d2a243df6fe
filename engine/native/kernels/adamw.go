package kernels

import "math"

// AdamWParams are the per-step constants of an AdamW update (see AdamW).
type AdamWParams struct {
	Scale      float32 // gradient multiplier (clipping, averaging)
	Beta1      float32
	Beta2      float32
	Decay      float32 // 1 − lr·weight_decay (1 for tensors without decay)
	StepSize   float32 // lr / (1 − β1ᵗ)
	InvSqrtBC2 float32 // 1 / √(1 − β2ᵗ)
	Eps        float32
}

// AdamW updates parameters p with gradients g and moments m, v in place, in
// float32 (as torch.optim.AdamW does):
//
//	g ← g·Scale; m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²
//	p ← p·Decay − StepSize·m / (√v·InvSqrtBC2 + Eps)
//
// g itself is not modified. All slices must have the same length.
func AdamW(p, g, m, v []float32, c AdamWParams) {
	n := len(p)
	if n == 0 {
		return
	}
	g, m, v = g[:n], m[:n], v[:n]
	k := vectorAdamW(p, g, m, v, &c)
	b1c, b2c := 1-c.Beta1, 1-c.Beta2
	for i := k; i < n; i++ {
		gi := g[i] * c.Scale
		mi := c.Beta1*m[i] + b1c*gi
		vi := c.Beta2*v[i] + b2c*(gi*gi)
		m[i], v[i] = mi, vi
		denom := float32(math.Sqrt(float64(vi)))*c.InvSqrtBC2 + c.Eps
		p[i] = p[i]*c.Decay - c.StepSize*(mi/denom)
	}
}
