package pipeline

import (
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/clock"
)

// Balancer chooses the next-stage peer for each micro-batch (stochastic
// wiring): a peer is drawn with probability proportional to its expected
// speed, 1 / (seconds per sample × (queue + 1)), so fast, idle peers get more
// work and every peer keeps being measured. A peer never measured is
// assumed twice as fast as the best known one so it is tried early. A peer
// that failed, answered late or sent bad data is banned for a while. It is
// safe for concurrent use.
//
// It remembers at most MaxPeers peers: beyond that, peers with nothing in
// flight are forgotten, those idle longest first (a flood of fresh peer IDs
// that send garbage cannot grow it).
type Balancer struct {
	mu    sync.Mutex
	rng   *rand.Rand
	clk   clock.Clock
	peers map[peer.ID]*stat

	hops, failures, retries, bans atomic.Uint64
}

// Stats are a balancer's counters since it was made.
type Stats struct {
	Hops     uint64 // micro-batches sent to a peer (Begin)
	Failures uint64 // answers that failed (End with failed)
	Retries  uint64 // picks for a micro-batch that already failed with another peer
	Bans     uint64 // bans: failed answers and Ban calls
}

// Stats returns the counters.
func (b *Balancer) Stats() Stats {
	return Stats{Hops: b.hops.Load(), Failures: b.failures.Load(), Retries: b.retries.Load(), Bans: b.bans.Load()}
}

// MaxPeers bounds the peers a Balancer remembers.
const MaxPeers = 1024

type stat struct {
	spt         float64 // EMA of seconds per sample, 0 = never measured
	inflight    int
	bannedUntil time.Time
	banReason   string
	used        time.Time // last Pick, Begin, End or Ban
}

// NewBalancer returns a balancer drawing from rng, timing bans and idle
// peers on clk (nil: the wall clock).
func NewBalancer(rng *rand.Rand, clk clock.Clock) *Balancer {
	return &Balancer{rng: rng, clk: clock.Or(clk), peers: map[peer.ID]*stat{}}
}

// get returns p's entry, creating it (b.mu held).
func (b *Balancer) get(p peer.ID) *stat {
	now := b.clk.Now()
	s := b.peers[p]
	if s == nil {
		if len(b.peers) >= MaxPeers {
			b.prune(now)
		}
		s = &stat{}
		b.peers[p] = s
	}
	s.used = now
	return s
}

// prune forgets peers with nothing in flight until a quarter of MaxPeers
// is free: first those whose ban is over, then the longest idle (b.mu held).
func (b *Balancer) prune(now time.Time) {
	for p, s := range b.peers {
		if s.inflight == 0 && !now.Before(s.bannedUntil) && now.Sub(s.used) > time.Minute {
			delete(b.peers, p)
		}
	}
	keep := MaxPeers * 3 / 4
	if len(b.peers) <= keep {
		return
	}
	idle := make([]peer.ID, 0, len(b.peers))
	for p, s := range b.peers {
		if s.inflight == 0 {
			idle = append(idle, p)
		}
	}
	slices.SortFunc(idle, func(x, y peer.ID) int { return b.peers[x].used.Compare(b.peers[y].used) })
	for _, p := range idle[:min(len(idle), len(b.peers)-keep)] {
		delete(b.peers, p)
	}
}

// Len is the number of peers remembered.
func (b *Balancer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.peers)
}

// Pick draws one of cands that is not banned and not in skip; ok=false if none.
func (b *Balancer) Pick(cands []peer.ID, skip map[peer.ID]bool) (peer.ID, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clk.Now()
	best := 0.0
	for _, p := range cands {
		if s := b.peers[p]; s != nil && s.spt > 0 && (best == 0 || s.spt < best) {
			best = s.spt
		}
	}
	if best == 0 {
		best = 1
	}
	ws := make([]float64, len(cands))
	var total float64
	for i, p := range cands {
		s := b.get(p)
		if skip[p] || now.Before(s.bannedUntil) {
			continue
		}
		spt := s.spt
		if spt == 0 {
			spt = best / 2
		}
		ws[i] = 1 / (spt * float64(s.inflight+1))
		total += ws[i]
	}
	if total == 0 {
		return "", false
	}
	if len(skip) > 0 {
		b.retries.Add(1)
	}
	x := b.rng.Float64() * total
	for i, w := range ws {
		if w == 0 {
			continue
		}
		if x < w {
			return cands[i], true
		}
		x -= w
	}
	for i := len(ws) - 1; i >= 0; i-- {
		if ws[i] > 0 {
			return cands[i], true
		}
	}
	return "", false
}

// Begin counts a micro-batch sent to p.
func (b *Balancer) Begin(p peer.ID) {
	b.mu.Lock()
	b.get(p).inflight++
	b.mu.Unlock()
	b.hops.Add(1)
}

// End records p's answer: on success the time it took for n samples
// updates its speed; on failure p is banned for banFor.
func (b *Balancer) End(p peer.ID, n int, took time.Duration, failed bool, banFor time.Duration, reason string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.get(p)
	if s.inflight > 0 {
		s.inflight--
	}
	if failed {
		b.failures.Add(1)
		if banFor > 0 {
			b.bans.Add(1)
		}
		s.bannedUntil = b.clk.Now().Add(banFor)
		s.banReason = reason
		return
	}
	if n > 0 {
		spt := took.Seconds() / float64(n)
		if s.spt == 0 {
			s.spt = spt
		} else {
			s.spt = 0.7*s.spt + 0.3*spt
		}
	}
}

// Ban excludes p for d (for example, it sent non-finite values).
func (b *Balancer) Ban(p peer.ID, d time.Duration, reason string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.get(p)
	s.bannedUntil = b.clk.Now().Add(d)
	s.banReason = reason
	b.bans.Add(1)
}

// Banned reports whether p is banned now, and why.
func (b *Balancer) Banned(p peer.ID) (bool, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.peers[p]
	if s == nil || !b.clk.Now().Before(s.bannedUntil) {
		return false, ""
	}
	return true, s.banReason
}
