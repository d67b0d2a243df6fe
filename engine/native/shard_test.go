package native

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/spec/run"
)

// Small versions of the built-in models, so the tests stay fast.
func tinyMLP(shards int) *run.Manifest {
	m := run.NewMLPMNIST(1)
	m.Model.Input, m.Model.Hidden, m.Model.Classes = 20, []int{16, 12, 8}, 5
	m.Shards = run.EvenShards(m.Model.Units(), shards)
	return m
}

const tinyCharset = "abcdefghijk"

func tinyGPT(shards int) *run.Manifest {
	m := run.NewGPTChar(tinyCharset, 1)
	m.Model.BlockSize, m.Model.NLayer, m.Model.NHead, m.Model.NEmbd = 8, 3, 2, 16
	m.Shards = run.EvenShards(m.Model.Units(), shards)
	return m
}

// tinyLlama has grouped-query attention (4 query heads, 2 key/value heads of
// width 4); tied, it is one shard whose head is wte.
func tinyLlama(shards int) *run.Manifest {
	m, err := run.NewLlama(run.PresetLlamaTiny, tinyCharset, 1)
	if err != nil {
		panic(err)
	}
	md := &m.Model
	md.BlockSize, md.NLayer, md.NHead, md.NKVHead, md.NEmbd, md.FFNHidden = 8, 3, 4, 2, 16, 24
	m.Shards = run.EvenShards(md.Units(), shards)
	return m
}

// ranked gives m a learned projection of rank r at each of its cuts.
func ranked(m *run.Manifest, r int) *run.Manifest {
	m.Training.ActivationRank = r
	if err := m.Validate(); err != nil {
		panic(err)
	}
	return m
}

func tinyLlamaTied() *run.Manifest {
	m := tinyLlama(1)
	m.Model.TieEmbeddings = true
	return m
}

func batchFor(m *run.Manifest, n int, seed uint64) *engine.Batch {
	rng := rand.New(rand.NewPCG(seed, 99))
	b := &engine.Batch{N: n}
	md := m.Model
	if md.Arch == run.ArchMLPMNIST {
		b.X = randn(rng, n*md.Input, 1)
		b.Targets = make([]int32, n)
		for i := range b.Targets {
			b.Targets[i] = int32(rng.IntN(md.Classes))
		}
		return b
	}
	b.Tokens, b.Targets = make([]int32, n*md.BlockSize), make([]int32, n*md.BlockSize)
	for i := range b.Tokens {
		b.Tokens[i] = int32(rng.IntN(md.Vocab))
		b.Targets[i] = int32(rng.IntN(md.Vocab))
	}
	return b
}

func buildShards(t *testing.T, e *Engine, m *run.Manifest) []*Shard {
	t.Helper()
	var ss []*Shard
	for i := range m.Shards {
		s, err := e.newShard(m, i)
		if err != nil {
			t.Fatal(err)
		}
		ss = append(ss, s)
	}
	return ss
}

// trainStep runs forward through every shard and backward through all of
// them, returning the loss.
func trainStep(t *testing.T, ss []*Shard, b *engine.Batch) float32 {
	t.Helper()
	var in []float32
	tapes := make([]engine.Tape, len(ss))
	var loss float32
	for i, s := range ss {
		out, l, tp, err := s.Forward(b, in, true)
		if err != nil {
			t.Fatalf("forward shard %d: %v", i, err)
		}
		in, loss, tapes[i] = out, l, tp
	}
	var g []float32
	for i := len(ss) - 1; i >= 0; i-- {
		var err error
		if g, err = ss[i].Backward(tapes[i], g); err != nil {
			t.Fatalf("backward shard %d: %v", i, err)
		}
	}
	if g != nil {
		t.Fatal("first shard returned an input gradient")
	}
	return loss
}

func evalLoss(t *testing.T, ss []*Shard, b *engine.Batch) float64 {
	t.Helper()
	var in []float32
	var loss float32
	for i, s := range ss {
		out, l, tp, err := s.Forward(b, in, false)
		if err != nil || tp != nil {
			t.Fatalf("eval forward shard %d: %v (tape %v)", i, err, tp)
		}
		in, loss = out, l
	}
	return float64(loss)
}

func concat(ss []*Shard, f func(*Shard) []float32) []float32 {
	var all []float32
	for _, s := range ss {
		all = append(all, f(s)...)
	}
	return all
}

func relErr(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(num / math.Max(den, 1e-30))
}

func TestSplitMatchesWhole(t *testing.T) {
	for _, mk := range []func(int) *run.Manifest{tinyMLP, tinyGPT, tinyLlama} {
		whole := mk(1)
		b := batchFor(whole, 4, 1)
		e := New(WithThreads(2))
		ref := buildShards(t, e, whole)
		refLoss := trainStep(t, ref, b)
		refGrads := concat(ref, (*Shard).Grads)
		for _, n := range []int{2, 3} {
			m := mk(n)
			ss := buildShards(t, e, m)
			if p := concat(ss, (*Shard).Params); relErr(p, concat(ref, (*Shard).Params)) != 0 {
				t.Fatalf("%s/%d shards: initial parameters differ from the unsplit model", m.Model.Arch, n)
			}
			loss := trainStep(t, ss, b)
			if d := math.Abs(float64(loss - refLoss)); d > 1e-5*math.Abs(float64(refLoss)) {
				t.Errorf("%s/%d shards: loss %g, unsplit %g", m.Model.Arch, n, loss, refLoss)
			}
			g := concat(ss, (*Shard).Grads)
			if len(g) != len(refGrads) {
				t.Fatalf("%s/%d shards: %d gradients, unsplit %d", m.Model.Arch, n, len(g), len(refGrads))
			}
			if r := relErr(g, refGrads); r > 1e-5 {
				t.Errorf("%s/%d shards: gradient relative error %g", m.Model.Arch, n, r)
			}
			// A step clipped by the global norm across shards (what the
			// trainer does) lands where the unsplit model's does.
			if r := relErr(clippedStep(t, ss, 0.5), clippedStep(t, buildAndGrad(t, e, whole, b), 0.5)); r > 1e-5 {
				t.Errorf("%s/%d shards: parameters after a clipped step differ by %g", m.Model.Arch, n, r)
			}
		}
	}
}

func buildAndGrad(t *testing.T, e *Engine, m *run.Manifest, b *engine.Batch) []*Shard {
	ss := buildShards(t, e, m)
	trainStep(t, ss, b)
	return ss
}

// clippedStep scales the gradients of all shards so their global norm is at
// most maxNorm, steps every shard and returns the concatenated parameters.
func clippedStep(t *testing.T, ss []*Shard, maxNorm float64) []float32 {
	t.Helper()
	var sq float64
	for _, s := range ss {
		sq += s.GradNormSq()
	}
	scale := float32(1)
	if norm := math.Sqrt(sq); norm > maxNorm {
		scale = float32(maxNorm / norm)
	}
	for _, s := range ss {
		if err := s.Step(1e-2, scale); err != nil {
			t.Fatal(err)
		}
	}
	return concat(ss, (*Shard).Params)
}

// TestModelGrad checks the whole model's parameter gradients (every tensor of
// every shard) against finite differences of the loss, on a 2-shard split.
func TestModelGrad(t *testing.T) {
	for _, m := range []*run.Manifest{tinyMLP(2), tinyGPT(2), tinyLlama(2), tinyLlamaTied(),
		ranked(tinyMLP(3), 4), ranked(tinyGPT(2), 6), ranked(tinyLlama(3), 5)} {
		ss := buildShards(t, New(), m)
		if m.Model.LanguageModel() {
			// Larger weights than the 0.02 init, so every path carries
			// signal. Llama's embedding feeds an RMSNorm, which divides by
			// the row's scale: at unit scale the finite difference's 1e-2
			// stays a small step.
			rng := rand.New(rand.NewPCG(4, 4))
			for _, s := range ss {
				for _, ten := range s.layout {
					scale := 0.3
					if ten.Name == "wte" && m.Model.Arch == run.ArchLlama {
						scale = 1
					}
					if len(ten.Shape) == 2 {
						copy(s.params[ten.Offset:], randn(rng, ten.Size(), scale))
					}
				}
			}
		}
		b := batchFor(m, 3, 2)
		trainStep(t, ss, b)
		for _, s := range ss {
			for _, ten := range s.layout {
				x := s.params[ten.Offset : ten.Offset+ten.Size()]
				g := s.grads[ten.Offset : ten.Offset+ten.Size()]
				checkGrad(t, m.Model.Arch+" "+ten.Name, x, g, func() float64 { return evalLoss(t, ss, b) })
			}
		}
	}
}

func TestDeterministicAcrossThreads(t *testing.T) {
	for _, m := range []*run.Manifest{tinyMLP(2), tinyGPT(2), tinyLlama(2), tinyLlamaTied(), ranked(tinyLlama(2), 5)} {
		b := batchFor(m, 5, 3)
		a, c := buildShards(t, New(WithThreads(1)), m), buildShards(t, New(WithThreads(4)), m)
		for step := 0; step < 2; step++ {
			la, lc := trainStep(t, a, b), trainStep(t, c, b)
			if la != lc {
				t.Fatalf("%s: loss %v with 1 thread, %v with 4", m.Model.Arch, la, lc)
			}
			for i := range a {
				if relErr(a[i].Grads(), c[i].Grads()) != 0 {
					t.Fatalf("%s: shard %d gradients differ between thread counts", m.Model.Arch, i)
				}
				if err := a[i].Step(1e-2, 1); err != nil {
					t.Fatal(err)
				}
				if err := c[i].Step(1e-2, 1); err != nil {
					t.Fatal(err)
				}
				if relErr(a[i].Params(), c[i].Params()) != 0 {
					t.Fatalf("%s: shard %d parameters differ after a step", m.Model.Arch, i)
				}
				a[i].ZeroGrad()
				c[i].ZeroGrad()
			}
		}
	}
}

// TestConcurrentMicroBatches: two micro-batches in flight at once through the
// same shards accumulate the same gradients as one after the other.
func TestConcurrentMicroBatches(t *testing.T) {
	m := tinyGPT(2)
	b1, b2 := batchFor(m, 2, 10), batchFor(m, 2, 11)
	seq := buildShards(t, New(), m)
	trainStep(t, seq, b1)
	trainStep(t, seq, b2)
	par := buildShards(t, New(), m)
	var wg sync.WaitGroup
	for _, b := range []*engine.Batch{b1, b2} {
		wg.Add(1)
		go func() { defer wg.Done(); trainStep(t, par, b) }()
	}
	wg.Wait()
	for i := range seq {
		if r := relErr(par[i].Grads(), seq[i].Grads()); r > 1e-6 {
			t.Fatalf("shard %d: concurrent gradients differ by %g", i, r)
		}
	}
}

func TestLogits(t *testing.T) {
	m := tinyMLP(1)
	s := buildShards(t, New(), m)[0]
	if s.Logits() != nil {
		t.Fatal("logits before any evaluation")
	}
	b := batchFor(m, 3, 1)
	b.Targets = nil // evaluation without labels
	out, loss, _, err := s.Forward(b, nil, false)
	if err != nil || loss != 0 {
		t.Fatalf("eval without targets: loss %g, err %v", loss, err)
	}
	if l := s.Logits(); len(l) != 3*m.Model.Classes {
		t.Fatalf("%d logits, want %d", len(l), 3*m.Model.Classes)
	}
	if !slices.Equal(out, s.Logits()) {
		t.Fatal("the evaluation Forward did not return the logits Logits reports")
	}
}

func TestBadInputs(t *testing.T) {
	e := New()
	mlp := buildShards(t, e, tinyMLP(2))
	gpt := buildShards(t, e, tinyGPT(2))
	ll := buildShards(t, e, tinyLlama(2))
	mb, gb, lb := batchFor(tinyMLP(1), 2, 1), batchFor(tinyGPT(1), 2, 1), batchFor(tinyLlama(1), 2, 1)
	nan := float32(math.NaN())
	edit := func(b *engine.Batch, f func(*engine.Batch)) *engine.Batch {
		c := *b
		c.X = append([]float32(nil), b.X...)
		c.Tokens = append([]int32(nil), b.Tokens...)
		c.Targets = append([]int32(nil), b.Targets...)
		f(&c)
		return &c
	}
	mlpAct := make([]float32, 2*mlp[0].outSize)
	gptAct := make([]float32, 2*gpt[0].outSize)
	llAct := make([]float32, 2*ll[0].outSize)
	cases := []struct {
		name  string
		s     *Shard
		b     *engine.Batch
		in    []float32
		train bool
		want  error
	}{
		{"nil batch", mlp[0], nil, nil, true, engine.ErrShape},
		{"zero samples", mlp[0], edit(mb, func(b *engine.Batch) { b.N = 0 }), nil, true, engine.ErrShape},
		{"short X", mlp[0], edit(mb, func(b *engine.Batch) { b.X = b.X[1:] }), nil, true, engine.ErrShape},
		{"NaN in X", mlp[0], edit(mb, func(b *engine.Batch) { b.X[3] = nan }), nil, true, engine.ErrNonFinite},
		{"input to shard 0", mlp[0], mb, mlpAct, true, engine.ErrShape},
		{"short activations", mlp[1], mb, mlpAct[1:], true, engine.ErrShape},
		{"Inf activation", mlp[1], mb, append([]float32{float32(math.Inf(1))}, mlpAct[1:]...), true, engine.ErrNonFinite},
		{"missing targets", mlp[1], edit(mb, func(b *engine.Batch) { b.Targets = nil }), mlpAct, true, engine.ErrShape},
		{"class out of range", mlp[1], edit(mb, func(b *engine.Batch) { b.Targets[1] = 5 }), mlpAct, true, engine.ErrRange},
		{"negative class", mlp[1], edit(mb, func(b *engine.Batch) { b.Targets[0] = -1 }), mlpAct, false, engine.ErrRange},
		{"token out of range", gpt[0], edit(gb, func(b *engine.Batch) { b.Tokens[5] = int32(len(tinyCharset)) }), nil, true, engine.ErrRange},
		{"short tokens", gpt[0], edit(gb, func(b *engine.Batch) { b.Tokens = b.Tokens[:3] }), nil, true, engine.ErrShape},
		{"target out of range", gpt[1], edit(gb, func(b *engine.Batch) { b.Targets[0] = 100 }), gptAct, true, engine.ErrRange},
		{"NaN residual", gpt[1], gb, append([]float32{nan}, gptAct[1:]...), true, engine.ErrNonFinite},
		{"llama token out of range", ll[0], edit(lb, func(b *engine.Batch) { b.Tokens[7] = int32(len(tinyCharset)) }), nil, true, engine.ErrRange},
		{"llama negative token", ll[0], edit(lb, func(b *engine.Batch) { b.Tokens[0] = -1 }), nil, false, engine.ErrRange},
		{"llama long tokens", ll[0], edit(lb, func(b *engine.Batch) { b.Tokens = append(b.Tokens, 1) }), nil, true, engine.ErrShape},
		{"llama target out of range", ll[1], edit(lb, func(b *engine.Batch) { b.Targets[3] = 1 << 30 }), llAct, true, engine.ErrRange},
		{"llama short residual", ll[1], lb, llAct[2:], true, engine.ErrShape},
		{"llama Inf residual", ll[1], lb, append([]float32{float32(math.Inf(-1))}, llAct[1:]...), true, engine.ErrNonFinite},
	}
	for _, c := range cases {
		out, _, tp, err := c.s.Forward(c.b, c.in, c.train)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.want)
		}
		if out != nil || tp != nil {
			t.Errorf("%s: output or tape returned with an error", c.name)
		}
	}

	// Tapes: reuse, release, wrong shard, wrong gradient size, NaN gradient.
	_, _, tp, err := mlp[0].Forward(mb, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mlp[1].Backward(tp, nil); !errors.Is(err, engine.ErrTape) {
		t.Errorf("tape from another shard: %v", err)
	}
	if _, err := mlp[0].Backward(nil, nil); !errors.Is(err, engine.ErrTape) {
		t.Errorf("nil tape: %v", err)
	}
	if _, err := mlp[0].Backward(tp, mlpAct[1:]); !errors.Is(err, engine.ErrShape) {
		t.Errorf("short output gradient: %v", err)
	}
	if _, err := mlp[0].Backward(tp, append([]float32{nan}, mlpAct[1:]...)); !errors.Is(err, engine.ErrNonFinite) {
		t.Errorf("NaN output gradient: %v", err)
	}
	if _, err := mlp[0].Backward(tp, mlpAct); err != nil {
		t.Fatalf("valid backward after rejected ones: %v", err)
	}
	if _, err := mlp[0].Backward(tp, mlpAct); !errors.Is(err, engine.ErrTape) {
		t.Errorf("reused tape: %v", err)
	}
	tp.Release() // after use: no effect
	_, _, tp, _ = mlp[0].Forward(mb, nil, true)
	tp.Release()
	if _, err := mlp[0].Backward(tp, mlpAct); !errors.Is(err, engine.ErrTape) {
		t.Errorf("released tape: %v", err)
	}
	_, _, tp, _ = mlp[1].Forward(mb, mlpAct, true)
	if _, err := mlp[1].Backward(tp, []float32{1}); !errors.Is(err, engine.ErrShape) {
		t.Errorf("output gradient on the last shard: %v", err)
	}

	// Bad shard index and bad manifest.
	if _, err := e.NewShard(tinyMLP(2), 2); err == nil {
		t.Error("shard index past the end accepted")
	}
	bad := tinyMLP(1)
	bad.Model.Arch = "rnn"
	if _, err := e.NewShard(bad, 0); err == nil {
		t.Error("unknown architecture accepted")
	}
	if _, err := e.NewShard(nil, 0); err == nil {
		t.Error("nil manifest accepted")
	}
}

// TestTrainingReducesLoss: a few AdamW steps on a fixed batch overfit it.
func TestTrainingReducesLoss(t *testing.T) {
	for _, m := range []*run.Manifest{tinyMLP(2), tinyGPT(2), tinyLlama(2)} {
		ss := buildShards(t, New(), m)
		b := batchFor(m, 8, 5)
		first := trainStep(t, ss, b)
		var last float32
		for step := 0; step < 30; step++ {
			for _, s := range ss {
				if err := s.Step(1e-2, 1); err != nil {
					t.Fatal(err)
				}
				s.ZeroGrad()
			}
			last = trainStep(t, ss, b)
		}
		if !(last < first/2) {
			t.Errorf("%s: loss %g after 30 steps, started at %g", m.Model.Arch, last, first)
		}
		if ss[0].StepCount() != 30 {
			t.Errorf("step count %d, want 30", ss[0].StepCount())
		}
	}
}

// TestCutProjection: with training.activation_rank a shard sends rank
// values a row and takes rank values a row back, the pair at a cut starts
// as P and Pᵀ with orthonormal rows, and a wrong-sized input or gradient is
// refused as before.
func TestCutProjection(t *testing.T) {
	for _, m := range []*run.Manifest{ranked(tinyMLP(2), 3), ranked(tinyLlama(2), 5)} {
		ss := buildShards(t, New(), m)
		r, rows := m.Training.ActivationRank, m.RowsPerSample()
		down := ss[0].cut.down
		up := ss[1].cut.up
		w := m.CutWidth(0)
		if len(down) != r*w || len(up) != w*r || ss[0].cut.up != nil || ss[1].cut.down != nil {
			t.Fatalf("%s: projections of %d and %d values, want %d each, on one side each", m.Model.Arch, len(down), len(up), r*w)
		}
		for i := 0; i < r; i++ {
			for j := 0; j < r; j++ {
				var dot float64
				for k := 0; k < w; k++ {
					dot += float64(down[i*w+k]) * float64(down[j*w+k])
				}
				if want := float64(b2f(i == j)); math.Abs(dot-want) > 1e-5 {
					t.Fatalf("%s: rows %d and %d of the down-projection have dot product %g, want %g", m.Model.Arch, i, j, dot, want)
				}
			}
			for k := 0; k < w; k++ {
				if up[k*r+i] != down[i*w+k] {
					t.Fatalf("%s: up[%d,%d] = %g, down[%d,%d] = %g: the up-projection does not start as the down's transpose", m.Model.Arch, k, i, up[k*r+i], i, k, down[i*w+k])
				}
			}
		}
		b := batchFor(m, 3, 7)
		out, _, tp, err := ss[0].Forward(b, nil, true)
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != 3*rows*r || m.ActivationSize(0) != rows*r {
			t.Fatalf("%s: shard 0 sent %d values for 3 samples (activation size %d), want 3×%d×%d", m.Model.Arch, len(out), m.ActivationSize(0), rows, r)
		}
		if _, err := ss[0].Backward(tp, make([]float32, 3*rows*w)); !errors.Is(err, engine.ErrShape) {
			t.Fatalf("%s: a gradient of the unprojected width: %v, want ErrShape", m.Model.Arch, err)
		}
		if _, _, _, err := ss[1].Forward(b, make([]float32, 3*rows*w), true); !errors.Is(err, engine.ErrShape) {
			t.Fatalf("%s: an input of the unprojected width: %v, want ErrShape", m.Model.Arch, err)
		}
		_, _, tp1, err := ss[1].Forward(b, out, true)
		if err != nil {
			t.Fatal(err)
		}
		g, err := ss[1].Backward(tp1, nil)
		if err != nil || len(g) != 3*rows*r {
			t.Fatalf("%s: shard 1 returned %d gradient values (%v), want 3×%d×%d", m.Model.Arch, len(g), err, rows, r)
		}
	}
}

func b2f(b bool) float32 {
	if b {
		return 1
	}
	return 0
}
