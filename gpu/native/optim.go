package native

import (
	"fmt"
	"math"

	"github.com/swarm-train/swarm/gpu/engine"
	"github.com/swarm-train/swarm/swarm/run"
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
	if i := firstNonFinite(s.grads); i >= 0 {
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
			b1, b2 := o.Beta1, o.Beta2
			bc1 := 1 - math.Pow(b1, float64(t))
			bc2 := 1 - math.Pow(b2, float64(t))
			sqrtBC2 := math.Sqrt(bc2)
			decay := 1 - lr*wd
			stepSize := lr / bc1
			forRange(s.threads, n, 1<<14, func(a, b int) {
				for i := a; i < b; i++ {
					gi := float64(g[i] * scale)
					mi := b1*float64(m[i]) + (1-b1)*gi
					vi := b2*float64(v[i]) + (1-b2)*gi*gi
					m[i], v[i] = float32(mi), float32(vi)
					pi := float64(p[i]) * decay
					p[i] = float32(pi - stepSize*mi/(math.Sqrt(vi)/sqrtBC2+o.Eps))
				}
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

func firstNonFinite(x []float32) int {
	for i, v := range x {
		if v-v != 0 { // NaN or ±Inf
			return i
		}
	}
	return -1
}
