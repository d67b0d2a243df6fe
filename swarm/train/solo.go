package train

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"time"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/checkpoint"
	"github.com/swarm-train/swarm/swarm/data"
)

// Config adjusts a single-node training run. The zero value trains for the
// manifest's steps with validation ten times along the way and no
// checkpoints.
type Config struct {
	// Steps is the optimizer step to stop at (0: the manifest's training.steps).
	Steps int
	// EvalEvery is the number of steps between validations (0: a tenth of
	// the run; < 0: only at the end).
	EvalEvery int
	// EvalSamples caps the held-out samples of the periodic validations (0:
	// all); FinalEvalSamples caps the final evaluation (0: the whole set).
	EvalSamples      int
	FinalEvalSamples int
	// EvalBatch is the evaluation batch size (0: 4× the training batch,
	// fewer where the logits would pass run.MaxEvalLogits).
	EvalBatch int
	// CheckpointDir, if set, receives a checkpoint every CheckpointEvery
	// steps (0: at each validation) and at the end, keeping the newest Keep.
	CheckpointDir   string
	CheckpointEvery int
	Keep            int
	// Resume continues from the newest valid checkpoint in CheckpointDir.
	Resume bool
	// Node names this node to the data sampler ("" on a single node).
	Node string
	// Progress, if set, gets a one-line progress bar redrawn in place (a
	// terminal); Log gets validation results and, without Progress,
	// periodic progress lines.
	Progress io.Writer
	Log      *slog.Logger
	// Data are options for data.NewSource.
	Data []data.Option
}

// Result summarises a run; it is what `swarm train --json` prints.
type Result struct {
	RunID         string   `json:"run_id"`
	Model         string   `json:"model"`
	Engine        string   `json:"engine"`
	Shards        int      `json:"shards"`
	Steps         int64    `json:"steps"`
	Samples       int64    `json:"samples"`
	Seconds       float64  `json:"seconds"`       // wall time of this invocation, validation included
	TrainSeconds  float64  `json:"train_seconds"` // time in training steps only
	SamplesPerSec float64  `json:"samples_per_second"`
	TrainLoss     float64  `json:"train_loss"` // mean loss of the last step
	TestAccuracy  *float64 `json:"test_accuracy,omitempty"`
	TestLoss      *float64 `json:"test_loss,omitempty"`
	ValLoss       *float64 `json:"val_loss,omitempty"`
	// ValPerplexity is exp(ValLoss): per token of the run's tokenizer
	// (characters or subwords), so only runs of one tokenizer compare.
	ValPerplexity *float64 `json:"val_perplexity,omitempty"`
	BigramValLoss *float64 `json:"bigram_val_loss,omitempty"`
	ResumedFrom   string   `json:"resumed_from,omitempty"`
	Checkpoint    string   `json:"checkpoint,omitempty"`
}

// Solo trains a whole run on one machine (swarm train): every shard on one
// engine, one optimizer step per target batch, no peers. The swarm node's
// trainer is swarm/trainer.Trainer.
type Solo struct {
	m       *run.Manifest
	runID   string
	eng     engine.Engine
	shards  []engine.Shard
	src     data.Source
	cfg     Config
	log     *slog.Logger
	step    int64
	samples int64
	micro   []int
}

// NewSolo builds every shard of m on eng and opens the run's data.
func NewSolo(m *run.Manifest, eng engine.Engine, cfg Config) (*Solo, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("invalid manifest: %w", err)
	}
	id, err := m.ID()
	if err != nil {
		return nil, err
	}
	src, err := data.NewSource(m, cfg.Node, cfg.Data...)
	if err != nil {
		return nil, err
	}
	t := &Solo{m: m, runID: id.String(), eng: eng, src: src, cfg: cfg, log: cfg.Log}
	if t.log == nil {
		t.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	for i := range m.Shards {
		s, err := eng.NewShard(m, i)
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("build shard %d: %w", i, err)
		}
		t.shards = append(t.shards, s)
	}
	t.micro = MicroBatches(m.Training.TargetBatch, m.Training.BatchSize)
	return t, nil
}

// Shards are the live shards, in order.
func (t *Solo) Shards() []engine.Shard { return t.shards }

// Source is the training data source.
func (t *Solo) Source() data.Source { return t.src }

// StepCount is the number of optimizer steps taken.
func (t *Solo) StepCount() int64 { return t.step }

// Close releases the shards.
func (t *Solo) Close() error {
	var errs []error
	for _, s := range t.shards {
		errs = append(errs, s.Close())
	}
	t.shards = nil
	return errors.Join(errs...)
}

// TrainStep accumulates gradients over one target batch (micro-batches of
// training.batch_size), clips them by their global norm across shards and
// takes one optimizer step on every shard at the scheduled learning rate. It
// returns the mean loss over the target batch.
func (t *Solo) TrainStep() (float64, error) {
	for _, s := range t.shards {
		s.ZeroGrad()
	}
	var lossSum float64
	total := 0
	// Each micro-batch's backward adds the gradient of its own mean loss. The
	// target batch's mean loss weighs micro-batch i by w_i = n_i/N, so the
	// buffer keeps Σ (w_i/w_last)·∇_i: when the next micro-batch's weight
	// differs, the sum so far is rescaled first (never with equal sizes, the
	// usual case), and the step multiplies by w_last.
	N := t.m.Training.TargetBatch
	// A GPU's last shard keeps the losses on the device: no wait per
	// micro-batch, one read per step.
	taker, deferLoss := t.shards[len(t.shards)-1].(engine.LossTaker)
	deferLoss = deferLoss && taker.DefersLoss()
	for i, n := range t.micro {
		if i > 0 && n != t.micro[i-1] {
			if err := scaleGrads(t.shards, float32(t.micro[i-1])/float32(n)); err != nil {
				return 0, fmt.Errorf("step %d: %w", t.step, err)
			}
		}
		b := t.src.Next(n)
		b.DeferLoss = deferLoss
		l, err := ForwardBackward(t.shards, b)
		if err != nil {
			return 0, fmt.Errorf("step %d: %w", t.step, err)
		}
		lossSum += float64(l) * float64(n)
		total += n
	}
	lossN := total
	if deferLoss {
		var err error
		if lossSum, lossN, err = taker.TakeLoss(); err != nil {
			return 0, fmt.Errorf("step %d: %w", t.step, err)
		}
		if lossN == 0 { // a restarted worker lost them all: report the step without a loss
			lossSum, lossN = 0, 1
		}
		if mean := lossSum / float64(lossN); math.IsNaN(mean) || math.IsInf(mean, 0) {
			return 0, fmt.Errorf("step %d: %w: loss %v", t.step, ErrDiverged, mean)
		}
	}
	scale := float64(t.micro[len(t.micro)-1]) / float64(N)
	norm := GradNorm(t.shards) * scale
	if math.IsNaN(norm) || math.IsInf(norm, 0) {
		return 0, fmt.Errorf("step %d: %w: gradient norm %v", t.step, ErrDiverged, norm)
	}
	scale *= ClipScale(norm, t.m.Optimizer.ClipNorm)
	lr := t.m.Optimizer.LRAt(int(t.step))
	for _, s := range t.shards {
		if err := s.Step(lr, float32(scale)); err != nil {
			return 0, fmt.Errorf("step %d: shard %d: %w", t.step, s.Index(), err)
		}
	}
	t.step++
	t.samples += int64(total)
	return lossSum / float64(lossN), nil
}

// scaleGrads multiplies every shard's gradient buffer by c.
func scaleGrads(shards []engine.Shard, c float32) error {
	for _, s := range shards {
		g := s.Grads()
		for i := range g {
			g[i] *= c
		}
		if err := s.Sync(); err != nil {
			return fmt.Errorf("shard %d: %w", s.Index(), err)
		}
	}
	return nil
}

// Evaluate runs the held-out set through the model (see Evaluate).
func (t *Solo) Evaluate(limit int) (Metrics, error) {
	b := t.cfg.EvalBatch
	if b <= 0 {
		b = t.m.EvalBatch(4 * t.m.Training.BatchSize)
	}
	return Evaluate(t.shards, t.src.Eval(), b, limit)
}

// State captures the trainer's state for a checkpoint (copies of the buffers).
func (t *Solo) State() *checkpoint.State {
	s := &checkpoint.State{RunID: t.runID, Step: t.step, Samples: t.samples, Position: t.src.Position()}
	for _, sh := range t.shards {
		s.Shards = append(s.Shards, checkpoint.ShardState{
			Index:    sh.Index(),
			Params:   append([]float32(nil), sh.Params()...),
			OptState: append([]float32(nil), sh.OptState()...),
		})
	}
	return s
}

// Restore loads a checkpoint of this run into the shards and the data source.
func (t *Solo) Restore(s *checkpoint.State) error {
	if s.RunID != t.runID {
		return fmt.Errorf("checkpoint is of run %s, not %s", s.RunID, t.runID)
	}
	if len(s.Shards) != len(t.shards) {
		return fmt.Errorf("checkpoint holds %d shards, the run has %d", len(s.Shards), len(t.shards))
	}
	for i, sh := range t.shards {
		cs := s.Shards[i]
		if cs.Index != sh.Index() || len(cs.Params) != len(sh.Params()) || len(cs.OptState) != len(sh.OptState()) {
			return fmt.Errorf("checkpoint shard %d (%d params, %d state) does not fit shard %d (%d, %d)",
				cs.Index, len(cs.Params), len(cs.OptState), sh.Index(), len(sh.Params()), len(sh.OptState()))
		}
	}
	if err := t.src.Seek(s.Position); err != nil {
		return fmt.Errorf("checkpoint data position: %w", err)
	}
	for i, sh := range t.shards {
		copy(sh.Params(), s.Shards[i].Params)
		copy(sh.OptState(), s.Shards[i].OptState)
		sh.SetStepCount(s.Step)
		if err := sh.Sync(); err != nil {
			return fmt.Errorf("shard %d: %w", i, err)
		}
	}
	t.step, t.samples = s.Step, s.Samples
	return nil
}

// Run trains until cfg.Steps (or the manifest's steps), validating,
// checkpointing and drawing progress along the way, then evaluates on the
// whole held-out set. A cancelled ctx stops it after the current step with
// a final checkpoint and ctx's error.
func (t *Solo) Run(ctx context.Context) (*Result, error) {
	begin := time.Now() // wall clock: Result.Seconds and samples/s are metadata of the run
	res := &Result{RunID: t.runID, Model: t.m.Model.Arch, Engine: t.eng.Name(), Shards: len(t.shards)}
	var dir *checkpoint.Dir
	if t.cfg.CheckpointDir != "" {
		dir = &checkpoint.Dir{Path: t.cfg.CheckpointDir, Keep: t.cfg.Keep, OnSkip: func(p string, err error) {
			t.log.Warn("skipping damaged checkpoint", "path", p, "err", err)
		}}
	}
	if t.cfg.Resume {
		if dir == nil {
			return nil, errors.New("resume needs a checkpoint folder")
		}
		s, path, err := dir.Latest()
		switch {
		case errors.Is(err, checkpoint.ErrNone) && !errors.Is(err, checkpoint.ErrCorrupt):
			t.log.Info("no checkpoint to resume from; starting fresh", "dir", dir.Path)
		case err != nil:
			return nil, err
		default:
			if err := t.Restore(s); err != nil {
				return nil, fmt.Errorf("resume from %s: %w", path, err)
			}
			res.ResumedFrom = path
			t.log.Info("resumed", "checkpoint", path, "step", s.Step)
		}
	}
	steps := int64(t.cfg.Steps)
	if steps <= 0 {
		steps = int64(t.m.Training.Steps)
	}
	evalEvery := int64(t.cfg.EvalEvery)
	if evalEvery == 0 {
		evalEvery = max(steps/10, 1)
	}
	ckptEvery := int64(t.cfg.CheckpointEvery)
	if ckptEvery <= 0 {
		ckptEvery = evalEvery
		if ckptEvery <= 0 {
			ckptEvery = max(steps/10, 1)
		}
	}
	// A run without held-out data (val_fraction 0 on text) is not evaluated.
	canEval := t.src.Eval().Len > 0
	if !canEval {
		evalEvery = -1
	}
	save := func() error {
		if dir == nil {
			return nil
		}
		p, err := dir.Save(t.State())
		if err != nil {
			return err
		}
		res.Checkpoint = p
		return nil
	}
	bar := newProgress(t.cfg.Progress, t.log, t.step, steps)
	var trainDur time.Duration
	startSamples := t.samples
	var loss float64
	for t.step < steps {
		if err := ctx.Err(); err != nil {
			bar.done()
			if serr := save(); serr != nil {
				return res, errors.Join(err, serr)
			}
			return res, err
		}
		t0 := time.Now()
		l, err := t.TrainStep()
		trainDur += time.Since(t0)
		if err != nil {
			bar.done()
			return res, err
		}
		loss = l
		bar.update(t.step, loss, t.samples-startSamples, trainDur)
		if evalEvery > 0 && t.step%evalEvery == 0 && t.step < steps {
			mt, err := t.Evaluate(t.cfg.EvalSamples)
			if err != nil {
				bar.done()
				return res, err
			}
			bar.clear()
			t.logEval(mt, false)
		}
		if t.step%ckptEvery == 0 && t.step < steps {
			if err := save(); err != nil {
				bar.done()
				return res, err
			}
		}
	}
	bar.done()
	if err := save(); err != nil {
		return res, err
	}
	res.Steps, res.Samples = t.step, t.samples
	res.TrainLoss = loss
	res.TrainSeconds = trainDur.Seconds()
	if trainDur > 0 {
		res.SamplesPerSec = float64(t.samples-startSamples) / trainDur.Seconds()
	}
	if canEval {
		mt, err := t.Evaluate(t.cfg.FinalEvalSamples)
		if err != nil {
			return res, err
		}
		t.logEval(mt, true)
		if mt.Set == "test" {
			acc, l := mt.Accuracy, mt.Loss
			res.TestAccuracy, res.TestLoss = &acc, &l
		} else {
			l, p := mt.Loss, math.Exp(mt.Loss)
			res.ValLoss, res.ValPerplexity = &l, &p
		}
	}
	res.Seconds = time.Since(begin).Seconds()
	return res, nil
}

func (t *Solo) logEval(mt Metrics, final bool) {
	attrs := []any{"step", t.step, "set", mt.Set, "samples", mt.Samples, "loss", fmt.Sprintf("%.4f", mt.Loss)}
	if mt.Set == "test" {
		attrs = append(attrs, "accuracy", fmt.Sprintf("%.4f", mt.Accuracy))
	} else {
		attrs = append(attrs, "perplexity", fmt.Sprintf("%.2f", math.Exp(mt.Loss)))
	}
	msg := "validation"
	if final {
		msg = "final evaluation"
	}
	t.log.Info(msg, attrs...)
}
