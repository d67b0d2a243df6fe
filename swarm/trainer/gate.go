package trainer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/swarm/epochs"
	"github.com/swarm-train/swarm/swarm/pipeline"
	"github.com/swarm-train/swarm/swarm/progress"
)

// The epoch gate: the trainer's side of the stage server (stageGate) and of
// the first-shard driver (driverGate). Micro-batches run only while the node
// is online on their shard and, in sync mode, in the epoch they belong to
// and not closing; closeEpoch waits for those admitted (inflight). The
// engine's state is read under stepMu (forward, backward) and written under
// it by the optimizer steps, snapshots and loads.

var (
	_ stageGate  = (*Trainer)(nil)
	_ driverGate = (*Trainer)(nil)
)

// admit registers a micro-batch of epoch (train) on the current shard; it
// fails if the node is not online on index, or the epoch is closing.
func (t *Trainer) admit(index int, kind uint8, epoch uint64, wait time.Duration) (engine.Shard, uint64, uint8, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.shard == nil || t.index != index || t.state == progress.StateJoining {
		return nil, 0, pipeline.CodeWrongRun, fmt.Errorf("not holding shard %d", index)
	}
	if kind == pipeline.KindTrain && t.sync() {
		if epoch > t.epoch {
			// The sender may be in a later epoch: wait a moment for this
			// node's to end. Its epoch is no input to the decision core
			// (one peer's request cannot end an epoch); the records say
			// when the swarm moved on.
			t.kickEpoch()
			deadline := t.clk.Now().Add(wait)
			for epoch > t.epoch && t.clk.Now().Before(deadline) && t.shard != nil {
				t.waitTimeout(deadline)
			}
		}
		switch {
		case t.shard == nil || t.index != index:
			return nil, 0, pipeline.CodeWrongRun, fmt.Errorf("not holding shard %d", index)
		case epoch < t.epoch:
			return nil, 0, pipeline.CodeStale, fmt.Errorf("epoch %d is over (now %d)", epoch, t.epoch)
		case epoch > t.epoch:
			return nil, 0, pipeline.CodeBusy, fmt.Errorf("still finishing epoch %d", t.epoch)
		case t.closing:
			return nil, 0, pipeline.CodeBusy, fmt.Errorf("epoch %d is closing", t.epoch)
		}
	}
	// Local mode: holders of other shards may still be finishing their
	// rounds through this one, which then serves without stepping.
	if kind == pipeline.KindTrain && t.done && t.sync() {
		return nil, 0, pipeline.CodeStale, errors.New("the run is finished")
	}
	t.inflight++
	return t.shard, t.epoch, pipeline.CodeOK, nil
}

// release ends a micro-batch admit or admitDraw admitted.
func (t *Trainer) release() {
	t.mu.Lock()
	t.inflight--
	t.cond.Broadcast()
	t.mu.Unlock()
}

// waitTimeout waits on cond until signalled or deadline (t.mu held).
func (t *Trainer) waitTimeout(deadline time.Time) {
	stop := t.clk.AfterFunc(t.clk.Until(deadline), func() {
		t.mu.Lock()
		t.cond.Broadcast()
		t.mu.Unlock()
	})
	t.cond.Wait()
	stop.Stop()
}

// position is this node's epoch and whether it holds a shard.
func (t *Trainer) position() (uint64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.epoch, t.shard != nil
}

// forward runs sh's Forward under the engine lock, as busy time.
func (t *Trainer) forward(sh engine.Shard, b *engine.Batch, in []float32, train bool) ([]float32, float32, engine.Tape, error) {
	t.stepMu.RLock()
	defer t.stepMu.RUnlock()
	t.meters.beginCompute()
	defer t.meters.endCompute()
	return sh.Forward(b, in, train)
}

// backward runs sh's Backward under the engine lock, as busy time, if sh is
// still the node's shard and (sync mode) epoch its epoch: a gradient of an
// epoch that ended must not reach the next one's.
func (t *Trainer) backward(sh engine.Shard, epoch uint64, tape engine.Tape, grad []float32) ([]float32, error) {
	t.stepMu.RLock()
	defer t.stepMu.RUnlock()
	t.mu.Lock()
	current := t.shard == sh && (t.epoch == epoch || !t.sync())
	t.mu.Unlock()
	if !current {
		tape.Release()
		return nil, fmt.Errorf("%w during the micro-batch", errStale)
	}
	t.meters.beginCompute()
	gradIn, err := sh.Backward(tape, grad)
	t.meters.endCompute()
	if err != nil {
		return nil, fmt.Errorf("backward: %w", err)
	}
	return gradIn, nil
}

// completed accounts a finished training micro-batch; in local mode it
// first takes the inner step (or, once the run is over, drops the gradient).
func (t *Trainer) completed(sh engine.Shard, n int, loss float32, last bool) {
	if !t.sync() {
		t.mu.Lock()
		done := t.done
		t.mu.Unlock()
		if done {
			t.stepMu.Lock()
			sh.ZeroGrad()
			t.stepMu.Unlock()
		} else {
			t.innerStep(sh)
		}
	}
	t.finishMicro(n, float64(loss), last)
}

// finishMicro accounts a finished training micro-batch.
func (t *Trainer) finishMicro(n int, loss float64, isLast bool) {
	t.mu.Lock()
	t.samples += n
	t.micro++
	first := t.index == 0
	t.mu.Unlock()
	if first {
		t.drive.computed(t.meters.busyTime())
	}
	if isLast {
		t.meters.observeLoss(loss)
	}
	t.meters.account(n)
	t.gossip.Poke()
	t.kickEpoch()
}

// waitOpen waits up to d before a micro-batch of epoch tries the next
// stage again. It returns false, at once, when ctx ends or (training in
// sync mode) the epoch closes or moves on.
func (t *Trainer) waitOpen(ctx context.Context, kind uint8, epoch uint64, d time.Duration) bool {
	deadline := t.clk.Now().Add(d)
	t.mu.Lock()
	defer t.mu.Unlock()
	over := func() bool {
		return ctx.Err() != nil || (kind == pipeline.KindTrain && t.sync() && (t.closing || t.epoch != epoch))
	}
	for !over() && t.clk.Now().Before(deadline) {
		t.waitTimeout(deadline)
	}
	return !over()
}

// admitDraw waits until the first-shard driver may start a micro-batch and
// admits it: online on shard 0, the epoch open, a place in flight free
// (slots) and, in sync mode, the swarm's finished and started samples
// short of the target batch. It returns the micro-batch's size: the batch
// size, or what is left of the target batch.
func (t *Trainer) admitDraw(ctx context.Context, slots flightSlots) (engine.Shard, uint64, int, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for {
		if ctx.Err() != nil {
			return nil, 0, 0, false
		}
		if t.shard != nil && t.index == 0 && t.state == progress.StateOnline && !t.done && !t.closing && slots.room() && t.everyShardHeldLocked() {
			n := t.m.Training.BatchSize
			if t.sync() {
				// At most its share of the target batch, and what the others
				// leave open as far as their records tell: holders reopen an
				// epoch together, before they hear of each other's first
				// micro-batches. A holder that leaves drops out of the share
				// when its record expires.
				in := t.inputLocked()
				left := min(t.m.Training.TargetBatch-t.core.Claimed(in), t.core.Share(in)-t.samples-t.drawn)
				n = min(n, left)
			}
			if n > 0 {
				slots.take()
				t.inflight++
				t.drawn += n
				t.gossip.Poke()
				return t.shard, t.epoch, n, true
			}
		}
		t.waitTimeout(t.clk.Now().Add(100 * time.Millisecond))
	}
}

// everyShardHeldLocked reports whether every shard has a holder online (or
// done): a micro-batch drawn while one has none could not complete, so the
// driver waits, and says once which shard it waits for.
func (t *Trainer) everyShardHeldLocked() bool {
	un := epochs.Unheld(t.tracker.Live(t.clk.Now()), len(t.m.Shards))
	un = slices.DeleteFunc(un, func(i int) bool { return i == t.index }) // its own record may lag
	if len(un) == 0 {
		if t.unheldLogged >= 0 {
			t.log.Info("every shard has a holder again; drawing micro-batches")
			t.unheldLogged = -1
		}
		return true
	}
	if t.unheldLogged != un[0] {
		t.unheldLogged = un[0]
		seen, ok := t.lastSeen[un[0]]
		// With how many peers the progress topic reaches against how many
		// this node is connected to: a holder connected but not heard
		// points at the topic, not at the holder. Logged from a goroutine:
		// asking the topic's router waits on its loop, never under t.mu.
		g, h, shard := t.gossip, t.h, un[0]
		go func() {
			topic := -1
			peers := h.Network().Peers()
			attrs := []any{"shard", shard, "last_seen_epoch", seen, "seen", ok}
			if g != nil {
				topic = len(g.MeshPeers())
				// The router's score of each connected peer (below -80 it
				// ignores the peer altogether) and why it turned records
				// away: what tells a quiet holder from a silenced one.
				scores := make([]string, 0, len(peers))
				for _, p := range peers {
					if sc, ok := g.Score(p); ok {
						id := p.String()
						scores = append(scores, fmt.Sprintf("%s:%.1f", id[max(0, len(id)-6):], sc))
					}
				}
				tr := g.Traffic()
				attrs = append(attrs, "scores", scores, "delivered", tr.Delivered.Load(), "rejected", tr.Reasons())
			}
			attrs = append(attrs, "topic_peers", topic, "connected_peers", len(peers))
			t.log.Warn("a shard has no holder; not drawing micro-batches until a node takes it", attrs...)
		}()
	}
	return false
}

// undraw ends a micro-batch the driver drew in epoch: its samples no
// longer count as drawn, and its place in the epoch is free.
func (t *Trainer) undraw(epoch uint64, n int) {
	t.mu.Lock()
	if t.epoch == epoch {
		// An epoch reopened at the same number (a failed catch-up, a
		// closing whose wait for micro-batches in flight timed out) set
		// drawn to 0 under micro-batches still out: never below 0, which
		// a record carries as InFlight and peers refuse as malformed.
		t.drawn = max(t.drawn-n, 0)
	}
	t.mu.Unlock()
	t.release()
}

// send runs a drawn micro-batch through the pipeline from shard 0.
func (t *Trainer) send(ctx context.Context, sh engine.Shard, epoch uint64, b *engine.Batch) error {
	_, err := t.stage.process(ctx, sh, 0, epoch, pipeline.KindTrain, b, nil, b.Targets)
	return err
}

// poke pushes this node's progress record now.
func (t *Trainer) poke() { t.gossip.Poke() }
