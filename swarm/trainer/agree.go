package trainer

import (
	"context"
	"errors"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/swarm/epochs"
	"github.com/swarm-train/swarm/swarm/statesync"
)

// State sync by agreement. A node installs a snapshot that at least two
// donors offer (the same content hash). A node without trained state on the
// shard (it just joined it and holds the run's initial weights, or a copy
// it synced) may also take one that a single donor offers, at an epoch the
// swarm corroborates; a node with trained state never does: there is no
// held-out check of a lone donor's state yet, and its own state is better
// than one peer's word. A donor whose chunks fail their hashes or who
// stalls is banned (guard) and never asked again in this run.

// stateQuorum is the donors that must offer the same snapshot.
const stateQuorum = 2

// Reasons for bans of state-sync donors (guard).
const (
	banChunk = "statesync-chunk"
	banStall = "statesync-stall"
)

// maxDistrusted bounds the donors remembered as banned for the run.
const maxDistrusted = 4096

// joinAttempts: a joiner that holders of its shard fail to serve retries
// this many times (a second apart) before it starts from the run's initial
// state, and says so.
const joinAttempts = 8

// badDonor bans p for the run (a failed chunk or a stall in state sync).
func (t *Trainer) badDonor(p peer.ID, err error) {
	reason := banChunk
	if statesync.Stalled(err) {
		reason = banStall
	}
	t.mu.Lock()
	if t.distrusted == nil {
		t.distrusted = map[peer.ID]bool{}
	}
	if len(t.distrusted) < maxDistrusted {
		t.distrusted[p] = true
	}
	t.mu.Unlock()
	t.cfg.Refusals.BanFor(p, reason, err)
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

// fetchAgreed downloads shard index's state from donors: one that
// stateQuorum of them offer; failing that, when single (the node has no
// trained state on the shard), one a single donor offers at an epoch no
// later than one past the swarm's corroborated epoch.
func (t *Trainer) fetchAgreed(ctx context.Context, index, nP, nO int, donors []peer.ID, single bool, progress statesync.Progress) (*statesync.Snapshot, error) {
	donors = t.trustedDonors(donors)
	want := t.wantState(index, nP, nO)
	want.Quorum = stateQuorum
	want.Bad = t.badDonor
	snap, err := statesync.Fetch(ctx, t.h, donors, want, 10*time.Second, progress)
	if !errors.Is(err, statesync.ErrNoQuorum) {
		return snap, err
	}
	if !single {
		t.log.Info("not installing a state only one donor offers: this node has trained state", "shard", index, "err", err)
		return nil, err
	}
	want.Quorum = 1
	want.MaxEpoch = min(want.MaxEpoch, epochs.SwarmEpoch(t.tracker.Live(t.clk.Now()))+1)
	snap, err = statesync.Fetch(ctx, t.h, t.trustedDonors(donors), want, 10*time.Second, progress)
	if err == nil {
		t.log.Info("state offered by a single donor taken: this node had no trained state on the shard", "shard", index, "epoch", snap.Epoch)
	}
	return snap, err
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
		if t.distrusted == nil {
			t.distrusted = map[peer.ID]bool{}
		}
		seen := t.distrusted[p]
		if !seen && len(t.distrusted) < maxDistrusted {
			t.distrusted[p] = true
		}
		t.mu.Unlock()
		if !seen {
			t.cfg.Refusals.BanFor(p, v.Rule, errors.New(v.Evidence))
		}
		t.tracker.Forget(v.Peer)
	}
}
