package trainer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/swarm/claims"
	"github.com/swarm-train/swarm/swarm/epochs"
	"github.com/swarm-train/swarm/swarm/progress"
	"github.com/swarm-train/swarm/swarm/statesync"
)

// defaultRate is the FLOP/s a node reports before it has measured itself.
const defaultRate = 1e9

// view is the claims view from the live records (this node's included).
func (t *Trainer) view(includeSelf bool) claims.View {
	v := claims.View{FLOPs: t.flops}
	self := t.h.ID().String()
	for _, r := range t.tracker.Live(t.clk.Now()) {
		if r.Shard < 0 || r.State == progress.StateDone || (!includeSelf && r.Peer == self) {
			continue
		}
		rate := r.Rate
		if rate <= 0 {
			rate = defaultRate
		}
		v.Holders = append(v.Holders, claims.Holder{Peer: r.Peer, Shard: r.Shard, Rate: rate})
	}
	return v
}

func (t *Trainer) chooseShard() int {
	// Only nodes that already hold a shard count; our own record says -1 until then.
	v := t.view(false)
	var hs []claims.Holder
	for _, h := range v.Holders {
		if h.Shard >= 0 {
			hs = append(hs, h)
		}
	}
	v.Holders = hs
	t.rngMu.Lock()
	defer t.rngMu.Unlock()
	return claims.ChooseReachable(v, t.rng, claims.ReachOf(t.h)) // not a shard it cannot train in
}

// join takes shard index: builds it, loads its state and goes online. The
// state comes from the shard's live holders (state sync); when none is
// alive, from the newest checkpoint this node or its peers keep
// (durable.go, epochs.Resume); from the run's initial state only when
// nobody ever had the shard. A shard it held is checkpointed before it
// moves.
func (t *Trainer) join(ctx context.Context, index int) error {
	sh, err := t.cfg.Engine.NewShard(t.m, index)
	if err != nil {
		return fmt.Errorf("trainer: build shard %d: %w", index, err)
	}
	t.mu.Lock()
	moving := t.shard != nil
	t.mu.Unlock()
	if moving {
		t.dur.wg.Wait()
		t.saveCheckpoint(fmt.Sprintf("moving to shard %d", index))
	}
	t.mu.Lock()
	old := t.shard
	t.shard, t.index, t.state = nil, index, progress.StateJoining
	t.samples, t.micro, t.inner, t.drawn = 0, 0, 0, 0
	t.trained = false
	t.mu.Unlock()
	if old != nil {
		t.stepMu.Lock()
		_ = old.Close()
		t.stepMu.Unlock()
	}
	t.gossip.Poke()
	t.log.Info("joining shard", "shard", index, "of", len(t.m.Shards))

	// The swarm's epoch as its holders corroborate it, never one peer's
	// claim (a record at the run's last epoch would finish this node).
	epoch := epochs.SwarmEpoch(t.tracker.Live(t.clk.Now()))
	nP, nO := len(sh.Params()), len(sh.OptState())
	own := t.ownCheckpoint(index, nP, nO)
	if own != nil {
		t.log.Info("found a checkpoint of the shard", "shard", index, "epoch", own.Epoch, "step", own.Step)
	}
	start := t.clk.Now()
	t.stage.resetKept() // held-out inputs of the shard it held
	fromOwn := false
	load := func(snap *statesync.Snapshot) error {
		copy(sh.Params(), snap.Params)
		copy(sh.OptState(), snap.Opt)
		sh.SetStepCount(snap.Step)
		if err := sh.Sync(); err != nil {
			_ = sh.Close()
			return fmt.Errorf("trainer: load state: %w", err)
		}
		epoch = snap.Epoch
		return nil
	}
	for attempt := 1; ; attempt++ {
		live := t.trustedDonors(t.holders(index, false))
		if len(live) == 0 {
			snap, why, mine, err := t.resumeState(ctx, sh, index, own)
			if errors.Is(err, errLiveHolder) {
				continue
			}
			if err != nil {
				_ = sh.Close()
				return err
			}
			if snap == nil {
				t.log.Info("no peer ever had the shard; starting from the run's initial weights", "shard", index, "epoch", epoch, "why", why)
				break
			}
			if err := load(snap); err != nil {
				return err
			}
			fromOwn = mine
			t.log.Info("restored the shard from a checkpoint", "shard", index, "epoch", epoch, "from", why,
				"took", t.clk.Since(start).Round(time.Millisecond))
			break
		}
		if own != nil {
			in := epochs.ResumeInput{Own: &epochs.StateOffer{Epoch: own.Epoch}, Live: true, LiveEpoch: t.liveEpoch(index), MaxEpoch: uint64(t.totalEpochs())}
			if c := epochs.Resume(in); c.From == epochs.FromOwn {
				if err := load(ckptSnapshot(own)); err != nil {
					return err
				}
				fromOwn = true
				t.log.Info("restored the shard from a checkpoint", "shard", index, "epoch", epoch, "from", "own checkpoint: "+c.Why)
				break
			}
		}
		donors := t.trustedDonors(t.donors(ctx, index))
		last := time.Time{}
		snap, err := t.fetchAgreed(ctx, sh, index, donors, attempt > settleAttempts, func(done, total, n int) {
			if t.clk.Since(last) > 500*time.Millisecond || done == total {
				last = t.clk.Now()
				t.log.Info("state sync", "shard", index, "progress", progressBar(done, total), "donors", n)
			}
		})
		if err == nil {
			t.meters.fetchedState(snap)
			if err := load(snap); err != nil {
				return err
			}
			t.log.Info("state synced", "shard", index, "epoch", epoch, "floats", nP+nO, "donors", snap.Donors,
				"took", t.clk.Since(start).Round(time.Millisecond))
			break
		}
		if ctx.Err() != nil {
			_ = sh.Close()
			return ctx.Err()
		}
		if !errors.Is(err, statesync.ErrNoDonor) && !errors.Is(err, statesync.ErrNoQuorum) && !errors.Is(err, statesync.ErrHeldOut) {
			_ = sh.Close()
			return err
		}
		// While live holders of the shard exist, retry rather than fall
		// back to a checkpoint; unless every state they offered did worse
		// on held-out data than the initial weights, attempt after
		// attempt: then the initial weights are the better state.
		if errors.Is(err, statesync.ErrHeldOut) && attempt >= settleAttempts {
			t.log.Warn("every holder's state does worse on held-out data than the run's initial state; starting from it", "shard", index, "attempts", attempt, "err", err)
			break
		}
		t.log.Warn("state sync failed; retrying with the shard's holders", "shard", index, "attempt", attempt, "err", err)
		if err := clock.Sleep(ctx, t.clk, time.Duration(min(attempt, 5))*time.Second); err != nil {
			_ = sh.Close()
			return err
		}
		epoch = epochs.SwarmEpoch(t.tracker.Live(t.clk.Now()))
	}
	t.noteLoaded(index, epoch, fromOwn)
	// stepMu too: snapshots and the outer step read the anchor under it.
	t.stepMu.Lock()
	t.mu.Lock()
	t.shard = sh
	t.epoch = epoch
	t.heldEpoch = epoch
	t.state = progress.StateOnline
	if t.finished(t.epoch) {
		t.state = progress.StateDone
		t.done = true
	}
	t.movedAt = t.clk.Now()
	if t.m.Averaging.Mode == "local" {
		t.anchor = append([]float32(nil), sh.Params()...)
		t.outerMom = make([]float32, len(t.anchor))
		t.outerSum, t.outerAt = t.outerState(), epoch
		t.deltaStale = true // a new shard: nothing of the old one is owed
	}
	t.cond.Broadcast()
	t.mu.Unlock()
	t.stepMu.Unlock()
	t.gossip.Poke()
	return nil
}

// liveEpoch is the highest epoch among the shard's online holders.
func (t *Trainer) liveEpoch(index int) uint64 {
	var e uint64
	for _, r := range t.tracker.Live(t.clk.Now()) {
		if r.Shard == index && r.State == progress.StateOnline && r.Peer != t.h.ID().String() {
			e = max(e, r.Epoch)
		}
	}
	return e
}

func progressBar(done, total int) string {
	const w = 20
	n := 0
	if total > 0 {
		n = done * w / total
	}
	bar := make([]byte, w)
	for i := range bar {
		bar[i] = '.'
		if i < n {
			bar[i] = '#'
		}
	}
	return fmt.Sprintf("[%s] %3d%%", bar, done*100/max(total, 1))
}

// donors are the peers holding shard index: from progress records and from
// the DHT's provider records for the shard's CID.
func (t *Trainer) donors(ctx context.Context, index int) []peer.ID {
	seen := map[peer.ID]bool{}
	var out []peer.ID
	for _, p := range t.holders(index, false) {
		seen[p] = true
		out = append(out, p)
	}
	if t.cfg.FindProviders != nil {
		if c, err := t.m.ShardID(index); err == nil {
			fctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			ais, _ := t.cfg.FindProviders(fctx, c)
			cancel()
			for _, ai := range ais {
				if !seen[ai.ID] && ai.ID != t.h.ID() {
					t.h.Peerstore().AddAddrs(ai.ID, ai.Addrs, time.Hour)
					seen[ai.ID] = true
					out = append(out, ai.ID)
				}
			}
		}
	}
	return out
}

// holders are the live peers other than this node holding shard index;
// online only, or joining too.
func (t *Trainer) holders(index int, withJoining bool) []peer.ID {
	var out []peer.ID
	self := t.h.ID().String()
	for _, r := range t.tracker.Live(t.clk.Now()) {
		if r.Shard != index || r.Peer == self {
			continue
		}
		if r.State == progress.StateJoining && !withJoining {
			continue
		}
		p, err := peer.Decode(r.Peer)
		if err == nil {
			out = append(out, p)
		}
	}
	return out
}

// announceLoop refreshes this node's DHT provider record for its shard.
func (t *Trainer) announceLoop(ctx context.Context) {
	if t.cfg.Announce == nil {
		return
	}
	last := -1
	var lastAt time.Time
	for {
		t.mu.Lock()
		idx := t.index
		t.mu.Unlock()
		if idx >= 0 && (idx != last || t.clk.Since(lastAt) > 5*time.Minute) {
			if c, err := t.m.ShardID(idx); err == nil {
				actx, cancel := context.WithTimeout(ctx, 30*time.Second)
				err := t.cfg.Announce(actx, c)
				cancel()
				if err == nil {
					last, lastAt = idx, t.clk.Now()
				} else {
					t.log.Debug("shard announce failed", "shard", idx, "err", err)
				}
			}
		}
		if clock.Sleep(ctx, t.clk, 2*time.Second) != nil {
			return
		}
	}
}

// rebalanceLoop moves this node to another shard when the plan computed
// from the shared view names it.
func (t *Trainer) rebalanceLoop(ctx context.Context) {
	every := t.cfg.RebalanceEvery
	for {
		if clock.Sleep(ctx, t.clk, every/2+t.randDur(every)) != nil {
			return
		}
		t.mu.Lock()
		may := t.core.MayRebalance(t.inputLocked(), t.movedAt, every)
		idx := t.index
		t.mu.Unlock()
		if !may {
			continue
		}
		v := t.view(true)
		// Nodes agree on the round through their clocks (the wall clock:
		// every node computes the same plan in the same round).
		round := uint64(t.clk.Now().Unix()) / uint64(max(every/time.Second, 1))
		mv, ok := claims.Plan(v, claims.DefaultThreshold, round)
		if !ok || mv.Peer != t.h.ID().String() || mv.From != idx {
			continue
		}
		t.log.Info("rebalancing: moving to a weaker shard", "from", mv.From, "to", mv.To,
			"weakest_before", fmt.Sprintf("%.1f/s", mv.OldMin), "weakest_after", fmt.Sprintf("%.1f/s", mv.NewMin))
		if err := t.join(ctx, mv.To); err != nil {
			t.log.Error("rebalancing failed", "err", err)
			return
		}
	}
}

// snapshot serves state sync: a copy of the shard's state.
func (t *Trainer) snapshot(index int) (*statesync.Snapshot, error) {
	t.mu.Lock()
	sh, idx, st, epoch := t.shard, t.index, t.state, t.epoch
	t.mu.Unlock()
	if sh == nil || idx != index || st == progress.StateJoining {
		return nil, fmt.Errorf("this node does not hold shard %d", index)
	}
	t.stepMu.Lock()
	defer t.stepMu.Unlock()
	t.mu.Lock()
	ok := t.shard == sh
	epoch = t.servedEpochLocked()
	t.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("this node does not hold shard %d", index)
	}
	params := sh.Params()
	if t.m.Averaging.Mode == "local" && t.anchor != nil {
		params = t.anchor // joiners start from the last outer state
	}
	if t.faults[FaultDonor] {
		return &statesync.Snapshot{Shard: index, Epoch: min(epoch+1, uint64(t.totalEpochs())), Step: sh.StepCount() + 1,
			Params: garbage(params), Opt: garbage(sh.OptState())}, nil
	}
	return &statesync.Snapshot{Shard: index, Epoch: epoch, Step: sh.StepCount(),
		Params: append([]float32(nil), params...), Opt: append([]float32(nil), sh.OptState()...)}, nil
}

// wantState is what a donor of shard index must offer: the layout's sizes
// and no epoch past the run's last.
func (t *Trainer) wantState(index, nParams, nOpt int) statesync.Want {
	return statesync.Want{Shard: index, Params: nParams, Opt: nOpt, MaxEpoch: uint64(t.totalEpochs())}
}

// recordLimits are what the run allows in a peer's progress record: its
// shards, its epochs, and samples within a margin of the target batch (per
// outer round in local mode).
// It reads only the manifest (callers may hold t.mu).
func (t *Trainer) recordLimits() progress.Limits {
	n := 2 * t.m.Training.TargetBatch
	if !t.sync() {
		n *= 2 * max(1, t.m.Averaging.LocalSteps, t.m.Averaging.MaxLocalSteps)
	}
	return progress.Limits{Shards: len(t.m.Shards), MaxSamples: n, MaxEpoch: uint64(t.totalEpochs())}
}

// stateEpoch is the epoch of the state snapshot would copy of shard index,
// and whether this node holds it (statesync freezes once per epoch).
func (t *Trainer) stateEpoch(index int) (uint64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.servedEpochLocked(), t.shard != nil && t.index == index
}

// servedEpochLocked is the epoch a snapshot of the shard is labelled with
// (t.mu held): the open epoch, or with delayed updates the epoch the
// parameters belong to, one behind the open epoch while a round is in
// flight (swarm/epochs, delayed.go).
func (t *Trainer) servedEpochLocked() uint64 {
	if t.epochsCfg.Lag() > 0 {
		return t.heldEpoch
	}
	return t.epoch
}

// averagingPeers are the candidates for an averaging key: the holders of
// this node's shard.
func (t *Trainer) averagingPeers(ctx context.Context, key string) []peer.ID {
	t.mu.Lock()
	idx := t.index
	t.mu.Unlock()
	return t.holders(idx, false)
}
