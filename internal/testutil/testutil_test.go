package testutil

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestEventuallyWaitsForCondition(t *testing.T) {
	var n atomic.Int32
	Eventually(t, 5*time.Second, Says("counter never reached 3"), func() bool { return n.Add(1) >= 3 })
	if n.Load() != 3 {
		t.Fatalf("condition checked %d times, want 3", n.Load())
	}
}

// failRecorder is a testing.TB that records Fatalf instead of stopping.
type failRecorder struct {
	testing.TB
	msg string
}

func (f *failRecorder) Helper() {}
func (f *failRecorder) Fatalf(format string, args ...any) {
	f.msg = format
	panic(f)
}

func TestEventuallyFailsAfterDeadline(t *testing.T) {
	rec := &failRecorder{TB: t}
	func() {
		defer func() {
			if r := recover(); r != rec {
				t.Fatalf("Eventually did not fail: %v", r)
			}
		}()
		Eventually(rec, 50*time.Millisecond, Says("never"), func() bool { return false })
	}()
	if rec.msg == "" {
		t.Fatal("no failure message")
	}
}

func TestHostsConnect(t *testing.T) {
	a, b := Host(t), Host(t)
	Connect(t, a, b)
	if len(a.Network().ConnsToPeer(b.ID())) == 0 {
		t.Fatal("not connected")
	}
}
