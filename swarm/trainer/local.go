package trainer

import (
	"context"
	"errors"
	"math"
	"time"

	"github.com/swarm-train/swarm/averaging"
	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/internal/fvec"
	"github.com/swarm-train/swarm/swarm/epochs"
)

// Local mode (averaging.mode local, DiLoCo): an inner optimizer step after
// every micro-batch, and every local_steps inner steps an outer step that
// averages the holders' deltas and applies the outer optimizer (outer.go).

// outerState fingerprints the outer state (stepMu held): the anchor, and
// the momentum where the run's outer step uses it. Without momentum
// (outer_momentum 0, what compressed deltas set) the next anchor depends
// only on this one and the averaged delta, so holders whose anchors agree
// are equal whatever momentum a joiner or a restart began with, and need no
// dense round to say so.
func (t *Trainer) outerState() uint64 {
	if t.m.Averaging.OuterMomentum == 0 {
		return outerFingerprint(t.anchor, nil)
	}
	return outerFingerprint(t.anchor, t.outerMom)
}

// innerStep is local mode's optimizer step after each micro-batch.
func (t *Trainer) innerStep(sh engine.Shard) {
	stalled := t.waitOverlap()
	t.stepMu.Lock()
	t.mu.Lock()
	done := t.done
	t.mu.Unlock()
	if done { // the run ended while this step waited: the final model stays averaged
		sh.ZeroGrad()
		t.stepMu.Unlock()
		return
	}
	t.meters.beginCompute()
	scale := float32(1)
	if c := t.m.Optimizer.ClipNorm; c > 0 {
		if norm := math.Sqrt(sh.GradNormSq()); norm > c {
			scale = float32(c / norm)
		}
	}
	err := sh.Step(t.m.Optimizer.LRAt(int(sh.StepCount())), scale)
	sh.ZeroGrad()
	t.meters.endCompute()
	t.stepMu.Unlock()
	if err != nil {
		t.log.Error("inner step", "err", err)
	}
	t.mu.Lock()
	t.inner++
	t.trained = true
	t.pace.ObserveStep(t.clk.Now(), stalled)
	t.mu.Unlock()
}

// waitOverlap holds an inner step while the previous outer step is pending
// and this holder already took as many overlapping steps as the pace allows
// (swarm/epochs, Pace.Overlap: enough to cover a recent outer round, at
// least half a round, at most one), bounded by the hop timeout, after which
// it steps anyway. It reports whether the step waited.
func (t *Trainer) waitOverlap() bool {
	deadline := t.clk.Now().Add(t.cfg.HopTimeout)
	t.mu.Lock()
	defer t.mu.Unlock()
	stalled := false
	for t.pending && t.inner-t.pendingInner >= t.pace.Overlap() && t.clk.Now().Before(deadline) {
		stalled = true
		t.waitTimeout(deadline)
	}
	return stalled
}

// outerStep (local mode, DiLoCo): average the parameter deltas since the
// last outer step with the shard's holders and apply Nesterov momentum.
//
// With averaging.overlap the node keeps drawing and stepping while the
// deltas are averaged: the outer step then lands on the anchor and the
// progress made since the deltas were taken rides on top of it (it belongs
// to the next round's delta). The run's last round keeps no such progress,
// so holders end on the same averaged model.
func (t *Trainer) outerStep(ctx context.Context, act epochs.Action) error {
	overlap := t.m.Averaging.Overlap
	var sh engine.Shard
	var index int
	var round uint64
	if overlap {
		t.mu.Lock()
		sh, index, round = t.shard, t.index, t.epoch
		t.mu.Unlock()
	} else {
		sh, index, round, _ = t.closeEpoch()
	}
	if sh == nil {
		t.reopen(nil, round)
		return nil
	}
	t.stepMu.Lock()
	t.mu.Lock()
	samples, inner := t.samples, t.inner
	if t.deltaStale && t.deltaComp != nil {
		t.deltaComp.Reset()
	}
	t.deltaStale = false
	if overlap {
		t.pending, t.pendingInner = true, inner
	}
	t.mu.Unlock()
	p := sh.Params()
	delta := outerDelta(t.anchor, p)
	var taken []float32 // the parameters the delta was taken from
	if overlap {
		taken = append([]float32(nil), p...)
	}
	full := act.Full
	grouped := len(t.holders(index, false)) > 0
	vec, key := append([]float32(nil), delta...), epochs.KeyDelta
	opts := []averaging.StepOption{averaging.WithGroupSize(act.Group)}
	var sent []float32 // a compressed delta as sent
	switch {
	case full:
		if t.deltaComp != nil && len(t.deltaComp.Residual()) == len(vec) {
			// The outer state goes uncompressed: so does all that is owed.
			for i, e := range t.deltaComp.Residual() {
				vec[i] += e
			}
			t.deltaComp.Reset()
		}
		vec, key = append(append(vec, t.anchor...), t.outerMom...), epochs.KeyOuter
	case t.deltaComp != nil && grouped:
		t.deltaComp.Compress(vec)
		sent = append([]float32(nil), vec...)
		opts = append(opts, averaging.WithCompression(t.deltaCodec))
	}
	t.stepMu.Unlock()
	start := t.clk.Now()
	info := avgInfo{Round: round, GroupSize: 1, Mode: "local"}
	var outer []float32 // averaged anchor and momentum
	if sent != nil {
		// Averaged alone, a holder applies what it would have sent; the
		// rest stays in the residual, for the next round.
		copy(delta, sent)
	}
	if grouped {
		actx, cancel := context.WithTimeout(ctx, time.Duration(t.m.Averaging.TimeoutMS)*time.Millisecond)
		res, err := t.avg.Step(actx, t.avgKey(index, key), round, vec, math.Max(float64(samples), 1e-3), opts...)
		cancel()
		if err == nil && fvec.AllFinite(vec) {
			copy(delta, vec)
			if full {
				outer = vec[len(delta):]
			}
			info = avgInfo{Round: round, GroupSize: len(res.Members), Fraction: res.Fraction, Mode: string(res.Mode),
				BytesSent: res.BytesSent, BytesReceived: res.BytesReceived, Key: key, Values: len(delta)}
		} else if err != nil && !errors.Is(err, averaging.ErrNoGroup) {
			t.log.Debug("outer averaging failed", "round", round, "err", err)
		}
	}
	info.Seconds = t.clk.Since(start).Seconds()
	t.mu.Lock()
	if grouped && overlap {
		t.pace.ObserveRound(t.clk.Since(start))
	}
	target, ahead := t.pace.Target(), t.pace.Overlap()
	t.mu.Unlock()
	t.log.Debug("outer step", "round", round, "group", info.GroupSize, "mode", info.Mode, "seconds", info.Seconds,
		"bytes_sent", info.BytesSent, "bytes_received", info.BytesReceived, "values", len(vec), "inner", inner,
		"next_round_steps", target, "overlap_steps", ahead)
	lr, mu := float32(t.m.Averaging.OuterLR), float32(t.m.Averaging.OuterMomentum)
	carry := taken != nil && !t.finished(round+1)
	if !carry {
		taken = nil
	}
	t.stepMu.Lock()
	anchor, momentum := t.anchor, t.outerMom
	if outer != nil { // the holders' averaged outer state
		anchor, momentum = outer[:len(anchor)], outer[len(anchor):]
	}
	t.anchor, t.outerMom = nesterov(anchor, momentum, delta, lr, mu)
	sum := t.outerState()
	copy(sh.Params(), outerParams(t.anchor, sh.Params(), taken))
	err := sh.Sync()
	t.mu.Lock()
	t.outerSum, t.outerAt = sum, round+1
	t.mu.Unlock()
	t.meters.averaged(info)
	// The new anchor and the round it starts change together: a snapshot
	// (taken under stepMu) never pairs one round's anchor with another's
	// number. Samples and inner steps since the deltas were taken count
	// towards the next round.
	if carry {
		t.advance(sh, round+1, samples, inner)
	} else {
		t.reopen(sh, round+1)
	}
	t.stepMu.Unlock()
	return err
}
