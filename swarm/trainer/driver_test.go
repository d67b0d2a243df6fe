package trainer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/internal/testutil"
	"github.com/swarm-train/swarm/swarm/data"
)

// gateStub is the trainer's side of the driver for tests: it admits a
// micro-batch whenever the driver has room, and each send waits until the
// test answers it.
type gateStub struct {
	mu       sync.Mutex
	changed  chan struct{}  // closed and replaced at each undraw
	sends    []chan error   // sends waiting for the test's answer
	most     int            // most sends waiting at once
	admitted int            // micro-batches admitted
	drawn    map[uint64]int // samples admitted and not undrawn, by epoch
	pokes    int
}

func newGateStub() *gateStub {
	return &gateStub{changed: make(chan struct{}), drawn: map[uint64]int{}}
}

func (g *gateStub) waitRunning(context.Context) error { return nil }

func (g *gateStub) admitDraw(ctx context.Context, slots flightSlots) (engine.Shard, uint64, int, bool) {
	for {
		g.mu.Lock()
		if slots.room() { // under the stub's lock, as under the trainer's
			slots.take()
			g.admitted++
			g.drawn[1] += 8
			g.mu.Unlock()
			return nil, 1, 8, true
		}
		ch := g.changed
		g.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, 0, 0, false
		}
	}
}

func (g *gateStub) send(ctx context.Context, _ engine.Shard, _ uint64, b *engine.Batch) error {
	if b.N != 8 {
		return fmt.Errorf("drew %d samples, admitted 8", b.N)
	}
	answer := make(chan error, 1)
	g.mu.Lock()
	g.sends = append(g.sends, answer)
	g.most = max(g.most, len(g.sends))
	g.mu.Unlock()
	select {
	case err := <-answer:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *gateStub) undraw(epoch uint64, n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.drawn[epoch] -= n
	close(g.changed)
	g.changed = make(chan struct{})
}

func (g *gateStub) poke() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pokes++
}

// waiting is the number of sends waiting for an answer.
func (g *gateStub) waiting() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.sends)
}

// answer ends every waiting send with err.
func (g *gateStub) answer(err error) {
	g.mu.Lock()
	sends := g.sends
	g.sends = nil
	g.mu.Unlock()
	for _, s := range sends {
		s <- err
	}
}

// sourceStub is a data source of empty samples.
type sourceStub struct{}

func (sourceStub) Next(n int) *engine.Batch { return &engine.Batch{N: n} }
func (sourceStub) Position() data.Position  { return data.Position{} }
func (sourceStub) Seek(data.Position) error { return nil }
func (sourceStub) Len() int                 { return 1 }
func (sourceStub) Eval() *data.EvalSet      { return nil }

// startDriver runs d's loops until the returned stop is called.
func startDriver(t *testing.T, d *driver) func() {
	t.Helper()
	d.src = sourceStub{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range d.loops() {
		wg.Add(1)
		go func() { defer wg.Done(); d.run(ctx) }()
	}
	return func() { cancel(); wg.Wait() }
}

// With an adaptive window the driver starts with autoMinInFlight
// micro-batches in flight and grows the window by one per round trip
// towards trip ÷ compute (50 ms ÷ 10 ms = 5), never past it.
func TestDriverGrowsItsWindow(t *testing.T) {
	clk := clock.NewManual(time.Unix(1000, 0))
	g := newGateStub()
	d := newDriver(clk, slog.New(slog.DiscardHandler), time.Minute, 0, g)
	d.computed(10 * time.Millisecond) // the engine's time per micro-batch
	stop := startDriver(t, d)
	defer stop()
	for _, want := range []int{autoMinInFlight, 4, 5, 5} {
		testutil.Eventually(t, 10*time.Second, func() string {
			return fmt.Sprintf("%d micro-batches in flight, want %d (limit %d)", g.waiting(), want, d.limit())
		}, func() bool { return g.waiting() == want })
		clk.Advance(50 * time.Millisecond) // every one of them takes 50 ms there and back
		g.answer(nil)
	}
	stop()
	if g.most != 5 {
		t.Fatalf("at most %d micro-batches in flight, want 5", g.most)
	}
	if g.drawn[1] != 0 || d.driving != 0 {
		t.Fatalf("%d samples still drawn, %d micro-batches driving after the loops ended", g.drawn[1], d.driving)
	}
}

// A failed micro-batch frees its samples at once (its record is pushed)
// and the loop draws again only failPause later, on the driver's clock; a
// failure's round trip does not feed the window.
func TestDriverPausesAfterFailure(t *testing.T) {
	clk := clock.NewManual(time.Unix(1000, 0))
	g := newGateStub()
	d := newDriver(clk, slog.New(slog.DiscardHandler), time.Minute, 1, g)
	stop := startDriver(t, d)
	defer stop()
	testutil.Eventually(t, 10*time.Second, testutil.Says("the first micro-batch sent"), func() bool { return g.waiting() == 1 })
	clk.Advance(time.Second)
	g.answer(errors.New("the next stage is gone"))
	clk.BlockUntil(1) // the loop pauses
	g.mu.Lock()
	admitted, pokes, drawn := g.admitted, g.pokes, g.drawn[1]
	g.mu.Unlock()
	if admitted != 1 || pokes != 1 || drawn != 0 {
		t.Fatalf("after the failure: %d admitted, %d pokes, %d samples drawn; want 1, 1, 0", admitted, pokes, drawn)
	}
	clk.Advance(failPause - time.Millisecond)
	if g.waiting() != 0 {
		t.Fatal("drew again before the pause ended")
	}
	clk.Advance(time.Millisecond)
	testutil.Eventually(t, 10*time.Second, testutil.Says("the next micro-batch after the pause"), func() bool { return g.waiting() == 1 })
	d.mu.Lock()
	trips := len(d.flight.trips)
	d.mu.Unlock()
	if trips != 0 {
		t.Fatalf("%d round trips observed from a failure", trips)
	}
}
