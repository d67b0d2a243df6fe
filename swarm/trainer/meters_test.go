package trainer

import (
	"math"
	"testing"
	"time"

	"github.com/swarm-train/swarm/internal/clock"
)

// Busy time counts wall time with any engine call running: two
// micro-batches computed at once count once.
func TestMetersBusyTime(t *testing.T) {
	clk := clock.NewManual(time.Unix(1000, 0))
	m := newMeters(clk)
	clk.Advance(time.Second) // idle
	m.beginCompute()
	clk.Advance(2 * time.Second)
	m.beginCompute() // a second one overlaps the first
	clk.Advance(time.Second)
	m.endCompute()
	if got := m.busyTime(); got != 3*time.Second {
		t.Fatalf("busy %v while one call still runs, want 3s", got)
	}
	clk.Advance(time.Second)
	m.endCompute()
	clk.Advance(5 * time.Second) // idle
	if got, wall := m.busyTime(), m.wall(); got != 4*time.Second || wall != 10*time.Second {
		t.Fatalf("busy %v of wall %v, want 4s of 10s", got, wall)
	}
}

// Throughput is the samples over the window of the last ten seconds;
// the compute rate needs a second of busy time.
func TestMetersThroughputAndRate(t *testing.T) {
	clk := clock.NewManual(time.Unix(1000, 0))
	m := newMeters(clk)
	m.account(64)
	if tp := m.throughput(); tp != 0 {
		t.Fatalf("throughput %v from one point", tp)
	}
	for range 20 { // 64 samples every second for 20 s
		clk.Advance(time.Second)
		m.account(64)
	}
	// The window keeps the points of the last 10 s (11 points): 640
	// samples over 10 s.
	if tp := m.throughput(); math.Abs(tp-64) > 1e-9 {
		t.Fatalf("throughput %v, want 64/s", tp)
	}
	clk.Advance(10 * time.Second) // no samples since: the same 640 over 20 s
	if tp := m.throughput(); math.Abs(tp-32) > 1e-9 {
		t.Fatalf("throughput %v after 10 s idle, want 32/s", tp)
	}
	if m.samples() != 21*64 {
		t.Fatalf("samples %d, want %d", m.samples(), 21*64)
	}
	if _, ok := m.rate(1e6); ok {
		t.Fatal("a rate measured without busy time")
	}
	m.beginCompute()
	clk.Advance(2 * time.Second)
	m.endCompute()
	// 1344 samples of 1e6 FLOPs in 2 s of compute.
	if r, ok := m.rate(1e6); !ok || math.Abs(r-1344e6/2) > 1e-3 {
		t.Fatalf("rate %v %v, want %v", r, ok, 1344e6/2)
	}
}

func TestMetersLossAndRounds(t *testing.T) {
	m := newMeters(clock.NewManual(time.Unix(0, 0)))
	m.observeLoss(0) // no loss reported: ignored
	m.observeLoss(2)
	m.observeLoss(1)
	if got, want := m.loss(), 0.9*2+0.1*1; math.Abs(got-want) > 1e-12 {
		t.Fatalf("loss %v, want %v", got, want)
	}
	m.averaged(avgInfo{Round: 1, GroupSize: 1})
	m.averaged(avgInfo{Round: 2, GroupSize: 3, Fraction: 1})
	if r := m.lastRound(); r.Round != 2 || r.GroupSize != 3 {
		t.Fatalf("last round %+v", r)
	}
	if m.avgRounds.Load() != 2 || m.avgGrouped.Load() != 1 {
		t.Fatalf("rounds %d, grouped %d; want 2, 1", m.avgRounds.Load(), m.avgGrouped.Load())
	}
}
