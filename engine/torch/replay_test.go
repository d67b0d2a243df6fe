package torch

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/engine/native"
)

// forwardAll runs a training forward of b through every shard and returns the tapes.
func (p pipeline) forwardAll(t *testing.T, b *engine.Batch) []engine.Tape {
	t.Helper()
	tapes := make([]engine.Tape, len(p))
	var in []float32
	for i, s := range p {
		out, _, tp, err := s.Forward(b, in, true)
		if err != nil {
			t.Fatalf("forward shard %d: %v", i, err)
		}
		tapes[i], in = tp, out
	}
	return tapes
}

// backwardAll runs the backward of tapes through every shard, last first.
func (p pipeline) backwardAll(t *testing.T, tapes []engine.Tape) {
	t.Helper()
	var g []float32
	for i := len(p) - 1; i >= 0; i-- {
		gi, err := p[i].Backward(tapes[i], g)
		if err != nil {
			t.Fatalf("backward shard %d: %v", i, err)
		}
		g = gi
	}
}

func (p pipeline) step(t *testing.T, lr float64, scale float32) {
	t.Helper()
	for i, s := range p {
		if err := s.Step(lr, scale); err != nil {
			t.Fatalf("step shard %d: %v", i, err)
		}
	}
}

// state is a copy of a pipeline's buffers and step counts.
type state []struct {
	params, grads, opt []float32
	step               int64
}

func (p pipeline) state() state {
	st := make(state, len(p))
	for i, s := range p {
		st[i].params = slices.Clone(s.Params())
		st[i].grads = slices.Clone(s.Grads())
		st[i].opt = slices.Clone(s.OptState())
		st[i].step = s.StepCount()
	}
	return st
}

// restore writes st back into the shards (the reference run and the run
// with a failure share one pipeline, which saves starting workers).
func (p pipeline) restore(t *testing.T, st state) {
	t.Helper()
	for i, s := range p {
		copy(s.Params(), st[i].params)
		copy(s.Grads(), st[i].grads)
		copy(s.OptState(), st[i].opt)
		s.SetStepCount(st[i].step)
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
	}
}

func (p pipeline) compareState(t *testing.T, label string, want state, tol float64) {
	t.Helper()
	got := p.state()
	for i := range want {
		check(t, fmt.Sprintf("%s: shard %d params", label, i), got[i].params, want[i].params, tol)
		check(t, fmt.Sprintf("%s: shard %d grads", label, i), got[i].grads, want[i].grads, tol)
		check(t, fmt.Sprintf("%s: shard %d optimizer state", label, i), got[i].opt, want[i].opt, tol)
		if got[i].step != want[i].step {
			t.Errorf("%s: shard %d step %d vs %d", label, i, got[i].step, want[i].step)
		}
	}
}

func (p pipeline) killAll(t *testing.T) {
	t.Helper()
	for _, s := range p {
		if err := s.(*Shard).killWorker(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReplayWithoutSnapshot kills every worker after several steps, none of
// them followed by a snapshot: the restarted workers replay micro-batches,
// steps (with their learning rates and scales), ZeroGrad, a written
// gradient buffer, a step count, a released tape and a forward still
// waiting for its backward, and end where the uninterrupted run did.
func TestReplayWithoutSnapshot(t *testing.T) {
	te := newTorch(t, Options{})
	m := smallGPT(2, "adamw")
	p := newPipeline(t, te, m)
	initial := p.state()
	run := func() []engine.Tape {
		for step := range 4 {
			for mb := range 2 {
				p.trainStep(t, engine.RandomBatch(m, 2, uint64(10*step+mb)))
			}
			if step == 2 {
				// Averaging-like: gradients read, rescaled in place, written back at Sync.
				for _, s := range p {
					g := s.Grads()
					for i := range g {
						g[i] *= 0.75
					}
					if err := s.Sync(); err != nil {
						t.Fatal(err)
					}
				}
			}
			p.step(t, 1e-2*float64(step+1), 1/float32(step+1))
			for _, s := range p {
				s.ZeroGrad()
			}
		}
		for _, s := range p {
			s.SetStepCount(40)
		}
		p.forwardAll(t, engine.RandomBatch(m, 2, 77))[1].Release()
		return p.forwardAll(t, engine.RandomBatch(m, 2, 78))
	}
	// Uninterrupted.
	p.backwardAll(t, run())
	wantPending := p.state()
	p.step(t, 3e-3, 1)
	wantStepped := p.state()

	p.restore(t, initial)
	var snaps [2]int
	for i, s := range p {
		snaps[i], _ = s.(*Shard).recovery()
	}
	pending := run()
	for i, s := range p {
		n, logged := s.(*Shard).recovery()
		if n != snaps[i] || logged < 20 {
			t.Fatalf("shard %d: %d snapshots during the run, %d logged requests; want none and a long log", i, n-snaps[i], logged)
		}
	}
	p.killAll(t)
	// The pending micro-batch finishes on the restarted workers, then one more step.
	p.backwardAll(t, pending)
	for i, s := range p {
		if r := s.(*Shard).Restarts(); r != 1 {
			t.Errorf("shard %d: %d restarts, want 1", i, r)
		}
	}
	p.compareState(t, "replayed", wantPending, 1e-6)
	p.step(t, 3e-3, 1)
	p.compareState(t, "replayed and stepped", wantStepped, 1e-6)
}

// TestReplaySnapshotEveryRequest: with a log cap of one byte every
// forward forces a snapshot, so open tapes are carried over snapshots and
// rebuilt from there after a restart.
func TestReplaySnapshotEveryRequest(t *testing.T) {
	te := newTorch(t, Options{MaxLogBytes: 1})
	m := smallMLP(2, "sgd")
	p := newPipeline(t, te, m)
	initial := p.state()
	run := func() []engine.Tape {
		p.trainStep(t, engine.RandomBatch(m, 3, 1))
		p.step(t, 0.05, 1)
		open := p.forwardAll(t, engine.RandomBatch(m, 3, 2))
		p.trainStep(t, engine.RandomBatch(m, 3, 3))
		return open
	}
	p.backwardAll(t, run())
	want := p.state()

	p.restore(t, initial)
	before, _ := p[1].(*Shard).recovery()
	open := run()
	if n, _ := p[1].(*Shard).recovery(); n-before != 3 { // one per forward
		t.Fatalf("%d snapshots, want 3", n-before)
	}
	p.killAll(t)
	p.backwardAll(t, open)
	p.compareState(t, "carried tape", want, 1e-6)
}

// TestHostBuffers checks the engine.Shard contract against engine/native: the
// buffers read between steps are current, and what is written into them is
// what the next call computes with, with or without Sync.
func TestHostBuffers(t *testing.T) {
	te := newTorch(t, Options{})
	ne := native.New(native.WithThreads(1))
	m := smallMLP(1, "adamw")
	tp, np := newPipeline(t, te, m), newPipeline(t, ne, m)
	ts := tp[0].(*Shard)
	for _, p := range []pipeline{tp, np} {
		p.trainStep(t, engine.RandomBatch(m, 4, 1))
	}
	comparePipelines(t, "after backward", tp, np, 1e-5)

	// Gradients written in place, then the norm and a step without Sync.
	for _, s := range []engine.Shard{tp[0], np[0]} {
		g := s.Grads()
		for i := range g {
			g[i] = g[i]*0.5 + 1e-3
		}
	}
	if a, b := tp[0].GradNormSq(), np[0].GradNormSq(); math.Abs(a-b) > 1e-5*b {
		t.Errorf("norm² of written gradients %g vs %g", a, b)
	}
	tp.step(t, 1e-2, 0.5)
	np.step(t, 1e-2, 0.5)
	comparePipelines(t, "written gradients, stepped", tp, np, 1e-5)

	// Reading alone sends nothing back: the log gains only the step.
	_, logged := ts.recovery()
	_ = tp[0].Params()
	_ = tp[0].OptState()
	tp.step(t, 1e-2, 1)
	np.step(t, 1e-2, 1)
	if _, now := ts.recovery(); now != logged+1 {
		t.Errorf("read-only buffers: log grew by %d requests, want 1 (the step)", now-logged)
	}

	// Parameters written, then an evaluation forward without Sync.
	for _, s := range []engine.Shard{tp[0], np[0]} {
		s.ZeroGrad()
		p := s.Params()
		for i := 0; i < len(p); i += 7 {
			p[i] = -p[i]
		}
	}
	b := engine.RandomBatch(m, 4, 2)
	_, tl, _, err := tp[0].Forward(b, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	_, nl, _, err := np[0].Forward(b, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(float64(tl-nl)) > 1e-5*math.Abs(float64(nl)) {
		t.Errorf("loss after written parameters %g vs %g", tl, nl)
	}
	check(t, "logits after written parameters", tp[0].Logits(), np[0].Logits(), 1e-5)
	comparePipelines(t, "written parameters", tp, np, 1e-5)

	// Everything overwritten from outside (state sync) and one more step.
	for _, s := range []engine.Shard{tp[0], np[0]} {
		copy(s.Params(), np[0].Params())
		o := s.OptState()
		for i := range o {
			o[i] = float32(i%5) * 1e-4
		}
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []pipeline{tp, np} {
		p.trainStep(t, engine.RandomBatch(m, 4, 3))
		p.step(t, 1e-2, 1)
	}
	comparePipelines(t, fmt.Sprintf("state written and stepped (%d restarts)", ts.Restarts()), tp, np, 1e-5)
}
