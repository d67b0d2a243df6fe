package pipeline

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/clock"
)

// The balancer counts hops, failures, retries and bans as forwardNext uses
// it: pick, begin, end; after a failure, pick again skipping the peer tried.
func TestBalancerStats(t *testing.T) {
	clk := clock.NewManual(time.Unix(1000, 0))
	b := NewBalancer(rand.New(rand.NewPCG(1, 2)), clk)
	cands := []peer.ID{"a", "b"}
	tried := map[peer.ID]bool{}
	p, ok := b.Pick(cands, tried)
	if !ok {
		t.Fatal("no pick")
	}
	tried[p] = true
	b.Begin(p)
	b.End(p, 0, 0, true, time.Second, "no answer")
	q, ok := b.Pick(cands, tried)
	if !ok || q == p {
		t.Fatalf("retry picked %q (ok %v) after %q failed", q, ok, p)
	}
	b.Begin(q)
	b.End(q, 8, time.Millisecond, false, 0, "")
	b.Begin(q)
	b.End(q, 0, 0, true, 0, "busy, not banned")
	b.Ban("c", time.Minute, "sent NaN")
	want := Stats{Hops: 3, Failures: 2, Retries: 1, Bans: 2}
	if got := b.Stats(); got != want {
		t.Fatalf("stats %+v, want %+v", got, want)
	}
}
