package native

import (
	"fmt"
	"math"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/engine/native/kernels"
	"github.com/swarm-train/swarm/internal/fvec"
	"github.com/swarm-train/swarm/spec/run"
)

// decayed reports whether weight decay applies to tensor t: 2-D weight
// matrices only, not the embeddings.
func decayed(t run.Tensor) bool {
	return len(t.Shape) == 2 && t.Name != "wte" && t.Name != "wpe"
}

// Step applies one optimizer step (see the package documentation).
func (s *Shard) Step(lr float64, scale float32) error {
	if math.IsNaN(lr) || math.IsInf(lr, 0) || lr < 0 {
		return fmt.Errorf("%w: learning rate %g", engine.ErrNonFinite, lr)
	}
	if f := float64(scale); math.IsNaN(f) || math.IsInf(f, 0) {
		return fmt.Errorf("%w: gradient scale %g", engine.ErrNonFinite, scale)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := s.firstNonFiniteGrad(); i >= 0 {
		return fmt.Errorf("%w: gradient %d of shard %d is %g", engine.ErrNonFinite, i, s.index, s.grads[i])
	}
	t := s.step + 1
	o := s.opt
	P := len(s.params)
	for _, ten := range s.layout {
		wd := 0.0
		if decayed(ten) {
			wd = o.WeightDecay
		}
		lo, n := ten.Offset, ten.Size()
		p, g := s.params[lo:lo+n], s.grads[lo:lo+n]
		switch o.Name {
		case "adamw":
			m, v := s.state[lo:lo+n], s.state[P+lo:P+lo+n]
			bc1 := 1 - math.Pow(o.Beta1, float64(t))
			bc2 := 1 - math.Pow(o.Beta2, float64(t))
			c := kernels.AdamWParams{
				Scale: scale, Beta1: float32(o.Beta1), Beta2: float32(o.Beta2),
				Decay: float32(1 - lr*wd), StepSize: float32(lr / bc1),
				InvSqrtBC2: float32(1 / math.Sqrt(bc2)), Eps: float32(o.Eps),
			}
			// Cut at multiples of 8 so the kernel's vector and scalar parts
			// see the same elements whatever the thread count.
			forRange(s.threads, (n+7)/8, 1<<11, func(a, b int) {
				a, b = a*8, min(b*8, n)
				kernels.AdamW(p[a:b], g[a:b], m[a:b], v[a:b], c)
			})
		case "sgd":
			buf := s.state[lo : lo+n]
			mu := o.Momentum
			forRange(s.threads, n, 1<<14, func(a, b int) {
				for i := a; i < b; i++ {
					gi := float64(g[i]*scale) + wd*float64(p[i])
					bi := mu*float64(buf[i]) + gi
					buf[i] = float32(bi)
					p[i] = float32(float64(p[i]) - lr*bi)
				}
			})
		default:
			return fmt.Errorf("native: unknown optimizer %q", o.Name)
		}
	}
	s.step = t
	return nil
}

// firstNonFiniteGrad is firstNonFinite over the gradients, on all threads.
func (s *Shard) firstNonFiniteGrad() int {
	const chunk = 1 << 14
	n := len(s.grads)
	parts := (n + chunk - 1) / chunk
	bad := make([]int, parts)
	forRange(s.threads, parts, 8, func(lo, hi int) {
		for c := lo; c < hi; c++ {
			bad[c] = fvec.FirstNonFinite(s.grads[c*chunk : min((c+1)*chunk, n)])
		}
	})
	for c, i := range bad {
		if i >= 0 {
			return c*chunk + i
		}
	}
	return -1
}
