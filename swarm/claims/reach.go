package claims

import "math/rand/v2"

// Reacher is what knows whether this node can train with a peer: reach it
// directly or through a training relay (the node's run host implements it).
type Reacher interface {
	CanTrainWith(peer string) bool
}

// ReachOf returns r's CanTrainWith when r is a Reacher, nil otherwise
// (every peer counts as reachable).
func ReachOf(r any) func(peer string) bool {
	if rr, ok := r.(Reacher); ok {
		return rr.CanTrainWith
	}
	return nil
}

// Trainable reports, per shard, whether a node that reaches the peers
// reach accepts can train in it: for the shard itself and its neighbouring
// stages, each either has no holder yet or has one the node reaches (a
// holder of its own shard to average with and load the state from, one of
// each neighbour for the pipeline). reach nil accepts every peer.
func Trainable(v View, reach func(peer string) bool) []bool {
	n := len(v.FLOPs)
	held := make([]bool, n)
	reached := make([]bool, n)
	for _, h := range v.Holders {
		if h.Shard < 0 || h.Shard >= n {
			continue
		}
		held[h.Shard] = true
		if reach == nil || reach(h.Peer) {
			reached[h.Shard] = true
		}
	}
	out := make([]bool, n)
	for k := range out {
		out[k] = true
		for j := k - 1; j <= k+1; j++ {
			if j >= 0 && j < n && held[j] && !reached[j] {
				out[k] = false
			}
		}
	}
	return out
}

// ChooseReachable is Choose among the shards the node can train in
// (Trainable); when it can train in none, Choose's pick (holding a shard
// beats holding none, and the peers may become reachable).
func ChooseReachable(v View, rng *rand.Rand, reach func(peer string) bool) int {
	if reach == nil {
		return Choose(v, rng)
	}
	if k := chooseAmong(v, rng, Trainable(v, reach)); k >= 0 {
		return k
	}
	return Choose(v, rng)
}
