// Package claims decides which shard of a run a node holds: the choice of a
// new node and the periodic rebalancing of a running one. It is pure logic
// over a view of the swarm (who holds what, at which speed); the caller
// gathers the view and carries out the decision.
//
// Throughput is kept in shard-independent units, FLOP/s, so a node's worth on
// another shard can be computed: a shard's throughput in samples/s is the sum
// of its holders' FLOP/s divided by the shard's FLOPs per sample.
package claims

import (
	"hash/fnv"
	"math"
	"math/rand/v2"
	"sort"
)

// Redundancy is the number of holders every shard should have before
// throughput decides: below it, a shard is one or two failures away from
// stopping the pipeline, whatever its speed.
const Redundancy = 2

// DefaultThreshold is the hysteresis of rebalancing: a move happens only if
// the weakest shard's throughput before divided by after is below it.
const DefaultThreshold = 0.75

// Holder is one node of the view.
type Holder struct {
	Peer  string  // peer ID (or any unique, stable name)
	Shard int     // shard it holds
	Rate  float64 // compute rate in FLOP/s (measured, or estimated before the first measurement)
}

// View is what a node knows of its run: the FLOPs per sample of every shard
// and the holders, itself included.
type View struct {
	FLOPs   []float64 // FLOPs per sample of each shard (len = number of shards)
	Holders []Holder
}

// Totals returns each shard's throughput in samples/s and number of holders.
// Holders naming a shard outside the run are ignored.
func (v View) Totals() (samplesPerSec []float64, holders []int) {
	n := len(v.FLOPs)
	samplesPerSec = make([]float64, n)
	holders = make([]int, n)
	for _, h := range v.Holders {
		if h.Shard < 0 || h.Shard >= n || v.FLOPs[h.Shard] <= 0 {
			continue
		}
		rate := h.Rate
		if !(rate > 0) || math.IsInf(rate, 0) {
			rate = 0
		}
		samplesPerSec[h.Shard] += rate / v.FLOPs[h.Shard]
		holders[h.Shard]++
	}
	return samplesPerSec, holders
}

// Choose returns the shard a new node should take: an uncovered one if any,
// else the one with the least total throughput; ties (within 1%) are broken
// at random so simultaneous joiners spread out.
func Choose(v View, rng *rand.Rand) int {
	return chooseAmong(v, rng, nil)
}

// chooseAmong is Choose over the shards allowed says (all when nil); -1
// when none is.
func chooseAmong(v View, rng *rand.Rand, allowed []bool) int {
	tp, cnt := v.Totals()
	if len(tp) == 0 {
		return -1
	}
	// Fewest holders first (up to Redundancy: an uncovered shard blocks the
	// whole pipeline, a shard with one holder is one failure away from it),
	// then the least throughput.
	lo := math.Inf(1)
	loCnt := math.MaxInt
	for i := range tp {
		c := min(cnt[i], Redundancy)
		if (allowed == nil || allowed[i]) && (c < loCnt || (c == loCnt && tp[i] < lo)) {
			loCnt, lo = c, tp[i]
		}
	}
	var best []int
	for i := range tp {
		if (allowed == nil || allowed[i]) && min(cnt[i], Redundancy) == loCnt && tp[i] <= lo+0.01*math.Abs(lo) {
			best = append(best, i)
		}
	}
	if len(best) == 0 {
		return -1
	}
	if len(best) == 1 || rng == nil {
		return best[0]
	}
	return best[rng.IntN(len(best))]
}

// Move is one rebalancing decision.
type Move struct {
	Peer     string
	From, To int
	OldMin   float64 // weakest shard's samples/s before
	NewMin   float64 // and after
}

// Plan returns the single move that most raises the holder counts of
// under-held shards (up to Redundancy each) or, failing that, the weakest shard's
// throughput, if the gain passes the hysteresis (OldMin/NewMin <
// threshold); ok=false if no move helps. It never takes the last holder off a shard. Every node computes
// the plan from (nearly) the same view and only the named peer moves, so
// two nodes never react to the same shortage at once; ties between equally
// good moves are broken by a hash of the peer and round, so the same peer
// is not always the one asked to move. A node that just moved sees a view in
// which moving back lowers the minimum, so it never moves back and forth.
func Plan(v View, threshold float64, round uint64) (Move, bool) {
	if threshold <= 0 || threshold > 1 {
		threshold = DefaultThreshold
	}
	tp, cnt := v.Totals()
	n := len(tp)
	if n < 2 {
		return Move{}, false
	}
	oldMin := minOf(tp, cnt)
	oldCov := coverage(cnt)
	var best Move
	bestKey := uint64(0)
	bestCov := 0
	found := false
	for _, h := range v.Holders {
		if h.Shard < 0 || h.Shard >= n || cnt[h.Shard] <= 1 || !(h.Rate > 0) || math.IsInf(h.Rate, 0) {
			continue
		}
		for to := 0; to < n; to++ {
			if to == h.Shard || v.FLOPs[to] <= 0 {
				continue
			}
			tp2 := append([]float64(nil), tp...)
			cnt2 := append([]int(nil), cnt...)
			tp2[h.Shard] -= h.Rate / v.FLOPs[h.Shard]
			cnt2[h.Shard]--
			tp2[to] += h.Rate / v.FLOPs[to]
			cnt2[to]++
			newMin := minOf(tp2, cnt2)
			newCov := coverage(cnt2)
			// Redundancy first: a move that leaves the least-held shard
			// with fewer holders is never made; one that raises it is
			// always worth it; otherwise throughput must gain enough.
			if newCov < oldCov || (newCov == oldCov && (!(newMin > 0) || !(oldMin/newMin < threshold))) {
				continue
			}
			key := tieKey(h.Peer, round)
			better := !found || newCov > bestCov ||
				(newCov == bestCov && (newMin > best.NewMin*(1+1e-9) || (math.Abs(newMin-best.NewMin) <= best.NewMin*1e-9 && key < bestKey)))
			if better {
				best = Move{Peer: h.Peer, From: h.Shard, To: to, OldMin: oldMin, NewMin: newMin}
				bestKey, bestCov = key, newCov
				found = true
			}
		}
	}
	return best, found
}

// coverage sums the shards' holder counts, each capped at Redundancy: it
// grows when a node moves from a well-held shard to an under-held one and
// never when it leaves a shard at or under Redundancy.
func coverage(cnt []int) int {
	c := 0
	for _, n := range cnt {
		c += min(n, Redundancy)
	}
	return c
}

// minOf is the weakest shard's throughput; an uncovered shard counts as 0.
func minOf(tp []float64, cnt []int) float64 {
	m := math.Inf(1)
	for i, t := range tp {
		if cnt[i] == 0 {
			t = 0
		}
		m = min(m, t)
	}
	return m
}

func tieKey(peer string, round uint64) uint64 {
	h := fnv.New64a()
	h.Write([]byte(peer))
	var b [8]byte
	for i := range b {
		b[i] = byte(round >> (8 * i))
	}
	h.Write(b[:])
	return h.Sum64()
}

// Sorted returns the holders sorted by shard then peer, for display.
func Sorted(hs []Holder) []Holder {
	out := append([]Holder(nil), hs...)
	sort.Slice(out, func(i, j int) bool {
		if out[i].Shard != out[j].Shard {
			return out[i].Shard < out[j].Shard
		}
		return out[i].Peer < out[j].Peer
	})
	return out
}
