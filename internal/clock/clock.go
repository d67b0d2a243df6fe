// Package clock is the one time source of the packages that wait or measure
// time: an interface, the wall clock behind it (Real), and a manual clock
// for tests (Manual) whose time moves only when the test advances it.
//
// A component takes a Clock in its configuration (nil means Real: see Or)
// and never calls time.Now, time.After or time.NewTicker itself, so a test
// can drive its timeouts, expiries and periodic work step by step instead
// of waiting for them. Two things stay on the wall clock whatever clock a
// component runs on: deadlines handed to the network (WallDeadline: the
// runtime checks them against the wall clock) and timestamps that are
// metadata, written to files or logs.
package clock

import (
	"context"
	"time"
)

// Clock tells the time and makes timers.
type Clock interface {
	Now() time.Time
	Since(t time.Time) time.Duration
	Until(t time.Time) time.Duration
	// After is NewTimer(d).C(): for a select that needs no Stop.
	After(d time.Duration) <-chan time.Time
	NewTimer(d time.Duration) Timer
	NewTicker(d time.Duration) Ticker
	// AfterFunc calls f in its own goroutine once d has passed (Manual:
	// see Advance). The Timer's C is nil.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a single event; Stop reports whether it stopped it before it
// fired.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

// Ticker sends the time every period; a tick nobody takes is dropped.
type Ticker interface {
	C() <-chan time.Time
	Stop()
}

// Real is the wall clock (package time).
var Real Clock = realClock{}

// Or is c, or Real when c is nil: what a component does with the Clock of
// its configuration.
func Or(c Clock) Clock {
	if c == nil {
		return Real
	}
	return c
}

// Sleep waits d on c; it returns ctx's error if ctx ends first.
func Sleep(ctx context.Context, c Clock, d time.Duration) error {
	t := c.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}

// WallDeadline is d from now on the wall clock: the deadline of a network
// stream or connection, which the runtime checks against the wall clock
// whatever Clock the caller runs on.
func WallDeadline(d time.Duration) time.Time { return time.Now().Add(d) }

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) Since(t time.Time) time.Duration        { return time.Since(t) }
func (realClock) Until(t time.Time) time.Duration        { return time.Until(t) }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
func (realClock) NewTimer(d time.Duration) Timer         { return realTimer{time.NewTimer(d)} }
func (realClock) NewTicker(d time.Duration) Ticker       { return realTicker{time.NewTicker(d)} }
func (realClock) AfterFunc(d time.Duration, f func()) Timer {
	return realTimer{time.AfterFunc(d, f)}
}

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time { return r.t.C }
func (r realTimer) Stop() bool          { return r.t.Stop() }

type realTicker struct{ t *time.Ticker }

func (r realTicker) C() <-chan time.Time { return r.t.C }
func (r realTicker) Stop()               { r.t.Stop() }
