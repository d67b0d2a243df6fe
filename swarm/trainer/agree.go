package trainer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/averaging"
	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/swarm/epochs"
	"github.com/swarm-train/swarm/swarm/progress"
	"github.com/swarm-train/swarm/swarm/statesync"
)

// State sync by agreement. A node installs a snapshot that at least two
// donors offer (the same content hash). A state that no two donors offer
// alike, at an epoch the swarm corroborates, must pass the held-out check
// (heldout.go): its loss on held-out data no worse than the node's own
// state's by the run's margin. Where the node has no held-out data (a later
// shard that has served nothing yet), only a node without trained state
// takes such a state, from the shard's only other holder (or, after the
// donors disagreed for several attempts, the newest at the corroborated
// epoch). A donor whose chunks fail their hashes or who stalls is banned
// (guard) and never asked again in this run.

// stateQuorum is the donors that must offer the same snapshot.
const stateQuorum = 2

// Reasons for bans of state-sync donors (guard).
const (
	banChunk   = "statesync-chunk"
	banStall   = "statesync-stall"
	banHeldOut = "statesync-held-out"
)

// maxDistrusted bounds the donors remembered as banned for the run.
const maxDistrusted = 4096

// settleAttempts: a joiner without held-out data whose donors disagree
// retries this many times before it takes the newest state offered at the
// corroborated epoch (fetchSingle).
const settleAttempts = 5

// badDonor bans p for the run (a failed chunk or a stall in state sync).
func (t *Trainer) badDonor(p peer.ID, err error) {
	reason := banChunk
	if statesync.Stalled(err) {
		reason = banStall
	}
	t.distrust(p, reason, err)
}

// distrust bans p for the run: never a donor again.
func (t *Trainer) distrust(p peer.ID, reason string, err error) {
	t.mu.Lock()
	t.distrustLocked(p)
	t.mu.Unlock()
	t.cfg.Refusals.BanFor(p, reason, err)
}

// distrustLocked notes p as banned for the run (t.mu held) and reports
// whether it was not already.
func (t *Trainer) distrustLocked(p peer.ID) bool {
	if t.distrusted[p] {
		return false
	}
	if t.distrusted == nil {
		t.distrusted = map[peer.ID]bool{}
	}
	if len(t.distrusted) < maxDistrusted {
		t.distrusted[p] = true
	}
	t.banned = append(t.banned, p.String())
	if len(t.banned) > progress.MaxBanned {
		t.banned = t.banned[len(t.banned)-progress.MaxBanned:]
	}
	return true
}

// trustedDonors drops the donors banned in this run.
func (t *Trainer) trustedDonors(donors []peer.ID) []peer.ID {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []peer.ID
	for _, p := range donors {
		if !t.distrusted[p] && !t.cfg.Refusals.Banned(p) {
			out = append(out, p)
		}
	}
	return out
}

// fetchAgreed downloads shard index's state from donors (without loading
// it): a state stateQuorum of them offer alike; failing that, one that a
// single donor offers (fetchSingle). sh is the node's own state of the
// shard, the reference of the held-out check.
func (t *Trainer) fetchAgreed(ctx context.Context, sh engine.Shard, index int, donors []peer.ID, settle bool, progress statesync.Progress) (*statesync.Snapshot, error) {
	donors = t.trustedDonors(donors)
	want := t.wantState(index, len(sh.Params()), len(sh.OptState()))
	want.Quorum = stateQuorum
	want.Bad = t.badDonor
	snap, err := statesync.Fetch(ctx, t.h, donors, want, 10*time.Second, progress)
	if err == nil {
		t.checkOthers(ctx, index, snap, want)
	}
	if !errors.Is(err, statesync.ErrNoQuorum) {
		return snap, err
	}
	return t.fetchSingle(ctx, sh, index, t.trustedDonors(donors), want, settle, err)
}

// checkOthers checks the states that single donors offered beside the one
// the others agree on, at the same or a later epoch, on held-out data
// (where the node has some): a donor whose state does more than
// statesync.ContradictGap worse than the agreed one is shown to lie, and
// banned (statesync-held-out).
func (t *Trainer) checkOthers(ctx context.Context, index int, agreed *statesync.Snapshot, want statesync.Want) {
	var suspects []peer.ID
	for _, o := range agreed.Others {
		if o.Epoch >= agreed.Epoch {
			suspects = append(suspects, o.Peer)
		}
	}
	if len(suspects) == 0 {
		return
	}
	data := t.heldOutData(index)
	if len(data) == 0 {
		return
	}
	ref, err := t.snapshotLoss(ctx, index, agreed, data)
	if err != nil {
		return
	}
	want.Quorum = 1
	for _, p := range suspects[:min(len(suspects), maxCandidates)] {
		snap, err := statesync.Fetch(ctx, t.h, []peer.ID{p}, want, 10*time.Second, nil)
		if err != nil {
			continue
		}
		loss, err := t.snapshotLoss(ctx, index, snap, data)
		if err != nil {
			continue
		}
		if err := statesync.Contradicts(ref, loss); err != nil {
			t.distrust(p, banHeldOut, fmt.Errorf("state of shard %d at epoch %d, the agreed one at %d: %w", index, snap.Epoch, agreed.Epoch, err))
		}
	}
}

// maxCandidates bounds the single donors' states one sync downloads and
// checks.
const maxCandidates = 4

// fetchSingle takes a state that no two donors offer alike, at an epoch no
// later than one past the swarm's corroborated epoch. With held-out data
// (heldout.go) it downloads each donor's state (maxCandidates at most) and
// takes the one with the lowest held-out loss if that passes
// statesync.HeldOut against sh; a failed check is refused and counted
// against the donor. Without held-out data (or when it cannot be evaluated:
// the next stages are not online or paused) it takes a state only when the
// node has no trained state and either a single donor offers one (the
// shard's only other holder) or, when settle (the donors disagreed for
// several attempts), the newest offered at the corroborated epoch.
func (t *Trainer) fetchSingle(ctx context.Context, sh engine.Shard, index int, donors []peer.ID, want statesync.Want, settle bool, noQuorum error) (*statesync.Snapshot, error) {
	live := t.tracker.Live(t.clk.Now())
	swarm := epochs.SwarmEpoch(live)
	want.Quorum = 1
	runMax := want.MaxEpoch
	want.MaxEpoch = min(want.MaxEpoch, swarm+1)
	t.mu.Lock()
	trained := t.trained
	sole, isSole := epochs.SoleHolder(live)
	isSole = isSole && !trained && len(donors) == 1 && donors[0].String() == sole.Peer
	var limit uint64
	if isSole {
		limit, isSole = t.soleWatch.Observe(sole, t.clk.Now())
	}
	t.mu.Unlock()
	if isSole && limit > want.MaxEpoch {
		// The run's only holder, watched as it advanced: nothing can
		// corroborate its epoch, and a joiner held to SwarmEpoch could
		// never join it (epochs.SoleWatch).
		want.MaxEpoch = min(runMax, limit)
		t.log.Info("the shard's only holder is the run's only holder; taking its state up to the epoch it was seen to reach",
			"shard", index, "donor", sole.Peer, "epoch", sole.Epoch, "max_epoch", want.MaxEpoch)
	}
	data := t.heldOutData(index)
	var own float64
	if len(data) > 0 {
		// The evaluation needs the next stages: none online, or paused,
		// and the node cannot check (a joiner must not wait on them).
		var err error
		if own, err = t.heldOutLoss(ctx, sh, index, data); err != nil {
			t.log.Info("cannot evaluate held-out data", "shard", index, "err", err)
			data = nil
		}
	}
	if len(data) == 0 {
		if trained || len(donors) > 1 && !settle {
			t.log.Info("not installing a state that no two donors offer alike: no held-out data to check it on",
				"shard", index, "donors", len(donors), "trained", trained, "err", noQuorum)
			return nil, noQuorum
		}
		if len(donors) > 1 {
			want.MaxEpoch = min(want.MaxEpoch, swarm)
		}
		snap, err := statesync.Fetch(ctx, t.h, donors, want, 10*time.Second, nil)
		if err == nil {
			t.log.Info("state offered by a single donor taken: this node had no trained state on the shard", "shard", index, "epoch", snap.Epoch, "donor", snap.From)
		}
		return snap, err
	}
	var best *statesync.Snapshot
	var bestLoss float64
	errs := []error{statesync.ErrNoDonor}
	for _, p := range donors[:min(len(donors), maxCandidates)] {
		snap, err := statesync.Fetch(ctx, t.h, []peer.ID{p}, want, 10*time.Second, nil)
		if err == nil {
			var loss float64
			if loss, err = t.snapshotLoss(ctx, index, snap, data); err == nil && (best == nil || loss < bestLoss) {
				best, bestLoss = snap, loss
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("donor %s: %w", p, err))
		}
	}
	if best == nil {
		return nil, errors.Join(errs...)
	}
	err := statesync.HeldOut(own, bestLoss, t.m.Training.LossMargin())
	if err == nil && best.Epoch > swarm+1 && !(bestLoss < own) {
		// Taken beyond the corroborated epoch only on the only holder's
		// word (SoleWatch): a state it trained for epochs does better
		// than this node's untrained one.
		err = fmt.Errorf("%w: held-out loss %.4f at epoch %d, no better than the initial state's %.4f", statesync.ErrHeldOut, bestLoss, best.Epoch, own)
	}
	if err != nil {
		for _, p := range best.From {
			// Counted without a strike: a state that does worse is no
			// proof of a lie (an honest holder may hold a state that
			// diverged), and a joiner retries it.
			t.cfg.Refusals.Count(p, protoState, whyHeldOut, fmt.Errorf("state of shard %d at epoch %d: %w", index, best.Epoch, err))
		}
		return nil, err
	}
	t.log.Info("state offered by a single donor passed the held-out check", "shard", index, "epoch", best.Epoch, "donor", best.From,
		"loss", fmt.Sprintf("%.4f", bestLoss), "own_loss", fmt.Sprintf("%.4f", own), "samples", heldOutCount(data))
	return best, nil
}

// Refusals of state sync (guard).
const (
	protoState = "statesync"
	whyHeldOut = "held-out"
)

func heldOutCount(data []keptInput) int {
	n := 0
	for _, d := range data {
		n += d.n
	}
	return n
}

// ban carries out the core's verdicts (swarm/epochs): it bans each peer
// once (guard.BanFor logs the rule and the evidence and counts the ban),
// never asks it for state again, and drops its record so that it stops
// counting at once.
func (t *Trainer) ban(verdicts []epochs.Verdict) {
	for _, v := range verdicts {
		p, err := peer.Decode(v.Peer)
		if err != nil {
			continue
		}
		t.mu.Lock()
		fresh := t.distrustLocked(p)
		epoch := t.epoch
		t.mu.Unlock()
		if fresh {
			t.cfg.Refusals.BanFor(p, v.Rule, fmt.Errorf("%s (this node at epoch %d)", v.Evidence, epoch))
		}
		t.tracker.Forget(v.Peer)
	}
}

// reducerLied is the averager's word that a reducer returned a part it
// could not have computed (it has banned it already): never a donor again
// in the run either.
func (t *Trainer) reducerLied(ac averaging.Accusation) {
	t.mu.Lock()
	t.distrustLocked(ac.Reducer)
	t.mu.Unlock()
}
