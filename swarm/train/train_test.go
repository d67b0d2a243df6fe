package train

import (
	"context"
	"errors"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/engine/native"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/checkpoint"
	"github.com/swarm-train/swarm/swarm/data"
)

// smallMLP is a 784-64-32-10 MLP in two shards with two micro-batches per step.
func smallMLP(steps int) *run.Manifest {
	m := run.NewMLPMNIST(1)
	m.Model.Hidden = []int{64, 32}
	m.Shards = run.EvenShards(3, 2)
	m.Training = run.TrainingSpec{BatchSize: 16, TargetBatch: 32, Steps: steps}
	m.Optimizer.WarmupSteps, m.Optimizer.DecaySteps = 3, steps
	return m
}

// smallGPT is a 2-block, 16-wide GPT over the Opticks text in two shards.
func smallGPT(t testing.TB, steps int) *run.Manifest {
	t.Helper()
	text, err := data.ReadCorpus("")
	if err != nil {
		t.Fatal(err)
	}
	m := run.NewGPTChar(data.Charset(text), 1)
	m.Model.NLayer, m.Model.NHead, m.Model.NEmbd, m.Model.BlockSize = 2, 2, 16, 16
	m.Shards = run.EvenShards(2, 2)
	m.Training = run.TrainingSpec{BatchSize: 4, TargetBatch: 8, Steps: steps}
	m.Optimizer.WarmupSteps, m.Optimizer.DecaySteps = 3, steps
	return m
}

func newTrainer(t testing.TB, m *run.Manifest, cfg Config) *Solo {
	t.Helper()
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	tr, err := NewSolo(m, native.New(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func sameBits(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

func requireSameState(t *testing.T, a, b []engine.Shard) {
	t.Helper()
	for i := range a {
		if !sameBits(a[i].Params(), b[i].Params()) {
			t.Fatalf("shard %d parameters differ", i)
		}
		if !sameBits(a[i].OptState(), b[i].OptState()) {
			t.Fatalf("shard %d optimizer state differs", i)
		}
		if a[i].StepCount() != b[i].StepCount() {
			t.Fatalf("shard %d step count %d vs %d", i, a[i].StepCount(), b[i].StepCount())
		}
	}
}

// TestResumeBitExact: a run interrupted by a checkpoint and resumed in a new
// trainer ends bit-identical to an uninterrupted run, for both models; and a
// damaged newest checkpoint makes the resume use the previous one, still
// ending identical.
func TestResumeBitExact(t *testing.T) {
	steps := 9
	if testing.Short() {
		steps = 6
	}
	for _, m := range []*run.Manifest{smallMLP(steps), smallGPT(t, steps)} {
		t.Run(m.Model.Arch, func(t *testing.T) {
			ctx := context.Background()
			whole := newTrainer(t, m, Config{EvalEvery: -1, FinalEvalSamples: 64})
			want, err := whole.Run(ctx)
			if err != nil {
				t.Fatal(err)
			}

			dir := t.TempDir()
			first := newTrainer(t, m, Config{Steps: steps - 2, EvalEvery: -1, FinalEvalSamples: 64, CheckpointDir: dir, CheckpointEvery: 2, Keep: 5})
			if _, err := first.Run(ctx); err != nil {
				t.Fatal(err)
			}
			resumed := newTrainer(t, m, Config{EvalEvery: -1, FinalEvalSamples: 64, CheckpointDir: dir, Resume: true})
			got, err := resumed.Run(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got.ResumedFrom == "" || got.Steps != int64(steps) || got.Samples != want.Samples {
				t.Fatalf("resumed run: %+v", got)
			}
			requireSameState(t, whole.Shards(), resumed.Shards())
			if got.TrainLoss != want.TrainLoss || *lossOf(got) != *lossOf(want) {
				t.Fatalf("final losses differ: train %v vs %v", got.TrainLoss, want.TrainLoss)
			}

			// Truncate the newest checkpoint (written at the end of the
			// resumed run) and the one before; resuming to the end must
			// pass over them to an older one and still match.
			d := &checkpoint.Dir{Path: dir}
			files, _ := d.List()
			if len(files) < 3 {
				t.Fatalf("%d checkpoints", len(files))
			}
			for _, f := range files[len(files)-2:] {
				b, _ := os.ReadFile(f.Path)
				os.WriteFile(f.Path, b[:len(b)-7], 0o644)
			}
			again := newTrainer(t, m, Config{EvalEvery: -1, FinalEvalSamples: 64, CheckpointDir: dir, Resume: true, Keep: 10})
			res, err := again.Run(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if res.ResumedFrom != files[len(files)-3].Path {
				t.Fatalf("resumed from %s, want %s", res.ResumedFrom, files[len(files)-3].Path)
			}
			requireSameState(t, whole.Shards(), again.Shards())
		})
	}
}

func lossOf(r *Result) *float64 {
	if r.TestLoss != nil {
		return r.TestLoss
	}
	return r.ValLoss
}

func TestResumeRejectsOtherRun(t *testing.T) {
	dir := t.TempDir()
	a := smallMLP(2)
	tr := newTrainer(t, a, Config{EvalEvery: -1, FinalEvalSamples: 32, CheckpointDir: dir})
	if _, err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	b := smallMLP(2)
	b.Seed = 99
	other := newTrainer(t, b, Config{EvalEvery: -1, CheckpointDir: dir, Resume: true})
	if _, err := other.Run(context.Background()); err == nil {
		t.Fatal("resumed another run's checkpoint")
	}
}

func TestCancelWritesCheckpoint(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	tr := newTrainer(t, smallMLP(5), Config{CheckpointDir: dir})
	if _, err := tr.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if files, _ := (&checkpoint.Dir{Path: dir}).List(); len(files) != 1 || files[0].Step != 0 {
		t.Fatalf("checkpoints after cancel: %+v", files)
	}
}

// TestMNISTLearns trains a small MLP briefly and checks the test accuracy.
func TestMNISTLearns(t *testing.T) {
	m := run.NewMLPMNIST(2)
	m.Model.Hidden = []int{128}
	m.Shards = run.EvenShards(2, 2)
	steps, want := 150, 0.90
	if testing.Short() {
		steps, want = 40, 0.75
	}
	m.Training = run.TrainingSpec{BatchSize: 64, TargetBatch: 64, Steps: steps}
	m.Optimizer.LR, m.Optimizer.WarmupSteps, m.Optimizer.DecaySteps = 2e-3, 10, steps
	tr := newTrainer(t, m, Config{EvalEvery: -1})
	res, err := tr.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.TestAccuracy == nil || *res.TestAccuracy < want {
		t.Fatalf("test accuracy %v after %d steps, want ≥ %g", res.TestAccuracy, steps, want)
	}
	t.Logf("test accuracy %.4f after %d steps (%.1fs)", *res.TestAccuracy, steps, res.Seconds)
}

// TestTextLearns trains a tiny GPT briefly: its validation loss must fall
// well below the uniform model's.
func TestTextLearns(t *testing.T) {
	steps := 60
	if testing.Short() {
		steps = 15
	}
	m := smallGPT(t, steps)
	m.Optimizer.LR = 1e-2
	tr := newTrainer(t, m, Config{EvalEvery: -1, FinalEvalSamples: 400})
	before, err := tr.Evaluate(400)
	if err != nil {
		t.Fatal(err)
	}
	res, err := tr.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	uniform := math.Log(float64(m.Model.Vocab))
	if math.Abs(before.Loss-uniform) > 0.3 || *res.ValLoss > uniform-0.8 {
		t.Fatalf("val loss %.3f before, %.3f after %d steps; uniform %.3f", before.Loss, *res.ValLoss, steps, uniform)
	}
	t.Logf("val loss %.3f → %.3f in %d steps", before.Loss, *res.ValLoss, steps)
}

func TestMicroBatchesAndClip(t *testing.T) {
	for _, c := range []struct{ target, batch, k int }{{128, 64, 2}, {64, 64, 1}, {100, 64, 2}, {5, 2, 3}} {
		sizes := MicroBatches(c.target, c.batch)
		sum := 0
		for _, s := range sizes {
			sum += s
			if s > c.batch || s < c.target/len(sizes) {
				t.Fatalf("MicroBatches(%d, %d) = %v", c.target, c.batch, sizes)
			}
		}
		if len(sizes) != c.k || sum != c.target {
			t.Fatalf("MicroBatches(%d, %d) = %v", c.target, c.batch, sizes)
		}
	}
	if ClipScale(4, 1) != 0.25 || ClipScale(0.5, 1) != 1 || ClipScale(10, 0) != 1 {
		t.Fatal("ClipScale")
	}
}

// TestClipBoundsUpdate: with SGD, no momentum and a tiny clip norm, one step
// moves the parameters by exactly lr × clip in global L2 norm.
func TestClipBoundsUpdate(t *testing.T) {
	m := smallMLP(1)
	m.Optimizer = run.OptimizerSpec{Name: "sgd", LR: 0.5, MinLR: 0.5, ClipNorm: 1e-3}
	tr := newTrainer(t, m, Config{})
	before := [][]float32{}
	for _, s := range tr.Shards() {
		before = append(before, append([]float32(nil), s.Params()...))
	}
	if _, err := tr.TrainStep(); err != nil {
		t.Fatal(err)
	}
	var sq float64
	for i, s := range tr.Shards() {
		for j, p := range s.Params() {
			d := float64(p - before[i][j])
			sq += d * d
		}
	}
	if got := math.Sqrt(sq); math.Abs(got-0.5e-3)/0.5e-3 > 1e-3 {
		t.Fatalf("update norm %g, want %g", got, 0.5e-3)
	}
}

func TestEvaluateAccuracyMatchesLogits(t *testing.T) {
	m := smallMLP(1)
	tr := newTrainer(t, m, Config{})
	set := tr.Source().Eval()
	mt, err := Evaluate(tr.Shards(), set, 50, 100)
	if err != nil {
		t.Fatal(err)
	}
	// Recount by hand on one batch of 100.
	b := set.Batch(0, 100)
	act, _, _, err := tr.Shards()[0].Forward(b, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := tr.Shards()[1].Forward(b, act, false); err != nil {
		t.Fatal(err)
	}
	logits := tr.Shards()[1].Logits()
	correct := 0
	for i := 0; i < 100; i++ {
		best := 0
		for j := 1; j < 10; j++ {
			if logits[i*10+j] > logits[i*10+best] {
				best = j
			}
		}
		if int32(best) == b.Targets[i] {
			correct++
		}
	}
	if mt.Samples != 100 || mt.Accuracy != float64(correct)/100 {
		t.Fatalf("Evaluate %+v, by hand %d/100", mt, correct)
	}
}

// TestSplitTrainsLikeUnsplit: the same run in one shard and in three ends a
// few clipped, accumulated steps with the same parameters (the clip uses the
// norm across all shards).
func TestSplitTrainsLikeUnsplit(t *testing.T) {
	build := func(shards int) *Solo {
		m := smallMLP(4)
		m.Shards = run.EvenShards(3, shards)
		m.Optimizer.ClipNorm = 0.05 // small enough that every step clips
		return newTrainer(t, m, Config{})
	}
	one, three := build(1), build(3)
	for i := 0; i < 4; i++ {
		l1, err := one.TrainStep()
		if err != nil {
			t.Fatal(err)
		}
		l3, err := three.TrainStep()
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(l1-l3) > 1e-5*math.Abs(l1) {
			t.Fatalf("step %d: loss %v unsplit, %v split", i, l1, l3)
		}
	}
	var whole []float32
	for _, s := range three.Shards() {
		whole = append(whole, s.Params()...)
	}
	ref := one.Shards()[0].Params()
	var diff, norm float64
	for i := range ref {
		d := float64(ref[i] - whole[i])
		diff += d * d
		norm += float64(ref[i]) * float64(ref[i])
	}
	if rel := math.Sqrt(diff / norm); rel > 1e-5 {
		t.Fatalf("parameters differ by %g (relative L2)", rel)
	}
}

func TestProgressBar(t *testing.T) {
	var buf strings.Builder
	p := newProgress(&buf, nil, 0, 10)
	p.update(10, 0.5, 1280, 2*time.Second)
	p.done()
	out := buf.String()
	for _, want := range []string{"\rstep 10/10 [========================]", "loss 0.5000", "640 samples/s", "ETA 0s", "\n"} {
		if !strings.Contains(out, want) {
			t.Fatalf("progress %q lacks %q", out, want)
		}
	}
}

// TestNoHeldOutData: a text run with val_fraction 0 trains without
// evaluating, and checkpoints on its own schedule.
func TestNoHeldOutData(t *testing.T) {
	m := smallGPT(t, 20)
	m.Dataset.ValFraction = 0
	dir := t.TempDir()
	tr := newTrainer(t, m, Config{EvalEvery: -1, CheckpointDir: dir, Keep: 20})
	res, err := tr.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.ValLoss != nil || res.Steps != 20 {
		t.Fatalf("result %+v", res)
	}
	if files, _ := (&checkpoint.Dir{Path: dir}).List(); len(files) != 10 {
		t.Fatalf("%d checkpoints for 20 steps, want one every tenth of the run", len(files))
	}
}

// TestUnequalMicroBatches: a target batch of 5 in micro-batches of 2, 2 and
// 1 takes the same step as one micro-batch of 5.
func TestUnequalMicroBatches(t *testing.T) {
	build := func(batch int) *Solo {
		m := smallMLP(1)
		m.Training.BatchSize, m.Training.TargetBatch = batch, 5
		m.Optimizer = run.OptimizerSpec{Name: "sgd", LR: 0.1, MinLR: 0.1}
		return newTrainer(t, m, Config{})
	}
	split, whole := build(2), build(5)
	if got := split.micro; len(got) != 3 || got[2] != 1 {
		t.Fatalf("micro-batches %v", got)
	}
	for _, tr := range []*Solo{split, whole} {
		if _, err := tr.TrainStep(); err != nil {
			t.Fatal(err)
		}
	}
	init, _ := smallMLP(1).InitParams(0)
	var diff, norm float64
	for i := range split.Shards()[0].Params() {
		a, b := split.Shards()[0].Params()[i], whole.Shards()[0].Params()[i]
		d := float64(a - b)
		u := float64(b - init[i])
		diff += d * d
		norm += u * u
	}
	if norm == 0 || math.Sqrt(diff/norm) > 1e-4 {
		t.Fatalf("updates differ by %g relative to the update's size", math.Sqrt(diff/norm))
	}
}
