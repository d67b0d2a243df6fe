package trainer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/averaging"
	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/internal/fvec"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/epochs"
	"github.com/swarm-train/swarm/swarm/pipeline"
	"github.com/swarm-train/swarm/swarm/progress"
	"github.com/swarm-train/swarm/swarm/train"
)

// totalEpochs is the number of collaborative epochs in the run: optimizer
// steps in sync mode, outer steps in local mode.
func (t *Trainer) totalEpochs() int {
	if t.sync() {
		return t.m.Training.Steps
	}
	return max(1, t.m.Training.Steps/t.m.Averaging.LocalSteps)
}

// finished reports whether epoch is past the run's last.
func (t *Trainer) finished(epoch uint64) bool { return t.epochsCfg.Finished(epoch) }

// inputLocked is what the decision core sees now (t.mu held).
func (t *Trainer) inputLocked() epochs.Input {
	now := t.clk.Now()
	in := epochs.Input{Now: now, Records: t.tracker.Live(now), Node: epochs.Node{
		Shard: t.index, Held: t.shard != nil, Online: t.state == progress.StateOnline, Done: t.done,
		Epoch: t.epoch, Samples: t.samples, Drawn: t.drawn, Evaluated: t.accuracy >= 0,
	}}
	if !t.sync() {
		in.Node.RoundSteps = t.pace.Target()
		in.Node.Outer = t.outerSumLocked()
	}
	t.noteSeenLocked(in.Records)
	return in
}

// outerSumLocked is the fingerprint of the outer state this node began its
// round with (local mode), 0 where the state is of another round (t.mu
// held).
func (t *Trainer) outerSumLocked() uint64 {
	if t.sync() || t.outerAt != t.epoch {
		return 0
	}
	return t.outerSum
}

// noteSeenLocked remembers, per shard, the highest epoch a holder of it
// (this node included) was seen at: status shows it for a shard that lost
// every holder.
func (t *Trainer) noteSeenLocked(recs []progress.Record) {
	for _, r := range recs {
		if r.Shard >= 0 && r.Shard < len(t.m.Shards) && (r.State == progress.StateOnline || r.State == progress.StateDone) {
			if e, ok := t.lastSeen[r.Shard]; !ok || r.Epoch > e {
				t.lastSeen[r.Shard] = r.Epoch
			}
		}
	}
	if t.shard != nil && t.state != progress.StateJoining {
		if e, ok := t.lastSeen[t.index]; !ok || t.epoch > e {
			t.lastSeen[t.index] = t.epoch
		}
	}
}

// epochEnd is what the actions of one epoch's end carry between them.
type epochEnd struct {
	sh             engine.Shard
	index          int
	epoch          uint64
	samples, micro int
	local          []float32 // the accumulated gradient; the averaged one after the round
	info           avgInfo
	stepped        bool
	began, closed  time.Time
	clip           time.Duration
	// For the epoch's phases (phases.go): when it opened, when its
	// gradient round began and how long the round and its matchmaking took.
	opened, avgStart time.Time
	avg, match       time.Duration
}

// flight is a gradient round detached from its epoch (delayed updates,
// swarm/epochs delayed.go): it averages end in the background; ev is its
// outcome once done is closed.
type flight struct {
	end  epochEnd
	done chan struct{}
	ev   epochs.Event
}

// loopState is what the epoch loop carries between the core's actions: the
// end of the epoch being ended, the round in flight, and the end of the
// round that landed last (its delayed step and state round).
type loopState struct {
	end    epochEnd
	flight *flight
	landed *epochEnd
}

// epochLoop carries out the decision core's actions (swarm/epochs): it
// hands the core the live records, this node's counters and the outcome of
// the last action, and does what it answers. Between epochs it waits for a
// finished micro-batch, a changed record, the round in flight landing or
// 50 ms.
func (t *Trainer) epochLoop(ctx context.Context) {
	tick := t.clk.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var ev epochs.Event
	var ls loopState
	for {
		if ev.Kind == epochs.Wait {
			var landed <-chan struct{}
			if ls.flight != nil {
				landed = ls.flight.done
			}
			select {
			case <-ctx.Done():
				return
			case <-t.kick:
			case <-t.tracker.Changed():
			case <-tick.C():
			case <-landed:
				ev = ls.land()
			}
		}
		t.mu.Lock()
		in := t.inputLocked()
		act := t.core.Step(in, ev)
		verdicts := t.core.Verdicts(in)
		t.mu.Unlock()
		t.ban(verdicts)
		ev = t.carryOut(ctx, act, &ls)
	}
}

// land takes the outcome of the round in flight (done).
func (ls *loopState) land() epochs.Event {
	f := ls.flight
	ls.flight, ls.landed = nil, &f.end
	return f.ev
}

// carryOut does what the core asked and returns the outcome for it.
func (t *Trainer) carryOut(ctx context.Context, act epochs.Action, ls *loopState) epochs.Event {
	e := &ls.end
	if act.Delayed {
		if ls.landed == nil {
			return epochs.Event{Kind: act.Kind, Err: errors.New("no landed round")}
		}
		e = ls.landed
	}
	switch act.Kind {
	case epochs.Close:
		return t.closeFor(e)
	case epochs.CatchUp:
		epoch, err := t.catchUpFrom(ctx, e.sh, e.index, decodePeers(act.Donors))
		return epochs.Event{Kind: epochs.CatchUp, OK: err == nil, Epoch: epoch}
	case epochs.Average:
		if act.Detach {
			t.detach(ctx, act, ls)
			return epochs.Event{Kind: epochs.Average, Detached: true}
		}
		return t.averageGrad(ctx, act, e)
	case epochs.Land:
		if ls.flight == nil {
			return epochs.Event{Kind: epochs.Land}
		}
		select {
		case <-ls.flight.done:
		case <-ctx.Done():
			return epochs.Event{Kind: epochs.Land}
		}
		return ls.land()
	case epochs.Step:
		if act.Delayed {
			return t.stepDelayed(ctx, e)
		}
		return t.step(ctx, e)
	case epochs.AverageState:
		return t.averageState(ctx, act, e)
	case epochs.Reopen:
		if e.stepped {
			t.meters.epochEnded(epochTimes{opened: e.opened, began: e.began, closed: e.closed, avgStart: e.avgStart,
				reopened: t.clk.Now(), avg: e.avg, match: e.match})
			t.log.Debug("epoch done", "epoch", e.epoch, "samples", e.samples, "group", e.info.GroupSize, "avg_s", e.info.Seconds,
				"close_s", e.closed.Sub(e.began).Seconds(), "clip_s", e.clip.Seconds(), "total_s", t.clk.Since(e.began).Seconds())
		}
		t.reopen(e.sh, act.Epoch)
		t.putGradBuf(e.local)
		*e = epochEnd{}
		t.maybeCheckpoint()
	case epochs.OuterStep:
		if err := t.outerStep(ctx, act); err != nil && ctx.Err() == nil {
			t.log.Error("epoch end failed", "err", err)
		}
	case epochs.Evaluate:
		t.evaluate(ctx)
	}
	return epochs.Event{}
}

func decodePeers(ids []string) []peer.ID {
	var out []peer.ID
	for _, s := range ids {
		if p, err := peer.Decode(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// closeEpoch stops admitting micro-batches and waits (bounded) for those
// in flight; it returns the shard and the epoch being closed.
func (t *Trainer) closeEpoch() (engine.Shard, int, uint64, time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closing = true
	t.cond.Broadcast() // micro-batches waiting for a next-stage holder give up
	t.gossip.Poke()
	deadline := t.clk.Now().Add(t.cfg.HopTimeout)
	for t.inflight > 0 && t.clk.Now().Before(deadline) {
		t.waitTimeout(deadline)
	}
	return t.shard, t.index, t.epoch, t.openedAt
}

// setHeldEpoch notes the epoch sh's parameters now belong to (stepMu held
// for writing).
func (t *Trainer) setHeldEpoch(sh engine.Shard, epoch uint64) {
	t.mu.Lock()
	if t.shard == sh {
		t.heldEpoch = epoch
	}
	t.mu.Unlock()
}

func (t *Trainer) reopen(sh engine.Shard, epoch uint64) {
	t.advance(sh, epoch, -1, 0)
}

// advance moves to epoch (round). With samples >= 0 (an overlapped outer
// step), the samples and inner steps counted beyond the given ones carry
// over to the new round; otherwise the counts restart from zero.
func (t *Trainer) advance(sh engine.Shard, epoch uint64, samples, inner int) {
	t.mu.Lock()
	t.pending = false
	t.openedAt = t.clk.Now()
	if t.shard == sh {
		t.epoch = epoch
		if samples >= 0 {
			t.samples, t.inner = max(t.samples-samples, 0), max(t.inner-inner, 0)
			t.micro, t.drawn = 0, 0
		} else {
			t.samples, t.micro, t.inner, t.drawn = 0, 0, 0, 0
		}
		if t.finished(t.epoch) {
			t.done = true
			t.log.Info("run finished", "epochs", t.epoch)
		}
	}
	t.closing = false
	t.cond.Broadcast()
	t.mu.Unlock()
	t.gossip.Poke()
}

// closeFor closes the epoch; in sync mode it also takes the accumulated
// gradient (the mean over its micro-batches) for the round, and clears it
// (with delayed updates the next epoch accumulates while the round is in
// flight).
func (t *Trainer) closeFor(e *epochEnd) epochs.Event {
	began := t.clk.Now()
	sh, index, epoch, opened := t.closeEpoch()
	*e = epochEnd{sh: sh, index: index, epoch: epoch, began: began, closed: t.clk.Now(), opened: opened,
		info: avgInfo{Round: epoch, GroupSize: 1, Mode: "local"}}
	ev := epochs.Event{Kind: epochs.Close, Shard: index, Epoch: epoch, Lost: sh == nil}
	if sh == nil || !t.sync() {
		return ev
	}
	t.mu.Lock()
	e.samples, e.micro = t.samples, t.micro
	t.mu.Unlock()
	t.stepMu.Lock()
	grads := sh.Grads()
	if e.micro > 1 {
		inv := 1 / float32(e.micro)
		for i := range grads {
			grads[i] *= inv
		}
	}
	e.local = append(t.gradBuf(len(grads)), grads...)
	sh.ZeroGrad()
	t.stepMu.Unlock()
	return ev
}

// detach starts the gradient round of the epoch being ended in the
// background (delayed updates); the epoch loop hands its outcome to the
// core when it lands.
func (t *Trainer) detach(ctx context.Context, act epochs.Action, ls *loopState) {
	// The flight owns the gradient from now on; ls.end keeps the shard
	// for the Reopen that follows.
	f := &flight{end: ls.end, done: make(chan struct{})}
	ls.end.local = nil
	ls.flight = f
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		defer close(f.done)
		f.ev = t.averageGrad(ctx, act, &f.end)
		f.ev.Kind = epochs.Land
	}()
}

// averageGrad averages the gradient with the shard's other holders,
// weighted by samples; it ends early when the core finds the round
// pointless (Abort).
func (t *Trainer) averageGrad(ctx context.Context, act epochs.Action, e *epochEnd) epochs.Event {
	start := t.clk.Now()
	actx, cancel := context.WithTimeout(ctx, time.Duration(t.m.Averaging.TimeoutMS)*time.Millisecond)
	vec := append(t.gradBuf(len(e.local)), e.local...)
	defer func() { t.putGradBuf(vec) }() // the buffer not kept in e.local
	t.lieGradient(vec)
	abort, stopWatch := t.watchAbort(actx)
	opts := []averaging.StepOption{averaging.WithGroupSize(act.Group), averaging.WithAbort(abort)}
	if act.Room > 0 {
		opts = append(opts, averaging.WithWanted(decodePeers(act.Want), act.Room))
	}
	res, err := t.avg.Step(actx, t.avgKey(act.Shard, act.Key), act.Epoch, vec, math.Max(float64(e.samples), 1e-3), opts...)
	stopWatch()
	cancel()
	ev := epochs.Event{Kind: epochs.Average, LeftOut: errors.Is(err, averaging.ErrLeftOut)}
	if err == nil {
		t.averagingOffenses(res)
	}
	switch {
	case err == nil && fvec.AllFinite(vec):
		e.local, vec = vec, e.local // the averaged gradient, without a copy
		e.info = avgInfo{Round: act.Epoch, GroupSize: len(res.Members), Fraction: res.Fraction, Mode: string(res.Mode)}
		ev.OK, ev.Group = true, len(res.Members)
		for _, p := range res.Members {
			ev.Members = append(ev.Members, p.String())
		}
	case err == nil:
		t.log.Warn("averaged gradient is not finite; using the local one", "epoch", act.Epoch)
	default:
		t.log.Debug("averaging failed; stepping with the local gradient", "epoch", act.Epoch, "err", err)
	}
	e.avgStart, e.avg, e.match = start, t.clk.Since(start), res.MatchTime
	e.info.Seconds = e.avg.Seconds()
	return ev
}

// step clips the (averaged) gradient across shards and takes the epoch's
// optimizer step.
func (t *Trainer) step(ctx context.Context, e *epochEnd) epochs.Event {
	sh := e.sh
	t.stepMu.Lock()
	copy(sh.Grads(), e.local)
	normSq := sh.GradNormSq()
	t.stepMu.Unlock()
	clipStart := t.clk.Now()
	scale := t.clipScale(ctx, e.index, e.epoch, normSq)
	e.clip = t.clk.Since(clipStart)
	t.stepMu.Lock()
	t.meters.beginCompute()
	err := sh.Step(t.m.Optimizer.LRAt(int(e.epoch)), scale)
	sh.ZeroGrad()
	t.meters.endCompute()
	if err == nil {
		t.setHeldEpoch(sh, e.epoch+1)
	}
	t.stepMu.Unlock()
	t.meters.averaged(e.info)
	t.mu.Lock()
	if t.shard == sh { // a step of a shard it has left does not count
		t.trained = t.trained || err == nil
	}
	t.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("optimizer step: %w", err)
		if ctx.Err() == nil {
			t.log.Error("epoch end failed", "err", err)
		}
	}
	e.stepped = err == nil
	return epochs.Event{Kind: epochs.Step, Err: err}
}

// stepDelayed takes the step of a round that landed while the next epoch
// computes (delayed updates): the next epoch's gradient accumulated so far
// is kept aside for the step and put back after it. The clipping waits
// (clipScale) without the engine lock, so micro-batches go on meanwhile.
func (t *Trainer) stepDelayed(ctx context.Context, e *epochEnd) epochs.Event {
	sh := e.sh
	var normSq float64
	for _, v := range e.local {
		normSq += float64(v) * float64(v)
	}
	clipStart := t.clk.Now()
	scale := t.clipScale(ctx, e.index, e.epoch, normSq)
	e.clip = t.clk.Since(clipStart)
	t.stepMu.Lock()
	t.mu.Lock()
	held := t.shard == sh && sh != nil
	t.mu.Unlock()
	if !held {
		t.stepMu.Unlock()
		return epochs.Event{Kind: epochs.Step, Err: errors.New("the shard was left while its round was in flight")}
	}
	g := sh.Grads()
	t.accum = append(t.accum[:0], g...)
	copy(g, e.local)
	t.meters.beginCompute()
	err := sh.Step(t.m.Optimizer.LRAt(int(e.epoch)), scale)
	t.meters.endCompute()
	copy(g, t.accum)
	if err == nil {
		t.setHeldEpoch(sh, e.epoch+1)
	}
	t.stepMu.Unlock()
	t.meters.averaged(e.info)
	t.mu.Lock()
	if t.shard == sh {
		t.trained = t.trained || err == nil
		if err == nil {
			t.delayedSteps++
		}
	}
	t.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("optimizer step: %w", err)
		if ctx.Err() == nil {
			t.log.Error("delayed step failed", "err", err)
		}
		return epochs.Event{Kind: epochs.Step, Err: err}
	}
	e.stepped = true
	t.log.Debug("delayed step", "epoch", e.epoch, "samples", e.samples, "group", e.info.GroupSize, "avg_s", e.info.Seconds,
		"clip_s", e.clip.Seconds(), "landed_after_s", t.clk.Since(e.began).Seconds())
	return epochs.Event{Kind: epochs.Step}
}

// clipScale is the factor for this shard's averaged gradient (squared norm
// own) that makes the whole model's gradient, all shards together, at most
// the manifest's clip norm: the clipping of a single-node step. Holders
// publish their shard's squared norm in their progress records, of which
// each other shard counts the robust value epochs.GlobalNormSq takes (the
// lower median of its holders', a lone one capped). The other shards'
// norms are those of the epoch before (epochs.ClipReports: they came with
// the last round, so the step does not wait for this round's); this waits,
// at most the averaging timeout, only for a shard that published neither
// and has an online holder still in this epoch (delayed updates: up to an
// epoch past it, whose round of this epoch may not have landed). A shard
// not heard from in time is left out of the sum (the scale is then that of
// the shards heard from).
func (t *Trainer) clipScale(ctx context.Context, index int, epoch uint64, own float64) float32 {
	clip := t.m.Optimizer.ClipNorm
	if clip <= 0 {
		return 1
	}
	t.mu.Lock()
	t.norms = append(t.norms, progress.EpochNorm{Epoch: epoch, NormSq: own})
	if len(t.norms) > progress.MaxNorms {
		t.norms = t.norms[len(t.norms)-progress.MaxNorms:]
	}
	t.mu.Unlock()
	// The norm goes out with the record of the reopen that follows the
	// step (the other shards read it in the next epoch: ClipReports);
	// publishing it now as well would cost every node a record (a
	// signature and its checks) an epoch and hold the reopen's record
	// back by the gossip's least gap. Only a wait below publishes it at
	// once: a shard waited for may be waiting for this one's.
	poked := false
	deadline := t.clk.Now().Add(time.Duration(t.m.Averaging.TimeoutMS) * time.Millisecond)
	// With delayed updates a holder one epoch past this one may still
	// have this epoch's round in flight: its norm is on its way.
	lag := t.epochsCfg.Lag()
	var total float64
	for {
		changed := t.tracker.Changed()
		known, waiting := epochs.ClipReports(t.tracker.Live(t.clk.Now()), index, len(t.m.Shards), epoch, lag)
		// Robust: one holder's 1e300 cannot drive the scale to 0.
		total = epochs.GlobalNormSq(own, known)
		if !waiting || ctx.Err() != nil || !t.clk.Now().Before(deadline) {
			if waiting {
				t.log.Debug("clipping without every shard's gradient norm", "epoch", epoch, "shards_known", len(known)+1)
			}
			break
		}
		if !poked {
			poked = true
			t.gossip.Poke()
		}
		timer := t.clk.NewTimer(t.clk.Until(deadline))
		select {
		case <-changed:
		case <-ctx.Done():
		case <-timer.C():
		}
		timer.Stop()
	}
	return float32(train.ClipScale(math.Sqrt(total), clip))
}

// averageState averages parameters and optimizer state with the shard's
// other holders (equal weights).
func (t *Trainer) averageState(ctx context.Context, act epochs.Action, e *epochEnd) epochs.Event {
	sh := e.sh
	t.stepMu.Lock()
	nP := len(sh.Params())
	vec := append(append([]float32(nil), sh.Params()...), sh.OptState()...)
	t.stepMu.Unlock()
	actx, cancel := context.WithTimeout(ctx, time.Duration(t.m.Averaging.TimeoutMS)*time.Millisecond)
	res, err := t.avg.Step(actx, t.avgKey(act.Shard, act.Key), act.Epoch, vec, 1, averaging.WithGroupSize(act.Group))
	cancel()
	if err == nil {
		t.averagingOffenses(res)
	}
	if err != nil || !fvec.AllFinite(vec) {
		t.log.Debug("state averaging failed", "epoch", act.Epoch, "err", err)
		return epochs.Event{Kind: epochs.AverageState}
	}
	t.stepMu.Lock()
	copy(sh.Params(), vec[:nP])
	copy(sh.OptState(), vec[nP:])
	err = sh.Sync()
	t.stepMu.Unlock()
	if err != nil {
		t.log.Error("load averaged state", "err", err)
		return epochs.Event{Kind: epochs.AverageState, Err: fmt.Errorf("%w: %w", epochs.ErrLoad, err)}
	}
	return epochs.Event{Kind: epochs.AverageState, OK: true, Group: len(res.Members), Fraction: res.Fraction}
}

// watchAbort returns a channel closed as soon as the core finds the
// gradient round under way pointless (a holder of the shard is past its
// epoch), until stop is called or ctx ends.
func (t *Trainer) watchAbort(ctx context.Context) (<-chan struct{}, func()) {
	passed := make(chan struct{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			changed := t.tracker.Changed()
			t.mu.Lock()
			abort := t.core.Abort(t.inputLocked())
			t.mu.Unlock()
			if abort {
				close(passed)
				return
			}
			select {
			case <-changed:
			case <-stop:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return passed, func() { close(stop); wg.Wait() }
}

// catchUpFrom replaces the shard's state with one of donors'; it returns
// the epoch of the state loaded.
func (t *Trainer) catchUpFrom(ctx context.Context, sh engine.Shard, index int, donors []peer.ID) (uint64, error) {
	if sh == nil || len(donors) == 0 {
		return 0, errors.New("no holder to catch up from")
	}
	snap, err := t.fetchAgreed(ctx, sh, index, donors, false, nil)
	if err != nil {
		t.log.Warn("catch-up failed", "err", err)
		return 0, err
	}
	t.meters.fetchedState(snap)
	t.stepMu.Lock()
	copy(sh.Params(), snap.Params)
	copy(sh.OptState(), snap.Opt)
	sh.SetStepCount(snap.Step)
	sh.ZeroGrad()
	if !t.sync() {
		// Local mode serves the last outer state: the new anchor.
		t.mu.Lock()
		t.anchor = append(t.anchor[:0], snap.Params...)
		// The momentum stays this node's own: the fingerprint tells the
		// mates whether it matches theirs (where it matters).
		t.outerSum, t.outerAt = t.outerState(), snap.Epoch
		if t.deltaComp != nil { // the residual was of the replaced trajectory
			t.deltaComp.Reset()
		}
		t.mu.Unlock()
	}
	err = sh.Sync()
	t.setHeldEpoch(sh, snap.Epoch)
	t.stepMu.Unlock()
	if err != nil {
		return 0, err
	}
	t.log.Info("caught up with the swarm through state sync", "shard", index, "epoch", snap.Epoch)
	return snap.Epoch, nil
}

func (t *Trainer) avgKey(index int, what string) string {
	return fmt.Sprintf("%s/shard/%d/%s", t.runID, index, what)
}

// evaluate runs the held-out set through the pipeline (first-shard nodes,
// once the run is finished) and publishes the accuracy.
func (t *Trainer) evaluate(ctx context.Context) {
	ev := t.drive.evalSet()
	if ev == nil || ev.Len == 0 {
		return
	}
	var correct, n int
	var lossSum float64
	bs := t.m.EvalBatch(evalBatch)
	for start := 0; start < ev.Len; start += bs {
		b := ev.Batch(start, bs)
		var res *pipeline.Response
		var err error
		for attempt := 0; attempt < 5 && ctx.Err() == nil; attempt++ {
			t.mu.Lock()
			sh, epoch := t.shard, t.epoch
			t.mu.Unlock()
			if sh == nil {
				return
			}
			ectx, cancel := context.WithTimeout(ctx, t.cfg.HopTimeout)
			res, err = t.stage.process(ectx, sh, 0, epoch, pipeline.KindEval, b, nil, b.Targets)
			cancel()
			if err == nil {
				break
			}
			_ = clock.Sleep(ctx, t.clk, time.Second)
		}
		if err != nil || res == nil {
			if ctx.Err() == nil {
				t.log.Warn("evaluation failed", "err", err)
			}
			return
		}
		correct += int(res.Correct)
		lossSum += float64(res.Loss) * float64(b.N)
		n += b.N
	}
	acc := float64(correct) / float64(n)
	if t.m.Model.Arch != run.ArchMLPMNIST {
		acc = 0
	}
	t.mu.Lock()
	t.accuracy = acc
	t.evalLoss = lossSum / float64(n)
	t.mu.Unlock()
	t.gossip.Poke()
	attrs := []any{"set", ev.Name, "samples", n, "loss", fmt.Sprintf("%.4f", lossSum/float64(n))}
	if t.m.Model.LanguageModel() {
		attrs = append(attrs, "perplexity", fmt.Sprintf("%.2f", math.Exp(lossSum/float64(n))))
	} else {
		attrs = append(attrs, "accuracy", fmt.Sprintf("%.4f", acc))
	}
	t.log.Info("evaluation", attrs...)
}

func (t *Trainer) kickEpoch() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}
