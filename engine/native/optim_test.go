package native

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/spec/run"
)

// refStep is the optimizer of the package documentation in float64, one
// element at a time.
func refStep(o run.OptimizerSpec, t int, lr, wd float64, p, g, m, v float64) (float64, float64, float64) {
	switch o.Name {
	case "adamw":
		p *= 1 - lr*wd
		m = o.Beta1*m + (1-o.Beta1)*g
		v = o.Beta2*v + (1-o.Beta2)*g*g
		mh := m / (1 - math.Pow(o.Beta1, float64(t)))
		vh := v / (1 - math.Pow(o.Beta2, float64(t)))
		return p - lr*mh/(math.Sqrt(vh)+o.Eps), m, v
	default: // sgd
		g += wd * p
		m = o.Momentum*m + g
		return p - lr*m, m, 0
	}
}

func TestOptimizerSteps(t *testing.T) {
	for _, name := range []string{"adamw", "sgd"} {
		m := tinyGPT(1)
		m.Optimizer.Name, m.Optimizer.WeightDecay = name, 0.1
		if name == "sgd" {
			m.Optimizer.Momentum, m.Optimizer.Beta1, m.Optimizer.Beta2, m.Optimizer.Eps = 0.9, 0, 0, 0
		}
		if err := m.Validate(); err != nil {
			t.Fatal(err)
		}
		s := buildShards(t, New(), m)[0]
		P := len(s.Params())
		wantState := P
		if name == "adamw" {
			wantState = 2 * P
		}
		if len(s.OptState()) != wantState {
			t.Fatalf("%s: optimizer state has %d values, want %d", name, len(s.OptState()), wantState)
		}
		p := make([]float64, P)
		for i, v := range s.Params() {
			p[i] = float64(v)
		}
		mm, vv := make([]float64, P), make([]float64, P)
		rng := rand.New(rand.NewPCG(7, 7))
		decays := map[string]bool{}
		for step := 1; step <= 3; step++ {
			g := randn(rng, P, 1)
			copy(s.Grads(), g)
			lr, scale := 0.01*float64(step), float32(0.5)
			if err := s.Step(lr, scale); err != nil {
				t.Fatal(err)
			}
			for _, ten := range s.Layout() {
				wd := 0.0
				if decayed(ten) {
					wd = m.Optimizer.WeightDecay
				}
				decays[ten.Name] = wd > 0
				for i := ten.Offset; i < ten.Offset+ten.Size(); i++ {
					p[i], mm[i], vv[i] = refStep(m.Optimizer, step, lr, wd, p[i], float64(g[i]*scale), mm[i], vv[i])
				}
			}
			for i := range p {
				if math.Abs(float64(s.Params()[i])-p[i]) > 1e-6*(1+math.Abs(p[i])) {
					t.Fatalf("%s step %d: param %d = %g, want %g", name, step, i, s.Params()[i], p[i])
				}
			}
		}
		if s.StepCount() != 3 {
			t.Fatalf("%s: step count %d", name, s.StepCount())
		}
		for tensor, want := range map[string]bool{"wte": false, "wpe": false, "h0.ln1.w": false, "h0.attn.qkv.b": false, "h0.attn.qkv.w": true, "h0.mlp.proj.w": true, "head.w": true, "lnf.b": false} {
			if decays[tensor] != want {
				t.Errorf("%s: weight decay on %s is %v, want %v", name, tensor, decays[tensor], want)
			}
		}
	}
}

// TestAdamWBiasCorrectionUsesStepCount: restoring the step count changes the
// bias correction exactly as if the steps had been taken.
func TestAdamWBiasCorrectionUsesStepCount(t *testing.T) {
	m := tinyMLP(1)
	s := buildShards(t, New(), m)[0]
	s.SetStepCount(99)
	before := append([]float32(nil), s.Params()...)
	for i := range s.Grads() {
		s.Grads()[i] = 1
	}
	if err := s.Step(1e-3, 1); err != nil {
		t.Fatal(err)
	}
	o := m.Optimizer
	mh := (1 - o.Beta1) / (1 - math.Pow(o.Beta1, 100))
	vh := (1 - o.Beta2) / (1 - math.Pow(o.Beta2, 100))
	want := float64(before[0]) - 1e-3*mh/(math.Sqrt(vh)+o.Eps)
	if math.Abs(float64(s.Params()[0])-want) > 1e-7 {
		t.Fatalf("param %g, want %g", s.Params()[0], want)
	}
	if s.StepCount() != 100 {
		t.Fatalf("step count %d", s.StepCount())
	}
}

func TestStepRejectsNonFinite(t *testing.T) {
	s := buildShards(t, New(), tinyMLP(1))[0]
	before := append([]float32(nil), s.Params()...)
	s.Grads()[7] = float32(math.NaN())
	if err := s.Step(1e-3, 1); !errors.Is(err, engine.ErrNonFinite) {
		t.Fatalf("NaN gradient: %v", err)
	}
	s.ZeroGrad()
	for _, bad := range []struct {
		lr    float64
		scale float32
	}{{math.NaN(), 1}, {-1, 1}, {1e-3, float32(math.Inf(1))}} {
		if err := s.Step(bad.lr, bad.scale); !errors.Is(err, engine.ErrNonFinite) {
			t.Errorf("lr %g scale %g: %v", bad.lr, bad.scale, err)
		}
	}
	if relErr(s.Params(), before) != 0 || s.StepCount() != 0 {
		t.Fatal("a rejected step changed the parameters or the step count")
	}
}

func TestGradNormSq(t *testing.T) {
	s := buildShards(t, New(), tinyMLP(2))[0]
	var want float64
	for i := range s.Grads() {
		s.Grads()[i] = float32(i%7) - 3
		want += float64(s.Grads()[i]) * float64(s.Grads()[i])
	}
	if got := s.GradNormSq(); got != want {
		t.Fatalf("GradNormSq %g, want %g", got, want)
	}
	s.ZeroGrad()
	if s.GradNormSq() != 0 {
		t.Fatal("ZeroGrad left gradients")
	}
}
