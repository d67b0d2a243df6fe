package torch

import (
	"math"
	"strings"
	"testing"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/engine/native"
	"github.com/swarm-train/swarm/spec/run"
)

// Deferred losses (the CUDA path's: no device sync per micro-batch), run
// here on the CPU: a deferred training forward returns no loss, TakeLoss
// returns the sum of loss × samples over the micro-batches since the last
// take, equal to the native engine's, and a worker killed before the take
// replays its log and still gives the same sum.
func TestDeferredLoss(t *testing.T) {
	te := newTorch(t, Options{DeferLoss: true})
	ne := native.New(native.WithThreads(1))
	m := smallLlama(2, "adamw", false)
	tp, np := newPipeline(t, te, m), newPipeline(t, ne, m)
	last := tp[1].(*Shard)
	if !last.DefersLoss() || tp[0].(*Shard).DefersLoss() {
		t.Fatal("only the last shard defers its loss")
	}
	if _, isTaker := np[1].(engine.LossTaker); isTaker {
		t.Fatal("the native engine has no device to keep losses on")
	}
	round := func(kill bool) {
		var want float64
		samples := 0
		for k, n := range []int{2, 3} {
			b := engine.RandomBatch(m, n, uint64(10+k))
			want += float64(np.trainStep(t, b).loss) * float64(n)
			b.DeferLoss = true
			if got := tp.trainStep(t, b); got.loss != 0 {
				t.Fatalf("a deferred forward returned loss %g", got.loss)
			}
			samples += n
		}
		if kill {
			if err := last.killWorker(); err != nil {
				t.Fatal(err)
			}
		}
		sum, n, err := last.TakeLoss()
		if err != nil {
			t.Fatal(err)
		}
		if n != samples || math.Abs(sum-want) > 1e-4*math.Abs(want) {
			t.Fatalf("kill=%v: took %g over %d samples, native %g over %d", kill, sum, n, want, samples)
		}
		if sum, n, err := last.TakeLoss(); err != nil || sum != 0 || n != 0 {
			t.Fatalf("a second take: %g over %d (%v), want nothing", sum, n, err)
		}
	}
	round(false)
	round(true)
	if last.Restarts() != 1 {
		t.Fatalf("%d restarts, want 1", last.Restarts())
	}
	if _, _, err := tp[0].(*Shard).TakeLoss(); err == nil {
		t.Fatal("the first shard took a loss")
	}
}

// scaled_dot_product_attention (torch 2.0 and later) and the explicit
// attention give the same outputs, loss and gradients in float32. With an
// older torch (Debian's 1.13) both are the explicit one: skipped.
func TestSDPAMatchesManualAttention(t *testing.T) {
	fast := newTorch(t, Options{})
	probe, err := fast.NewShard(smallMLP(1, "sgd"), 0)
	if err != nil {
		t.Fatal(err)
	}
	sdpa := probe.(*Shard).SDPA()
	probe.Close()
	if !sdpa {
		t.Skip("this torch has no scaled_dot_product_attention: both are the explicit attention")
	}
	manual := newTorch(t, Options{ManualAttention: true})
	for _, m := range []*run.Manifest{smallLlama(2, "adamw", false), smallGPT(2, "adamw")} {
		p, q := newPipeline(t, fast, m), newPipeline(t, manual, m)
		if q[0].(*Shard).SDPA() {
			t.Fatal("ManualAttention: the worker still uses SDPA")
		}
		b := engine.RandomBatch(m, 3, 5)
		compare(t, m.Model.Arch, p.trainStep(t, b), q.trainStep(t, b), 1e-5)
		comparePipelines(t, m.Model.Arch, p, q, 1e-5)
	}
}

// Activation checkpointing (blocks recomputed in the backward) gives the
// same outputs, loss, gradients and optimizer steps as keeping the
// activations, for both transformer families, split in two shards.
func TestActivationCheckpointingMatches(t *testing.T) {
	kept := newTorch(t, Options{})
	recomputed := newTorch(t, Options{CheckpointActivations: true})
	for _, m := range []*run.Manifest{smallLlama(2, "adamw", false), smallGPT(2, "adamw")} {
		p, q := newPipeline(t, kept, m), newPipeline(t, recomputed, m)
		if p[0].(*Shard).CheckpointsActivations() || !q[0].(*Shard).CheckpointsActivations() {
			t.Fatal("the worker did not take the checkpoint_activations setting")
		}
		for k := range 2 {
			b := engine.RandomBatch(m, 3, uint64(7+k))
			compare(t, m.Model.Arch, p.trainStep(t, b), q.trainStep(t, b), 1e-5)
		}
		comparePipelines(t, m.Model.Arch, p, q, 1e-5)
	}
}

// Precision: fp32 on the CPU by default; bf16 is refused without CUDA and
// an unknown precision is refused, each naming it.
func TestPrecisionOptions(t *testing.T) {
	te := newTorch(t, Options{})
	sh, err := te.NewShard(smallMLP(1, "sgd"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()
	if p := sh.(*Shard).Precision(); p != "fp32" {
		t.Fatalf("precision %q on the CPU, want fp32", p)
	}
	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{Device: "cpu", Precision: "bf16"}, "needs CUDA"},
		{Options{Precision: "fp16"}, `precision "fp16"`},
	} {
		if _, err := New(c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.o, err, c.want)
		}
	}
}
