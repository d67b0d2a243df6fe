package trainer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/averaging"
	"github.com/swarm-train/swarm/gpu/engine"
	"github.com/swarm-train/swarm/swarm/pipeline"
	"github.com/swarm-train/swarm/swarm/progress"
	"github.com/swarm-train/swarm/swarm/run"
	"github.com/swarm-train/swarm/swarm/statesync"
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

// globalSamplesLocked is the samples the first shard's holders finished in
// this node's epoch (t.mu held).
func (t *Trainer) globalSamplesLocked() int {
	self := t.h.ID().String()
	n := 0
	if t.index == 0 {
		n = t.samples
	}
	for _, r := range t.tracker.Live(time.Now()) {
		if r.Peer != self && r.Shard == 0 && r.Epoch == t.epoch {
			n += r.Samples
		}
	}
	return n
}

// globalClaimedLocked adds to globalSamplesLocked the samples the first
// shard's holders started in this epoch and have not finished (t.mu held).
func (t *Trainer) globalClaimedLocked() int {
	self := t.h.ID().String()
	n := t.globalSamplesLocked()
	if t.index == 0 {
		n += t.drawn
	}
	now := time.Now()
	live := t.tracker.Live(now)
	for _, r := range live {
		if r.Peer != self && r.Shard == 0 && r.Epoch == t.epoch && r.State == progress.StateOnline && t.claimLiveLocked(r, now) {
			n += r.InFlight
		}
	}
	t.pruneClaimsLocked(live)
	return n
}

// claimStall is how long a first-shard peer may go without finishing
// samples before the others stop counting its in-flight claim and its share
// of the target batch: its micro-batches keep failing (it is excluded
// downstream, or its next stage vanished), and waiting on them would stall
// every epoch. The mark lasts across epochs until the peer finishes samples
// again; counting a slow but honest peer out costs at most a slightly larger
// epoch.
const claimStall = 3 * time.Second

type claimSeen struct {
	epoch   uint64
	samples int
	at      time.Time // when the peer last finished samples (or was first seen)
}

// claimLiveLocked reports whether r's claim still counts: r finished
// samples within claimStall (t.mu held).
func (t *Trainer) claimLiveLocked(r progress.Record, now time.Time) bool {
	s, ok := t.claims[r.Peer]
	switch {
	case !ok:
		s.at = now
	case r.Epoch != s.epoch && r.Samples > 0, r.Epoch == s.epoch && r.Samples > s.samples:
		s.at = now
	}
	s.epoch, s.samples = r.Epoch, r.Samples
	t.claims[r.Peer] = s
	return now.Sub(s.at) < claimStall
}

// pruneClaimsLocked forgets the claims of peers without a live record, so
// the map never outgrows the tracker (t.mu held).
func (t *Trainer) pruneClaimsLocked(live []progress.Record) {
	if len(t.claims) <= len(live) {
		return
	}
	keep := make(map[string]bool, len(live))
	for _, r := range live {
		keep[r.Peer] = true
	}
	for p := range t.claims {
		if !keep[p] {
			delete(t.claims, p)
		}
	}
}

// epochLoop ends epochs: in sync mode when the swarm reached the target
// batch or a peer is already in a later epoch; in local mode after
// LocalSteps inner steps.
func (t *Trainer) epochLoop(ctx context.Context) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.kick:
		case <-t.tracker.Changed():
		case <-tick.C:
		}
		t.mu.Lock()
		ready := t.shard != nil && t.state == progress.StateOnline && !t.done
		var due bool
		var ahead []peer.ID
		if ready {
			if t.sync() {
				peerEpoch := progress.Summarize(t.tracker.Live(time.Now()), len(t.m.Shards)).Epoch
				due = t.globalSamplesLocked() >= t.m.Training.TargetBatch || peerEpoch > t.epoch || t.ahead > t.epoch
			} else {
				// The round ends when the shard's holders together took
				// local_steps inner steps each on average: all of them see
				// it at about the same moment, so they average together
				// even though the wiring gives them unequal shares.
				// A holder of the shard already in a later round (this node
				// joined from a snapshot taken just before an outer step,
				// or missed one) would never share a round with it again.
				ahead = t.shardAheadLocked()
				due = t.shardInnerLocked() >= t.m.Averaging.LocalSteps
				if t.index > 0 {
					// Later shards follow the first shard's rounds: their own
					// count runs ahead while a holder is still joining.
					if first, ok := t.firstShardRoundLocked(); ok {
						due = first > t.epoch
					}
				}
			}
		}
		finished := t.shard != nil && t.done && t.accuracy < 0 && t.index == 0
		t.mu.Unlock()
		if len(ahead) > 0 {
			sh, index, round := t.closeEpoch()
			if sh == nil || t.catchUpFrom(ctx, sh, index, ahead) != nil {
				t.reopen(sh, round)
			}
			continue
		}
		if due {
			var err error
			if t.sync() {
				err = t.endEpoch(ctx)
			} else {
				err = t.outerStep(ctx)
			}
			if err != nil && ctx.Err() == nil {
				t.log.Error("epoch end failed", "err", err)
			}
		}
		if finished {
			t.evaluate(ctx)
		}
	}
}

// firstShardRoundLocked is the lowest round among the first shard's online
// holders (local mode; t.mu held); ok is false when it has none.
func (t *Trainer) firstShardRoundLocked() (uint64, bool) {
	var low uint64
	ok := false
	for _, r := range t.tracker.Live(time.Now()) {
		if r.Shard == 0 && (r.State == progress.StateOnline || r.State == progress.StateDone) {
			if !ok || r.Epoch < low {
				low = r.Epoch
			}
			ok = true
		}
	}
	return low, ok
}

// shardAheadLocked is the other online holders of this node's shard in the
// latest round, when that round is later than this node's (local mode; t.mu
// held).
func (t *Trainer) shardAheadLocked() []peer.ID {
	self := t.h.ID().String()
	var out []peer.ID
	top := t.epoch
	for _, r := range t.tracker.Live(time.Now()) {
		if r.Peer == self || r.Shard != t.index || r.Epoch <= t.epoch ||
			(r.State != progress.StateOnline && r.State != progress.StateDone) {
			continue
		}
		p, err := peer.Decode(r.Peer)
		if err != nil {
			continue
		}
		if r.Epoch > top {
			top, out = r.Epoch, nil
		}
		if r.Epoch == top {
			out = append(out, p)
		}
	}
	return out
}

// shardInnerLocked is the mean number of inner steps (micro-batches) the
// holders of this node's shard took in the current outer round (t.mu held).
func (t *Trainer) shardInnerLocked() int {
	self := t.h.ID().String()
	samples, holders := t.samples, 1
	for _, r := range t.tracker.Live(time.Now()) {
		if r.Peer != self && r.Shard == t.index && r.State == progress.StateOnline {
			holders++
			if r.Epoch == t.epoch {
				samples += r.Samples
			}
		}
	}
	return samples / (holders * t.m.Training.BatchSize)
}

// closeEpoch stops admitting micro-batches and waits (bounded) for those
// in flight; it returns the shard and the epoch being closed.
func (t *Trainer) closeEpoch() (engine.Shard, int, uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closing = true
	t.cond.Broadcast() // micro-batches waiting for a next-stage holder give up
	t.gossip.Poke()
	deadline := time.Now().Add(t.cfg.HopTimeout)
	for t.inflight > 0 && time.Now().Before(deadline) {
		t.waitTimeout(deadline)
	}
	return t.shard, t.index, t.epoch
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
	if t.shard == sh {
		t.epoch = epoch
		if samples >= 0 {
			t.samples, t.inner = max(t.samples-samples, 0), max(t.inner-inner, 0)
			t.micro, t.drawn = 0, 0
		} else {
			t.samples, t.micro, t.inner, t.drawn = 0, 0, 0, 0
		}
		if t.epoch >= uint64(t.totalEpochs()) {
			t.done = true
			t.log.Info("run finished", "epochs", t.epoch)
		}
	}
	t.closing = false
	t.cond.Broadcast()
	t.mu.Unlock()
	t.gossip.Poke()
}

// endEpoch averages the accumulated gradients with the shard's other
// holders, weighted by samples, and takes the optimizer step.
func (t *Trainer) endEpoch(ctx context.Context) error {
	began := time.Now()
	sh, index, epoch := t.closeEpoch()
	closed := time.Now()
	t.mu.Lock()
	samples, micro := t.samples, t.micro
	t.mu.Unlock()
	if sh == nil {
		t.reopen(nil, epoch)
		return nil
	}
	t.stepMu.Lock()
	grads := sh.Grads()
	if micro > 1 {
		inv := 1 / float32(micro)
		for i := range grads {
			grads[i] *= inv
		}
	}
	local := append([]float32(nil), grads...)
	t.stepMu.Unlock()

	// A holder of this shard already past this epoch averaged its round
	// without this node: nobody is left to average with, and waiting out
	// the round would hold this node (and so the swarm) for the averaging
	// timeout. Take the newer state instead.
	if donors := t.holdersAhead(index, epoch); len(donors) > 0 {
		if err := t.catchUpFrom(ctx, sh, index, donors); err == nil {
			return nil
		}
	}

	start := time.Now()
	info := avgInfo{Round: epoch, GroupSize: 1, Mode: "local"}
	expected := len(t.holders(index, false)) // the shard-mates this round is for
	if expected > 0 {
		actx, cancel := context.WithTimeout(ctx, time.Duration(t.m.Averaging.TimeoutMS)*time.Millisecond)
		vec := append([]float32(nil), local...)
		abort, stopWatch := t.watchPassed(actx, index, epoch)
		res, err := t.avg.Step(actx, t.avgKey(index, "grad"), epoch, vec, math.Max(float64(samples), 1e-3),
			t.groupSize(index), averaging.WithAbort(abort))
		stopWatch()
		cancel()
		switch {
		case err == nil && finite(vec):
			copy(local, vec)
			info = avgInfo{Round: epoch, GroupSize: len(res.Members), Fraction: res.Fraction, Mode: string(res.Mode)}
		case err == nil:
			t.log.Warn("averaged gradient is not finite; using the local one", "epoch", epoch)
		default:
			t.log.Debug("averaging failed; stepping with the local gradient", "epoch", epoch, "err", err)
		}
	}
	info.Seconds = time.Since(start).Seconds()

	// Behind the swarm, or left out of a round a shard-mate finished and
	// stepped past: our state is stale. Catch up through state sync
	// instead of stepping, from a holder of this shard that is ahead. When
	// none is (the swarm is ahead only in other shards), this shard is the
	// one holding the swarm back: it steps, and the next epochs end at once
	// until it is level.
	if donors := t.holdersAhead(index, epoch); len(donors) > 0 && (t.peerEpoch() > epoch+1 || info.GroupSize <= 1) {
		if err := t.catchUpFrom(ctx, sh, index, donors); err == nil {
			return nil
		}
	}

	t.stepMu.Lock()
	copy(sh.Grads(), local)
	normSq := sh.GradNormSq()
	t.stepMu.Unlock()
	clipStart := time.Now()
	scale := t.clipScale(ctx, index, epoch, normSq)
	clipped := time.Now()
	t.stepMu.Lock()
	t.beginCompute()
	err := sh.Step(t.m.Optimizer.LRAt(int(epoch)), scale)
	sh.ZeroGrad()
	t.endCompute()
	t.stepMu.Unlock()
	t.mu.Lock()
	t.setLastAvg(info)
	t.mu.Unlock()
	if err != nil {
		t.reopen(sh, epoch)
		return fmt.Errorf("optimizer step: %w", err)
	}
	// Holders that missed a round, or joined, drift apart; averaging the
	// whole state (parameters and optimizer moments) every few epochs, and
	// right after a round that did not include every holder, pulls them
	// back together.
	// A holder that came online during the round (a joiner, with a copy
	// of a holder's state) was not missed by it.
	holders := len(t.holders(index, false))
	t.mu.Lock()
	if info.GroupSize < min(expected, holders)+1 {
		t.drift = true
	}
	// The run's last epoch is always one (holders agree on it by number),
	// so holders end on one model even if a late round missed one of them.
	last := epoch+1 >= uint64(t.totalEpochs())
	resync := holders > 0 && (t.drift || last || epoch%stateSyncEvery == stateSyncEvery-1)
	t.mu.Unlock()
	if resync {
		t.averageState(ctx, sh, index, epoch)
	}
	t.log.Debug("epoch done", "epoch", epoch, "samples", samples, "group", info.GroupSize, "avg_s", info.Seconds,
		"close_s", closed.Sub(began).Seconds(), "clip_s", clipped.Sub(clipStart).Seconds(), "total_s", time.Since(began).Seconds())
	t.reopen(sh, epoch+1)
	return nil
}

// outerStateEvery is the period, in rounds, at which local mode averages
// the outer state (anchor and momentum) along with the deltas: three times
// a delta round's traffic, and the cure for holders whose anchors parted.
const outerStateEvery = 10

// stateSyncEvery is the period, in epochs, of whole-state averaging when
// no drift was seen: holders that averaged every gradient completely take
// identical steps, so this is only a safety net (a round costs three times
// a gradient round: parameters and both AdamW moments).
const stateSyncEvery = 50

// groupSize is the averaging option that starts a round of shard index as
// soon as every live holder has joined it, rather than waiting out the
// matchmaking window when the shard has fewer holders than the manifest's
// group size.
func (t *Trainer) groupSize(index int) averaging.StepOption {
	return averaging.WithGroupSize(min(len(t.holders(index, false))+1, t.m.Averaging.GroupSize))
}

// clipScale is the factor for this shard's averaged gradient (squared norm
// own) that makes the whole model's gradient, all shards together, at most
// the manifest's clip norm: the clipping of a single-node step. Holders
// publish their shard's squared norm in their progress records; this waits,
// at most the averaging timeout, for each other shard that has an online
// holder still in this epoch. A shard not heard from in time is left out of
// the sum (the scale is then that of the shards heard from).
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
	t.gossip.Poke()
	deadline := time.Now().Add(time.Duration(t.m.Averaging.TimeoutMS) * time.Millisecond)
	var total float64
	for {
		changed := t.tracker.Changed()
		known := map[int]float64{}
		waiting := false
		recs := t.tracker.Live(time.Now())
		for _, r := range recs {
			if r.Shard < 0 || r.Shard == index || r.Shard >= len(t.m.Shards) {
				continue
			}
			if v, ok := r.NormAt(epoch); ok {
				known[r.Shard] = v
			}
		}
		for _, r := range recs {
			if r.Shard >= 0 && r.Shard != index && r.Shard < len(t.m.Shards) && r.State == progress.StateOnline && r.Epoch <= epoch {
				if _, ok := known[r.Shard]; !ok {
					waiting = true
				}
			}
		}
		total = own
		for _, v := range known {
			total += v
		}
		if !waiting || ctx.Err() != nil || !time.Now().Before(deadline) {
			if waiting {
				t.log.Debug("clipping without every shard's gradient norm", "epoch", epoch, "shards_known", len(known)+1)
			}
			break
		}
		select {
		case <-changed:
		case <-ctx.Done():
		case <-time.After(time.Until(deadline)):
		}
	}
	return float32(train.ClipScale(math.Sqrt(total), clip))
}

// averageState averages parameters and optimizer state with the shard's
// other holders (equal weights).
func (t *Trainer) averageState(ctx context.Context, sh engine.Shard, index int, epoch uint64) {
	t.stepMu.Lock()
	nP := len(sh.Params())
	vec := append(append([]float32(nil), sh.Params()...), sh.OptState()...)
	t.stepMu.Unlock()
	actx, cancel := context.WithTimeout(ctx, time.Duration(t.m.Averaging.TimeoutMS)*time.Millisecond)
	res, err := t.avg.Step(actx, t.avgKey(index, "state"), epoch, vec, 1, t.groupSize(index))
	cancel()
	if err != nil || !finite(vec) {
		// The other holders may not see a drift (it is this node's view):
		// retrying every epoch would stall each one for the matchmaking
		// timeout. The next incomplete gradient round or the periodic
		// round tries again.
		t.log.Debug("state averaging failed", "epoch", epoch, "err", err)
		t.mu.Lock()
		t.drift = false
		t.mu.Unlock()
		return
	}
	t.stepMu.Lock()
	copy(sh.Params(), vec[:nP])
	copy(sh.OptState(), vec[nP:])
	err = sh.Sync()
	t.stepMu.Unlock()
	if err != nil {
		t.log.Error("load averaged state", "err", err)
		return
	}
	t.mu.Lock()
	t.drift = res.Fraction < 1 || len(res.Members) < len(t.holders(index, false))+1
	t.mu.Unlock()
}

func (t *Trainer) peerEpoch() uint64 {
	return progress.Summarize(t.tracker.Live(time.Now()), len(t.m.Shards)).Epoch
}

// watchPassed returns a channel closed as soon as a holder of shard index
// is past epoch (its round is over without this node), until stop is
// called or ctx ends.
func (t *Trainer) watchPassed(ctx context.Context, index int, epoch uint64) (<-chan struct{}, func()) {
	passed := make(chan struct{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			changed := t.tracker.Changed()
			if len(t.holdersAhead(index, epoch)) > 0 {
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

// holdersAhead is the online holders of shard index whose epoch is later
// than epoch, latest first. Catching up from a holder that is not ahead
// would only restore this node's own epoch, and two holders left behind by
// the other shards would do so from each other forever.
func (t *Trainer) holdersAhead(index int, epoch uint64) []peer.ID {
	self := t.h.ID().String()
	var recs []progress.Record
	for _, r := range t.tracker.Live(time.Now()) {
		if r.Peer != self && r.Shard == index && r.Epoch > epoch &&
			(r.State == progress.StateOnline || r.State == progress.StateDone) {
			recs = append(recs, r)
		}
	}
	slices.SortFunc(recs, func(a, b progress.Record) int { return cmp.Compare(b.Epoch, a.Epoch) })
	var out []peer.ID
	for _, r := range recs {
		if p, err := peer.Decode(r.Peer); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// catchUpFrom replaces the shard's state with one of donors'.
func (t *Trainer) catchUpFrom(ctx context.Context, sh engine.Shard, index int, donors []peer.ID) error {
	if len(donors) == 0 {
		return errors.New("no holder to catch up from")
	}
	snap, err := statesync.Fetch(ctx, t.h, donors, t.wantState(index, len(sh.Params()), len(sh.OptState())), 10*time.Second, nil)
	if err != nil {
		t.log.Warn("catch-up failed", "err", err)
		return err
	}
	t.fetched(snap)
	t.stepMu.Lock()
	copy(sh.Params(), snap.Params)
	copy(sh.OptState(), snap.Opt)
	sh.SetStepCount(snap.Step)
	sh.ZeroGrad()
	if !t.sync() {
		// Local mode serves the last outer state: the new anchor.
		t.mu.Lock()
		t.anchor = append(t.anchor[:0], snap.Params...)
		t.mu.Unlock()
	}
	err = sh.Sync()
	t.stepMu.Unlock()
	if err != nil {
		return err
	}
	t.log.Info("caught up with the swarm through state sync", "shard", index, "epoch", snap.Epoch)
	t.reopen(sh, snap.Epoch)
	return nil
}

func (t *Trainer) avgKey(index int, what string) string {
	return fmt.Sprintf("%s/shard/%d/%s", t.runID, index, what)
}

// innerStep is local mode's optimizer step after each micro-batch.
func (t *Trainer) innerStep(sh engine.Shard) {
	t.waitOverlap()
	t.stepMu.Lock()
	t.mu.Lock()
	done := t.done
	t.mu.Unlock()
	if done { // the run ended while this step waited: the final model stays averaged
		sh.ZeroGrad()
		t.stepMu.Unlock()
		return
	}
	t.beginCompute()
	scale := float32(1)
	if c := t.m.Optimizer.ClipNorm; c > 0 {
		if norm := math.Sqrt(sh.GradNormSq()); norm > c {
			scale = float32(c / norm)
		}
	}
	err := sh.Step(t.m.Optimizer.LRAt(int(sh.StepCount())), scale)
	sh.ZeroGrad()
	t.endCompute()
	t.stepMu.Unlock()
	if err != nil {
		t.log.Error("inner step", "err", err)
	}
	t.mu.Lock()
	t.inner++
	t.mu.Unlock()
}

// maxOverlap is the share of a round's inner steps a holder may take while
// its previous round's deltas are being averaged: progress beyond it would
// land on an outer step that is more than half a round stale.
const maxOverlap = 0.5

// waitOverlap holds an inner step while the previous outer step is pending
// and this holder already took its share of overlapping steps (bounded by
// the hop timeout, after which it steps anyway).
func (t *Trainer) waitOverlap() {
	bound := max(1, int(maxOverlap*float64(t.m.Averaging.LocalSteps)))
	deadline := time.Now().Add(t.cfg.HopTimeout)
	t.mu.Lock()
	for t.pending && t.inner-t.pendingInner >= bound && time.Now().Before(deadline) {
		t.waitTimeout(deadline)
	}
	t.mu.Unlock()
}

// outerStep (local mode, DiLoCo): average the parameter deltas since the
// last outer step with the shard's holders and apply Nesterov momentum.
//
// With averaging.overlap the node keeps drawing and stepping while the
// deltas are averaged: the outer step then lands on the anchor and the
// progress made since the deltas were taken rides on top of it (it belongs
// to the next round's delta). The run's last round keeps no such progress,
// so holders end on the same averaged model.
func (t *Trainer) outerStep(ctx context.Context) error {
	overlap := t.m.Averaging.Overlap
	var sh engine.Shard
	var index int
	var round uint64
	if overlap {
		t.mu.Lock()
		sh, index, round = t.shard, t.index, t.epoch
		t.mu.Unlock()
	} else {
		sh, index, round = t.closeEpoch()
	}
	if sh == nil {
		t.reopen(nil, round)
		return nil
	}
	t.stepMu.Lock()
	t.mu.Lock()
	samples, inner := t.samples, t.inner
	if overlap {
		t.pending, t.pendingInner = true, inner
	}
	t.mu.Unlock()
	p := sh.Params()
	delta := make([]float32, len(p))
	for i := range p {
		delta[i] = t.anchor[i] - p[i]
	}
	var taken []float32 // the parameters the delta was taken from
	if overlap {
		taken = append([]float32(nil), p...)
	}
	// Some rounds also average the outer state (anchor and momentum),
	// which every holder keeps for itself: after a round that a holder
	// averaged alone or in part, their anchors differ and the same averaged
	// delta would keep them apart. Holders agree on these rounds by number;
	// the run's last one is among them, so holders end on one model.
	full := round%outerStateEvery == outerStateEvery-1 || round+1 >= uint64(t.totalEpochs())
	vec, key := append([]float32(nil), delta...), "delta"
	if full {
		vec, key = append(append(vec, t.anchor...), t.outerMom...), "outer"
	}
	t.stepMu.Unlock()
	start := time.Now()
	info := avgInfo{Round: round, GroupSize: 1, Mode: "local"}
	var outer []float32 // averaged anchor and momentum
	if len(t.holders(index, false)) > 0 {
		actx, cancel := context.WithTimeout(ctx, time.Duration(t.m.Averaging.TimeoutMS)*time.Millisecond)
		res, err := t.avg.Step(actx, t.avgKey(index, key), round, vec, math.Max(float64(samples), 1e-3), t.groupSize(index))
		cancel()
		if err == nil && finite(vec) {
			copy(delta, vec)
			if full {
				outer = vec[len(delta):]
			}
			info = avgInfo{Round: round, GroupSize: len(res.Members), Fraction: res.Fraction, Mode: string(res.Mode)}
		} else if err != nil && !errors.Is(err, averaging.ErrNoGroup) {
			t.log.Debug("outer averaging failed", "round", round, "err", err)
		}
	}
	info.Seconds = time.Since(start).Seconds()
	t.log.Debug("outer step", "round", round, "group", info.GroupSize, "mode", info.Mode, "seconds", info.Seconds)
	lr, mu := float32(t.m.Averaging.OuterLR), float32(t.m.Averaging.OuterMomentum)
	carry := taken != nil && round+1 < uint64(t.totalEpochs())
	t.stepMu.Lock()
	if outer != nil {
		n := len(t.anchor)
		copy(t.anchor, outer[:n])
		copy(t.outerMom, outer[n:])
	}
	p = sh.Params()
	for i := range p {
		t.outerMom[i] = mu*t.outerMom[i] + delta[i]
		t.anchor[i] -= lr * (delta[i] + mu*t.outerMom[i])
		if carry {
			p[i] = t.anchor[i] + (p[i] - taken[i])
		} else {
			p[i] = t.anchor[i]
		}
	}
	err := sh.Sync()
	t.mu.Lock()
	t.setLastAvg(info)
	t.mu.Unlock()
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

// evaluate runs the held-out set through the pipeline (first-shard nodes,
// once the run is finished) and publishes the accuracy.
func (t *Trainer) evaluate(ctx context.Context) {
	ev := t.src.Eval()
	if ev == nil || ev.Len == 0 {
		return
	}
	var correct, n int
	var lossSum float64
	bs := evalBatch
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
			res, err = t.process(ectx, sh, 0, epoch, pipeline.KindEval, b, nil, b.Targets)
			cancel()
			if err == nil {
				break
			}
			_ = sleepCtx(ctx, time.Second)
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
	t.log.Info("evaluation", "set", ev.Name, "samples", n, "accuracy", fmt.Sprintf("%.4f", acc), "loss", fmt.Sprintf("%.4f", lossSum/float64(n)))
}
