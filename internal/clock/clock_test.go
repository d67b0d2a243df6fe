package clock

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

var t0 = time.Unix(1_700_000_000, 0)

// fired reports whether ch holds a value, and which.
func fired(ch <-chan time.Time) (time.Time, bool) {
	select {
	case v := <-ch:
		return v, true
	default:
		return time.Time{}, false
	}
}

func TestManualTimersFireInDeadlineOrder(t *testing.T) {
	m := NewManual(t0)
	var mu sync.Mutex
	var order []string
	note := func(s string) func() { return func() { mu.Lock(); order = append(order, s); mu.Unlock() } }
	late := m.NewTimer(3 * time.Second)
	m.AfterFunc(2*time.Second, note("f2"))
	m.AfterFunc(time.Second, note("f1a"))
	m.AfterFunc(time.Second, note("f1b")) // same deadline: creation order
	early := m.After(time.Second)

	m.Advance(999 * time.Millisecond)
	if _, ok := fired(early); ok || len(order) != 0 {
		t.Fatalf("fired before its deadline: timer %v, functions %v", ok, order)
	}
	m.Advance(1500 * time.Millisecond)
	if v, ok := fired(early); !ok || !v.Equal(t0.Add(time.Second)) {
		t.Fatalf("1 s timer: %v %v, want its deadline", v, ok)
	}
	if want := []string{"f1a", "f1b", "f2"}; len(order) != 3 || order[0] != want[0] || order[1] != want[1] || order[2] != want[2] {
		t.Fatalf("functions ran %v, want %v (Advance returns after them)", order, want)
	}
	if _, ok := fired(late.C()); ok {
		t.Fatal("3 s timer fired at 2.5 s")
	}
	if got := m.Now(); !got.Equal(t0.Add(2499 * time.Millisecond)) {
		t.Fatalf("Now %v after advancing 2.499 s", got.Sub(t0))
	}
	if d := m.Since(t0); d != 2499*time.Millisecond {
		t.Fatalf("Since %v", d)
	}
	if d := m.Until(t0.Add(3 * time.Second)); d != 501*time.Millisecond {
		t.Fatalf("Until %v", d)
	}
	if m.Pending() != 1 {
		t.Fatalf("%d pending, want the 3 s timer", m.Pending())
	}
}

func TestManualStop(t *testing.T) {
	m := NewManual(t0)
	tm := m.NewTimer(time.Second)
	ran := false
	f := m.AfterFunc(time.Second, func() { ran = true })
	if !tm.Stop() || !f.Stop() {
		t.Fatal("Stop of an armed event reported false")
	}
	if tm.Stop() {
		t.Fatal("second Stop reported true")
	}
	m.Advance(time.Hour)
	if _, ok := fired(tm.C()); ok || ran {
		t.Fatal("a stopped event fired")
	}
	done := m.NewTimer(time.Second)
	m.Advance(time.Second)
	if done.Stop() {
		t.Fatal("Stop of a fired timer reported true")
	}
}

func TestManualDueAtOnce(t *testing.T) {
	m := NewManual(t0)
	if _, ok := fired(m.After(0)); !ok {
		t.Fatal("a timer of 0 did not fire at once")
	}
	if _, ok := fired(m.NewTimer(-time.Second).C()); !ok {
		t.Fatal("a negative timer did not fire at once")
	}
	// A function due at once runs in its own goroutine: the caller may
	// hold what it locks.
	var mu sync.Mutex
	mu.Lock()
	done := make(chan struct{})
	m.AfterFunc(0, func() { mu.Lock(); close(done); mu.Unlock() })
	mu.Unlock()
	<-done
	if m.Pending() != 0 {
		t.Fatalf("%d pending", m.Pending())
	}
}

func TestManualTickerDropsUntakenTicks(t *testing.T) {
	m := NewManual(t0)
	tk := m.NewTicker(time.Second)
	m.Advance(500 * time.Millisecond)
	if _, ok := fired(tk.C()); ok {
		t.Fatal("ticked early")
	}
	m.Advance(3 * time.Second) // passes 1, 2 and 3 s: the channel keeps the first
	if v, ok := fired(tk.C()); !ok || !v.Equal(t0.Add(time.Second)) {
		t.Fatalf("tick %v %v, want the one at 1 s", v.Sub(t0), ok)
	}
	if _, ok := fired(tk.C()); ok {
		t.Fatal("more than one tick kept")
	}
	m.Advance(time.Second)
	if v, ok := fired(tk.C()); !ok || !v.Equal(t0.Add(4*time.Second)) {
		t.Fatalf("tick %v %v, want the one at 4 s", v.Sub(t0), ok)
	}
	tk.Stop()
	m.Advance(time.Minute)
	if _, ok := fired(tk.C()); ok || m.Pending() != 0 {
		t.Fatal("a stopped ticker ticked")
	}
}

// BlockUntil lets a test advance exactly when a loop waits: every step of
// the loop sees the time the test set.
func TestManualBlockUntilDrivesALoop(t *testing.T) {
	m := NewManual(t0)
	ctx, cancel := context.WithCancel(context.Background())
	seen := make(chan time.Duration, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			seen <- m.Since(t0)
			if Sleep(ctx, m, 5*time.Second) != nil {
				return
			}
		}
	}()
	for i := range 4 {
		m.BlockUntil(1)
		if got := <-seen; got != time.Duration(i)*5*time.Second {
			t.Fatalf("step %d at %v", i, got)
		}
		m.Advance(5 * time.Second)
	}
	cancel()
	<-done
}

func TestSleepEndsWithContext(t *testing.T) {
	m := NewManual(t0)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Sleep(ctx, m, time.Hour) }()
	m.BlockUntil(1)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep: %v, want canceled", err)
	}
	if m.Pending() != 0 {
		t.Fatal("Sleep left its timer armed")
	}
}

func TestManualConcurrentUse(t *testing.T) {
	m := NewManual(t0)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				tm := m.NewTimer(time.Millisecond)
				m.Advance(time.Millisecond)
				<-tm.C()
				_ = m.Now()
			}
		}()
	}
	wg.Wait()
	if got := m.Since(t0); got != 800*time.Millisecond {
		t.Fatalf("advanced %v, want 800ms", got)
	}
}

func TestRealAndOr(t *testing.T) {
	if Or(nil) != Real {
		t.Fatal("Or(nil) is not Real")
	}
	m := NewManual(t0)
	if Or(m) != Clock(m) {
		t.Fatal("Or(m) is not m")
	}
	before := time.Now()
	if now := Real.Now(); now.Before(before) {
		t.Fatal("Real.Now is behind time.Now")
	}
	if err := Sleep(context.Background(), Real, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	Real.AfterFunc(time.Millisecond, func() { close(done) })
	<-done
	tk := Real.NewTicker(time.Millisecond)
	<-tk.C()
	tk.Stop()
	if time.Until(WallDeadline(time.Minute)) <= 0 {
		t.Fatal("WallDeadline is not ahead of the wall clock")
	}
}
