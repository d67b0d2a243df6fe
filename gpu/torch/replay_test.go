package torch

import (
	"fmt"
	"math"
	"testing"

	"github.com/swarm-train/swarm/gpu/engine"
	"github.com/swarm-train/swarm/gpu/native"
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

// TestReplayWithoutSnapshot kills every worker after several steps, none of
// them followed by a snapshot: the restarted workers replay micro-batches,
// steps (with their learning rates and scales), ZeroGrad, a written
// gradient buffer, a step count, a released tape and a forward still
// waiting for its backward, and end where an uninterrupted pipeline does.
func TestReplayWithoutSnapshot(t *testing.T) {
	te := newTorch(t, Options{})
	m := smallGPT(2, "adamw")
	ref, vic := newPipeline(t, te, m), newPipeline(t, te, m)
	var pending [2][]engine.Tape
	for k, p := range []pipeline{ref, vic} {
		for step := range 4 {
			for mb := range 2 {
				p.trainStep(t, batchFor(m, 2, uint64(10*step+mb)))
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
		p.forwardAll(t, batchFor(m, 2, 77))[1].Release()
		pending[k] = p.forwardAll(t, batchFor(m, 2, 78))
	}
	for i, s := range vic {
		snaps, logged := s.(*Shard).recovery()
		if snaps != 1 || logged < 20 {
			t.Fatalf("shard %d: %d snapshots, %d logged requests; want only the initial snapshot and a long log", i, snaps, logged)
		}
		if err := s.(*Shard).killWorker(); err != nil {
			t.Fatal(err)
		}
	}
	// The pending micro-batch finishes on the restarted workers, then one more step.
	ref.backwardAll(t, pending[0])
	vic.backwardAll(t, pending[1])
	for i, s := range vic {
		if r := s.(*Shard).Restarts(); r != 1 {
			t.Errorf("shard %d: %d restarts, want 1", i, r)
		}
	}
	comparePipelines(t, "replayed", vic, ref, 1e-6)
	ref.step(t, 3e-3, 1)
	vic.step(t, 3e-3, 1)
	comparePipelines(t, "replayed and stepped", vic, ref, 1e-6)
}

// TestReplaySnapshotEveryRequest: with a log cap of one byte every
// micro-batch forces a snapshot, so open tapes are carried over snapshots and
// rebuilt from there after a restart.
func TestReplaySnapshotEveryRequest(t *testing.T) {
	te := newTorch(t, Options{MaxLogBytes: 1})
	m := smallMLP(2, "sgd")
	ref, vic := newPipeline(t, te, m), newPipeline(t, te, m)
	var open [2][]engine.Tape
	for k, p := range []pipeline{ref, vic} {
		p.trainStep(t, batchFor(m, 3, 1))
		p.step(t, 0.05, 1)
		open[k] = p.forwardAll(t, batchFor(m, 3, 2))
		p.trainStep(t, batchFor(m, 3, 3))
	}
	before, _ := vic[1].(*Shard).recovery()
	if before != 4 { // the initial one, then one per forward
		t.Fatalf("%d snapshots, want 4", before)
	}
	for _, s := range vic {
		if err := s.(*Shard).killWorker(); err != nil {
			t.Fatal(err)
		}
	}
	ref.backwardAll(t, open[0])
	vic.backwardAll(t, open[1])
	comparePipelines(t, "carried tape", vic, ref, 1e-6)
	ref.step(t, 0.05, 0.5)
	vic.step(t, 0.05, 0.5)
	comparePipelines(t, "carried tape, stepped", vic, ref, 1e-6)
}

// TestHostBuffers checks the engine.Shard contract against gpu/native: the
// buffers read between steps are current, and what is written into them is
// what the next call computes with, with or without Sync.
func TestHostBuffers(t *testing.T) {
	te := newTorch(t, Options{})
	ne := native.New(native.WithThreads(1))
	m := smallMLP(1, "adamw")
	tp, np := newPipeline(t, te, m), newPipeline(t, ne, m)
	ts := tp[0].(*Shard)
	for _, p := range []pipeline{tp, np} {
		p.trainStep(t, batchFor(m, 4, 1))
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
	b := batchFor(m, 4, 2)
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
		p.trainStep(t, batchFor(m, 4, 3))
		p.step(t, 1e-2, 1)
	}
	comparePipelines(t, fmt.Sprintf("state written and stepped (%d restarts)", ts.Restarts()), tp, np, 1e-5)
}
