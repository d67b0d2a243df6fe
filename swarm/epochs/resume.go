package epochs

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/swarm-train/swarm/swarm/progress"
)

// Resume decides where a node that takes a shard gets the shard's state
// from: the live holders (state sync, as a joiner always did), its own
// checkpoint, the checkpoints other peers keep of the shard, or the run's
// initial weights, only when nobody ever had the shard.
//
// A whole swarm that restarts comes back with every node's checkpoint at
// about the same epoch E: each returning node restores its own and goes
// online at E, and the records of two holders at E corroborate E
// (SwarmEpoch) as they did before the stop. What a peer offers is believed
// as the trust rules believe a record: a state that two peers offer alike
// (the same content hash) at any epoch the run allows; a state one peer
// alone offers only up to one epoch past what the node can vouch for
// itself (the swarm's corroborated epoch, its own checkpoint). A newer
// lone offer is waited on (its peers may return, or the swarm corroborate
// its epoch) until Settle, and then taken only when nothing believable is
// offered at all.

// StateOffer is one state of the shard on offer: a peer's checkpoint, or
// (Own) this node's.
type StateOffer struct {
	Peer    string
	Epoch   uint64
	Content [32]byte
}

// ResumeInput is what the node knows when it takes a shard.
type ResumeInput struct {
	// Own is this node's newest checkpoint of the shard that fits the run
	// (nil: none).
	Own *StateOffer
	// Live: online holders of the shard exist; LiveEpoch is the highest
	// epoch among them.
	Live      bool
	LiveEpoch uint64
	// Offers are the checkpoints peers offer of the shard.
	Offers []StateOffer
	// Swarm is the swarm's corroborated epoch (SwarmEpoch).
	Swarm uint64
	// MaxEpoch is the run's last epoch.
	MaxEpoch uint64
	// Settle: the node waited on lone offers for long enough.
	Settle bool
}

// ResumeFrom names where the state comes from.
type ResumeFrom uint8

const (
	// FromSync: state sync from the live holders (agree.go's rules).
	FromSync ResumeFrom = iota
	// FromOwn: this node's checkpoint.
	FromOwn
	// FromPeers: the checkpoint Donors offer (Content).
	FromPeers
	// FromInit: the run's initial weights: nobody has the shard.
	FromInit
	// FromWait: a newer state than any believable one is offered by a
	// lone peer; ask again shortly.
	FromWait
)

var fromNames = [...]string{"sync", "own checkpoint", "peers' checkpoint", "initial weights", "wait"}

func (f ResumeFrom) String() string {
	if int(f) < len(fromNames) {
		return fromNames[f]
	}
	return "unknown"
}

// ResumeChoice is Resume's answer.
type ResumeChoice struct {
	From    ResumeFrom
	Epoch   uint64   // of the state chosen (FromOwn, FromPeers)
	Content [32]byte // FromPeers: the state to fetch
	Donors  []string // FromPeers: the peers offering it
	Why     string
}

// Resume chooses where the shard's state comes from. It is a pure function
// of its input.
func Resume(in ResumeInput) ResumeChoice {
	if in.Live {
		// Live holders ahead: state sync. Level with them (holders of a
		// swarm that stopped together, coming back one by one), its own
		// state is theirs and needs no download; ahead of them, they
		// catch up from this node (holdersAhead).
		if in.Own != nil && in.Own.Epoch >= in.LiveEpoch && in.Own.Epoch <= in.MaxEpoch {
			return ResumeChoice{From: FromOwn, Epoch: in.Own.Epoch,
				Why: fmt.Sprintf("own checkpoint at epoch %d, the live holders at %d", in.Own.Epoch, in.LiveEpoch)}
		}
		return ResumeChoice{From: FromSync, Why: fmt.Sprintf("live holders at epoch %d", in.LiveEpoch)}
	}
	type group struct {
		epoch   uint64
		content [32]byte
		peers   []string
	}
	var groups []*group
	for _, o := range in.Offers {
		if o.Epoch > in.MaxEpoch || o.Peer == "" {
			continue
		}
		i := slices.IndexFunc(groups, func(g *group) bool { return g.content == o.Content })
		if i < 0 {
			groups = append(groups, &group{epoch: o.Epoch, content: o.Content})
			i = len(groups) - 1
		}
		if !slices.Contains(groups[i].peers, o.Peer) {
			groups[i].peers = append(groups[i].peers, o.Peer)
		}
	}
	// Newest first; among equals, more peers, then the content hash (so
	// that every node choosing from the same offers chooses alike).
	slices.SortFunc(groups, func(a, b *group) int {
		if c := cmp.Compare(b.epoch, a.epoch); c != 0 {
			return c
		}
		if c := cmp.Compare(len(b.peers), len(a.peers)); c != 0 {
			return c
		}
		return slices.Compare(a.content[:], b.content[:])
	})
	vouched := in.Swarm
	own := in.Own != nil && in.Own.Epoch <= in.MaxEpoch
	if own {
		vouched = max(vouched, in.Own.Epoch)
	}
	believable := func(g *group) bool { return len(g.peers) >= 2 || g.epoch <= vouched+1 }
	var best, lone *group
	for _, g := range groups {
		if believable(g) {
			best = g
			break
		}
		if lone == nil {
			lone = g
		}
	}
	peers := func(g *group, why string) ResumeChoice {
		return ResumeChoice{From: FromPeers, Epoch: g.epoch, Content: g.content, Donors: append([]string(nil), g.peers...),
			Why: fmt.Sprintf("%s at epoch %d offered by %d peer(s)", why, g.epoch, len(g.peers))}
	}
	switch {
	case lone != nil && !in.Settle && (best == nil || lone.epoch > best.epoch) && (!own || lone.epoch > in.Own.Epoch):
		return ResumeChoice{From: FromWait, Why: fmt.Sprintf("a lone peer offers epoch %d, more than one past %d", lone.epoch, vouched)}
	case own && (best == nil || in.Own.Epoch >= best.epoch):
		return ResumeChoice{From: FromOwn, Epoch: in.Own.Epoch, Why: fmt.Sprintf("own checkpoint at epoch %d, the newest", in.Own.Epoch)}
	case best != nil:
		return peers(best, "checkpoint")
	case lone != nil && !own:
		return peers(lone, "after waiting, the only checkpoint")
	case own:
		return ResumeChoice{From: FromOwn, Epoch: in.Own.Epoch, Why: fmt.Sprintf("own checkpoint at epoch %d", in.Own.Epoch)}
	}
	return ResumeChoice{From: FromInit, Why: "no peer has ever had the shard"}
}

// Unheld lists the shards (of n) that no live record shows a holder of,
// online or done: a micro-batch cannot pass through the pipeline while one
// is missing, and the swarm waits for a node to take it.
func Unheld(recs []progress.Record, n int) []int {
	held := make([]bool, n)
	for _, r := range recs {
		if holding(r) && r.Shard < n {
			held[r.Shard] = true
		}
	}
	var out []int
	for i, h := range held {
		if !h {
			out = append(out, i)
		}
	}
	return out
}
