package clock

import (
	"slices"
	"sync"
	"time"
)

// Manual is a Clock for tests: its time stands still until Advance moves
// it, and Advance fires the timers, tickers and functions that fall due, in
// the order of their deadlines (creation order among equal ones). It is
// safe for concurrent use. BlockUntil lets a test wait until the code under
// test has armed its timers, so that every step is deterministic.
type Manual struct {
	mu      sync.Mutex
	changed *sync.Cond // broadcast when pending changes
	now     time.Time
	seq     uint64
	pending []*event // armed timers, tickers and functions
}

// event is one armed timer, ticker (period > 0) or function (f != nil).
type event struct {
	m      *Manual
	at     time.Time
	seq    uint64
	period time.Duration
	ch     chan time.Time // buffered 1: a tick nobody takes is dropped
	f      func()
}

// NewManual is a manual clock that reads start.
func NewManual(start time.Time) *Manual {
	m := &Manual{now: start}
	m.changed = sync.NewCond(&m.mu)
	return m
}

// Now is the clock's time.
func (m *Manual) Now() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.now
}

// Since is Now() - t.
func (m *Manual) Since(t time.Time) time.Duration { return m.Now().Sub(t) }

// Until is t - Now().
func (m *Manual) Until(t time.Time) time.Duration { return t.Sub(m.Now()) }

// After is NewTimer(d).C().
func (m *Manual) After(d time.Duration) <-chan time.Time { return m.NewTimer(d).C() }

// NewTimer is a timer that fires once the clock reaches Now()+d (at once
// when d <= 0).
func (m *Manual) NewTimer(d time.Duration) Timer {
	return m.arm(&event{ch: make(chan time.Time, 1)}, d)
}

// NewTicker is a ticker of period d (> 0); its first tick is at Now()+d.
func (m *Manual) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("clock: non-positive ticker period")
	}
	return manualTicker{m.arm(&event{ch: make(chan time.Time, 1), period: d}, d)}
}

// AfterFunc runs f once the clock reaches Now()+d: Advance runs it. With d
// <= 0 it starts f at once in its own goroutine (the caller may hold locks
// that f takes, as with time.AfterFunc).
func (m *Manual) AfterFunc(d time.Duration, f func()) Timer {
	if d <= 0 {
		go f()
		return &event{m: m, f: f} // already fired: Stop reports false
	}
	return m.arm(&event{f: f}, d)
}

// arm schedules e at Now()+d; a timer due already fires at once.
func (m *Manual) arm(e *event, d time.Duration) *event {
	m.mu.Lock()
	defer m.mu.Unlock()
	e.m, e.at = m, m.now.Add(d)
	if d <= 0 {
		e.ch <- m.now
		return e
	}
	m.seq++
	e.seq = m.seq
	m.pending = append(m.pending, e)
	m.changed.Broadcast()
	return e
}

// Advance moves the clock d forward. Every event due by then fires in the
// order of its deadline: a timer sends its deadline on its channel, a
// ticker sends each tick it passes (dropping those its channel has no room
// for), and functions run one after another in this goroutine, after the
// clock reads its new time; Advance returns when they have returned.
func (m *Manual) Advance(d time.Duration) {
	m.mu.Lock()
	target := m.now.Add(d)
	var funcs []func()
	for {
		i := m.nextDueLocked(target)
		if i < 0 {
			break
		}
		e := m.pending[i]
		m.now = e.at
		switch {
		case e.f != nil:
			funcs = append(funcs, e.f)
			m.removeLocked(i)
		case e.period > 0:
			select {
			case e.ch <- e.at:
			default:
			}
			e.at = e.at.Add(e.period)
		default:
			e.ch <- e.at
			m.removeLocked(i)
		}
	}
	m.now = target
	m.mu.Unlock()
	for _, f := range funcs {
		f()
	}
}

// nextDueLocked is the index of the earliest event due by target, -1 if none.
func (m *Manual) nextDueLocked(target time.Time) int {
	best := -1
	for i, e := range m.pending {
		if e.at.After(target) {
			continue
		}
		if best < 0 || e.at.Before(m.pending[best].at) || (e.at.Equal(m.pending[best].at) && e.seq < m.pending[best].seq) {
			best = i
		}
	}
	return best
}

func (m *Manual) removeLocked(i int) {
	m.pending = slices.Delete(m.pending, i, i+1)
	m.changed.Broadcast()
}

// Pending is the number of armed timers, tickers and functions.
func (m *Manual) Pending() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.pending)
}

// BlockUntil waits until at least n timers, tickers and functions are
// armed: the code under test reached the wait the test means to end with
// Advance.
func (m *Manual) BlockUntil(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(m.pending) < n {
		m.changed.Wait()
	}
}

// C is the event's channel (nil for a function).
func (e *event) C() <-chan time.Time { return e.ch }

// Stop disarms the event; it reports whether the event was armed.
func (e *event) Stop() bool {
	m := e.m
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, p := range m.pending {
		if p == e {
			m.removeLocked(i)
			return true
		}
	}
	return false
}

// manualTicker is a ticker's event; a Ticker's Stop has no result.
type manualTicker struct{ *event }

func (t manualTicker) Stop() { t.event.Stop() }
