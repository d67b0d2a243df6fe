package torch

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/engine/native"
	"github.com/swarm-train/swarm/spec/run"
)

const charset = "abcdefghijklmnopqrstuvwxyz .,\n"

var (
	probeOnce sync.Once
	probeErr  error
)

// needTorch skips the test when /usr/bin/python3 cannot import torch (CI
// installs Debian's python3-torch, so there it runs).
func needTorch(t testing.TB) {
	t.Helper()
	probeOnce.Do(func() { _, probeErr = Probe(context.Background(), DefaultPython) })
	if probeErr != nil {
		t.Skipf("skipping: %v (apt-get install python3-torch python3-numpy)", probeErr)
	}
}

func newTorch(t testing.TB, opts Options) *Engine {
	t.Helper()
	needTorch(t)
	if opts.Device == "" {
		opts.Device = "cpu"
	}
	if opts.Threads == 0 {
		opts.Threads = 1
	}
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// smallMLP is mlp-mnist with narrower hidden layers (the input stays 784).
func smallMLP(shards int, opt string) *run.Manifest {
	m := run.NewMLPMNIST(1)
	m.Model.Hidden = []int{96, 64}
	m.Shards = run.EvenShards(m.Model.Units(), shards)
	setOpt(m, opt)
	return m
}

func smallGPT(shards int, opt string) *run.Manifest {
	m := run.NewGPTChar(charset, 1)
	m.Model.BlockSize, m.Model.NLayer, m.Model.NHead, m.Model.NEmbd = 16, 3, 4, 32
	m.Shards = run.EvenShards(m.Model.Units(), shards)
	setOpt(m, opt)
	return m
}

// withRank gives m a learned projection of rank r at each cut
// (training.activation_rank).
func withRank(m *run.Manifest, r int) *run.Manifest {
	m.Training.ActivationRank = r
	return m
}

// smallLlama has grouped-query attention (4 query heads sharing 2
// key/value heads of width 8); tied is one shard whose head is wte.
func smallLlama(shards int, opt string, tied bool) *run.Manifest {
	m, err := run.NewLlama(run.PresetLlamaTiny, charset, 1)
	if err != nil {
		panic(err)
	}
	md := &m.Model
	md.BlockSize, md.NLayer, md.NHead, md.NKVHead, md.NEmbd, md.FFNHidden = 16, 3, 4, 2, 32, 48
	md.TieEmbeddings = tied
	m.Shards = run.EvenShards(md.Units(), shards)
	setOpt(m, opt)
	return m
}

func setOpt(m *run.Manifest, opt string) {
	if opt == "sgd" {
		m.Optimizer = run.OptimizerSpec{Name: "sgd", LR: 0.05, MinLR: 0, Momentum: 0.9, WeightDecay: 0.01, ClipNorm: 1}
	} else {
		m.Optimizer.WeightDecay = 0.1
	}
}

// relErr is ‖a−b‖/‖b‖ (‖a−b‖ when b is zero).
func relErr(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var d, n float64
	for i := range a {
		x := float64(a[i]) - float64(b[i])
		d += x * x
		n += float64(b[i]) * float64(b[i])
	}
	if n == 0 {
		return math.Sqrt(d)
	}
	return math.Sqrt(d / n)
}

func check(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	if e := relErr(got, want); !(e <= tol) {
		t.Errorf("%s: relative error %.3g over %.0g (len %d vs %d)", what, e, tol, len(got), len(want))
	}
}

// pipeline is one model split into shards on one engine.
type pipeline []engine.Shard

func newPipeline(t *testing.T, e engine.Engine, m *run.Manifest) pipeline {
	t.Helper()
	p := make(pipeline, len(m.Shards))
	errs := make([]error, len(m.Shards))
	var wg sync.WaitGroup
	for i := range m.Shards {
		wg.Go(func() { p[i], errs[i] = e.NewShard(m, i) })
	}
	wg.Wait()
	for i := range p {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		t.Cleanup(func() { p[i].Close() })
	}
	return p
}

// trace is everything one training micro-batch produced.
type trace struct {
	outs   [][]float32 // per shard but the last
	loss   float32
	gradIn [][]float32 // per shard but the first
}

func (p pipeline) trainStep(t *testing.T, b *engine.Batch) trace {
	t.Helper()
	var tr trace
	tapes := make([]engine.Tape, len(p))
	var in []float32
	for i, s := range p {
		out, loss, tp, err := s.Forward(b, in, true)
		if err != nil {
			t.Fatalf("forward shard %d: %v", i, err)
		}
		tapes[i] = tp
		if i < len(p)-1 {
			tr.outs = append(tr.outs, out)
		} else {
			tr.loss = loss
		}
		in = out
	}
	var g []float32
	tr.gradIn = make([][]float32, len(p))
	for i := len(p) - 1; i >= 0; i-- {
		gi, err := p[i].Backward(tapes[i], g)
		if err != nil {
			t.Fatalf("backward shard %d: %v", i, err)
		}
		tr.gradIn[i] = gi
		g = gi
	}
	return tr
}

func compare(t *testing.T, label string, got, want trace, tol float64) {
	t.Helper()
	for i := range want.outs {
		check(t, fmt.Sprintf("%s: shard %d output", label, i), got.outs[i], want.outs[i], tol)
	}
	if d := math.Abs(float64(got.loss - want.loss)); d > tol*math.Abs(float64(want.loss)) {
		t.Errorf("%s: loss %g vs %g", label, got.loss, want.loss)
	}
	for i := 1; i < len(want.gradIn); i++ {
		check(t, fmt.Sprintf("%s: shard %d input gradient", label, i), got.gradIn[i], want.gradIn[i], tol)
	}
}

func comparePipelines(t *testing.T, label string, got, want pipeline, tol float64) {
	t.Helper()
	for i := range want {
		check(t, fmt.Sprintf("%s: shard %d params", label, i), got[i].Params(), want[i].Params(), tol)
		check(t, fmt.Sprintf("%s: shard %d grads", label, i), got[i].Grads(), want[i].Grads(), tol)
		check(t, fmt.Sprintf("%s: shard %d optimizer state", label, i), got[i].OptState(), want[i].OptState(), tol)
		if got[i].StepCount() != want[i].StepCount() {
			t.Errorf("%s: shard %d step %d vs %d", label, i, got[i].StepCount(), want[i].StepCount())
		}
	}
}

// TestParityWithNative runs the same micro-batches through the native engine
// and the torch worker (on the CPU) and checks outputs, input and parameter
// gradients, and the state after optimizer steps.
func TestParityWithNative(t *testing.T) {
	te := newTorch(t, Options{})
	ne := native.New(native.WithThreads(1))
	cases := []struct {
		name string
		m    *run.Manifest
		n    int
	}{
		{"mlp/1-shard/adamw", smallMLP(1, "adamw"), 8},
		{"mlp/3-shards/sgd", smallMLP(3, "sgd"), 8},
		{"gpt/1-shard/adamw", smallGPT(1, "adamw"), 3},
		{"gpt/3-shards/adamw", smallGPT(3, "adamw"), 3},
		{"gpt/2-shards/sgd", smallGPT(2, "sgd"), 2},
		{"llama/1-shard-tied/sgd", smallLlama(1, "sgd", true), 2},
		{"llama/2-shards/adamw", smallLlama(2, "adamw", false), 3},
		{"mlp/3-shards-rank/adamw", withRank(smallMLP(3, "adamw"), 24), 8},
		{"gpt/2-shards-rank/sgd", withRank(smallGPT(2, "sgd"), 12), 2},
		{"llama/3-shards-rank/adamw", withRank(smallLlama(3, "adamw", false), 10), 3},
	}
	if !testing.Short() {
		cases = append(cases, struct {
			name string
			m    *run.Manifest
			n    int
		}{"gpt-default/2-shards/adamw", run.NewGPTChar(charset, 2), 2})
	}
	const tol = 1e-4
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := c.m.Validate(); err != nil {
				t.Fatal(err)
			}
			tp, np := newPipeline(t, te, c.m), newPipeline(t, ne, c.m)
			comparePipelines(t, "initial", tp, np, 0)
			// Larger weights than the initialisation's, so every nonlinearity
			// works away from its linear region and a wrong formula shows.
			r := rand.New(rand.NewPCG(3, 4))
			for i := range np {
				for j := range np[i].Params() {
					np[i].Params()[j] += float32(r.NormFloat64() * 0.15)
				}
				copy(tp[i].Params(), np[i].Params())
				if err := tp[i].Sync(); err != nil {
					t.Fatal(err)
				}
			}
			for step := range 2 {
				// Two micro-batches accumulate into one step.
				for mb := range 2 {
					b := engine.RandomBatch(c.m, c.n, uint64(10*step+mb))
					compare(t, fmt.Sprintf("step %d micro-batch %d", step, mb), tp.trainStep(t, b), np.trainStep(t, b), tol)
				}
				for i := range np {
					if a, b := tp[i].GradNormSq(), np[i].GradNormSq(); math.Abs(a-b) > tol*b {
						t.Errorf("shard %d grad norm² %g vs %g", i, a, b)
					}
				}
				comparePipelines(t, fmt.Sprintf("step %d before", step), tp, np, tol)
				lr := c.m.Optimizer.LRAt(step)
				for i := range np {
					if err := tp[i].Step(lr, 0.5); err != nil {
						t.Fatal(err)
					}
					if err := np[i].Step(lr, 0.5); err != nil {
						t.Fatal(err)
					}
				}
				comparePipelines(t, fmt.Sprintf("step %d after", step), tp, np, tol)
				for i := range np {
					tp[i].ZeroGrad()
					np[i].ZeroGrad()
				}
			}
			// Evaluation: loss and logits of the last shard.
			b := engine.RandomBatch(c.m, c.n, 99)
			var tin, nin []float32
			for i := range np {
				tout, tl, ttape, err := tp[i].Forward(b, tin, false)
				if err != nil {
					t.Fatal(err)
				}
				nout, nl, _, err := np[i].Forward(b, nin, false)
				if err != nil {
					t.Fatal(err)
				}
				if ttape != nil {
					t.Error("evaluation forward returned a tape")
				}
				if i == len(np)-1 {
					check(t, "eval logits", tp[i].Logits(), np[i].Logits(), tol)
					if math.Abs(float64(tl-nl)) > tol*math.Abs(float64(nl)) {
						t.Errorf("eval loss %g vs %g", tl, nl)
					}
				}
				tin, nin = tout, nout
			}
		})
	}
}

// TestStateRoundTrip writes native's buffers into a torch shard with Sync
// and checks both then compute the same step.
func TestStateRoundTrip(t *testing.T) {
	te := newTorch(t, Options{})
	ne := native.New(native.WithThreads(1))
	m := smallMLP(1, "adamw")
	tp, np := newPipeline(t, te, m), newPipeline(t, ne, m)
	b := engine.RandomBatch(m, 4, 1)
	np.trainStep(t, b)
	if err := np[0].Step(1e-2, 1); err != nil {
		t.Fatal(err)
	}
	np[0].ZeroGrad()
	copy(tp[0].Params(), np[0].Params())
	copy(tp[0].OptState(), np[0].OptState())
	copy(tp[0].Grads(), np[0].Grads())
	tp[0].SetStepCount(np[0].StepCount())
	if err := tp[0].Sync(); err != nil {
		t.Fatal(err)
	}
	b2 := engine.RandomBatch(m, 4, 2)
	compare(t, "after sync", tp.trainStep(t, b2), np.trainStep(t, b2), 1e-4)
	for _, s := range []engine.Shard{tp[0], np[0]} {
		if err := s.Step(1e-2, 1); err != nil {
			t.Fatal(err)
		}
	}
	comparePipelines(t, "after sync and step", tp, np, 1e-4)
}

func TestBadInput(t *testing.T) {
	te := newTorch(t, Options{})
	m := smallGPT(2, "adamw")
	p := newPipeline(t, te, m)
	b := engine.RandomBatch(m, 2, 1)
	if _, _, _, err := p[0].Forward(&engine.Batch{N: 2, Tokens: b.Tokens[:5]}, nil, true); !errors.Is(err, engine.ErrShape) {
		t.Errorf("short tokens: %v, want ErrShape", err)
	}
	bad := append([]int32(nil), b.Tokens...)
	bad[3] = int32(m.Model.Vocab)
	if _, _, _, err := p[0].Forward(&engine.Batch{N: 2, Tokens: bad}, nil, true); !errors.Is(err, engine.ErrShape) {
		t.Errorf("token out of range: %v, want ErrShape", err)
	}
	in := make([]float32, 2*m.ActivationSize(0))
	in[7] = float32(math.NaN())
	if _, _, _, err := p[1].Forward(b, in, true); !errors.Is(err, engine.ErrNonFinite) {
		t.Errorf("NaN activations: %v, want ErrNonFinite", err)
	}
	_, _, tp, err := p[0].Forward(b, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p[0].Backward(tp, make([]float32, 3)); !errors.Is(err, engine.ErrShape) {
		t.Errorf("short gradient: %v, want ErrShape", err)
	}
	if _, err := p[0].Backward(tp, make([]float32, 2*m.ActivationSize(0))); err != nil {
		t.Fatal(err)
	}
	if _, err := p[0].Backward(tp, make([]float32, 2*m.ActivationSize(0))); !errors.Is(err, engine.ErrTape) {
		t.Errorf("tape used twice: %v, want ErrTape", err)
	}
	if err := p[0].Step(math.NaN(), 1); !errors.Is(err, engine.ErrNonFinite) {
		t.Errorf("NaN lr: %v, want ErrNonFinite", err)
	}
	// A NaN written into the gradients reaches the worker at Sync; its Step refuses it.
	p[1].Grads()[0] = float32(math.Inf(1))
	if err := p[1].Sync(); err != nil {
		t.Fatal(err)
	}
	if err := p[1].Step(1e-3, 1); !errors.Is(err, engine.ErrNonFinite) {
		t.Errorf("Inf gradient: %v, want ErrNonFinite", err)
	}
}
