package trainer

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/swarm/pipeline"
	"github.com/swarm-train/swarm/swarm/statesync"
)

// The held-out check of a state that no two donors offer alike
// (statesync.HeldOut): the node computes the loss of its own state and of
// the offered one on the same held-out data and installs the offered state
// only if it does no worse than the run's training.sync_loss_margin.
//
// Where the data comes from depends on the shard:
//   - the first shard evaluates heldOutSamples of the run's evaluation set
//     (the MNIST test set, the text's validation split) through the
//     pipeline, as the run's final evaluation does;
//   - a later shard cannot compute its input from that set (it needs the
//     previous shards' activations), so it evaluates the latest training
//     micro-batches it received (heldOutInputs, with their targets) through
//     itself and the shards after it. The own state has not stepped on the
//     micro-batches of the epoch being closed, and a donor ahead never saw
//     them (they came to this node), so neither is favoured by much.
//
// A node that has no such data (a later shard's joiner, which has served
// nothing yet) cannot check: it takes a lone donor's state only when that
// donor is the shard's only holder and the node has no trained state, and
// otherwise waits for two donors to agree.

// heldOutSamples of the evaluation set are the first shard's held-out data.
const heldOutSamples = 2 * evalBatch

// heldOutInputs of the latest training micro-batches are a later shard's.
const heldOutInputs = 4

// keptInput is a held-out micro-batch of shard index: a training request
// a later shard received (activations and targets), or a batch of the
// evaluation set for the first shard.
type keptInput struct {
	index   int
	n       int
	act     []float32
	targets []int32
	batch   *engine.Batch // the first shard's inputs
}

// keepInput keeps a copy of a training request this stage is serving as
// held-out data, the latest heldOutInputs only.
func (s *stageServer) keepInput(q *pipeline.Request) {
	k := keptInput{index: int(q.Shard), n: int(q.N), act: slices.Clone(q.Act), targets: slices.Clone(q.Targets)}
	s.keptMu.Lock()
	s.kept = append(s.kept, k)
	if len(s.kept) > heldOutInputs {
		s.kept = s.kept[len(s.kept)-heldOutInputs:]
	}
	s.keptMu.Unlock()
}

// keptFor returns the kept micro-batches of shard index.
func (s *stageServer) keptFor(index int) []keptInput {
	s.keptMu.Lock()
	defer s.keptMu.Unlock()
	var out []keptInput
	for _, k := range s.kept {
		if k.index == index {
			out = append(out, k)
		}
	}
	return out
}

// resetKept forgets the kept micro-batches (the node leaves its shard).
func (s *stageServer) resetKept() {
	s.keptMu.Lock()
	s.kept = nil
	s.keptMu.Unlock()
}

// heldOutData returns the held-out micro-batches of shard index (inputs
// and targets), or none when this node has none.
func (t *Trainer) heldOutData(index int) []keptInput {
	if index == 0 {
		ev := t.drive.evalSet()
		if ev == nil || ev.Len == 0 {
			return nil
		}
		var out []keptInput
		bs := t.m.EvalBatch(evalBatch)
		for start := 0; start < min(ev.Len, heldOutSamples); start += bs {
			b := ev.Batch(start, min(bs, ev.Len-start))
			out = append(out, keptInput{index: 0, n: b.N, targets: b.Targets, batch: b})
		}
		return out
	}
	return t.stage.keptFor(index)
}

// heldOutLoss is the mean loss of the state in sh on data, through this
// stage and the ones after it.
func (t *Trainer) heldOutLoss(ctx context.Context, sh engine.Shard, index int, data []keptInput) (float64, error) {
	t.mu.Lock()
	epoch := t.epoch
	t.mu.Unlock()
	var sum float64
	var n int
	for _, d := range data {
		b := d.batch
		if b == nil {
			b = &engine.Batch{N: d.n}
			if t.stage.last(index) {
				b.Targets = d.targets
			}
		}
		ectx, cancel := context.WithTimeout(ctx, t.cfg.HopTimeout)
		res, err := t.stage.process(ectx, sh, index, epoch, pipeline.KindEval, b, d.act, d.targets)
		cancel()
		if err != nil {
			return 0, fmt.Errorf("held-out loss: %w", err)
		}
		sum += float64(res.Loss) * float64(d.n)
		n += d.n
	}
	if n == 0 {
		return 0, errors.New("held-out loss: no data")
	}
	return sum / float64(n), nil
}

// snapshotLoss is the held-out loss of snap's parameters, in a shard of
// its own.
func (t *Trainer) snapshotLoss(ctx context.Context, index int, snap *statesync.Snapshot, data []keptInput) (float64, error) {
	sh, err := t.cfg.Engine.NewShard(t.m, index)
	if err != nil {
		return 0, err
	}
	defer sh.Close()
	copy(sh.Params(), snap.Params)
	if err := sh.Sync(); err != nil {
		return 0, err
	}
	return t.heldOutLoss(ctx, sh, index, data)
}
