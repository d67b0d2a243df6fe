package node

import (
	"time"
)

// relayBudget is a training relay's budget, all circuits together: a rate
// (a token bucket in bytes per second) and a daily total (per UTC day). It
// is pure: the caller passes the time and does the waiting and closing.
type relayBudget struct {
	rate  float64 // bytes per second
	burst float64 // bytes the bucket holds
	daily int64   // bytes per UTC day

	tokens float64
	last   time.Time // when tokens was computed
	day    time.Time // the UTC day usedToday counts
	used   int64     // bytes relayed on day
}

func newRelayBudget(mbps, gbPerDay float64, burst int) *relayBudget {
	rate := mbps * 1e6 / 8
	return &relayBudget{
		rate:   rate,
		burst:  max(float64(burst), rate/20), // 50 ms of the rate, at least one read
		daily:  int64(gbPerDay * 1e9),
		tokens: max(float64(burst), rate/20),
	}
}

// take counts n bytes relayed at now. It returns how long the relay must
// wait before reading more to keep to the rate, and whether this read went
// past the day's budget (the caller closes the circuit and refuses new
// ones until the day ends).
func (b *relayBudget) take(n int, now time.Time) (wait time.Duration, over bool) {
	b.roll(now)
	b.used += int64(n)
	if b.used > b.daily {
		return 0, true
	}
	if !b.last.IsZero() && now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	b.tokens -= float64(n)
	if b.tokens >= 0 {
		return 0, false
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second)), false
}

// spent reports whether the day's budget is used up at now, and when the
// next day starts.
func (b *relayBudget) spent(now time.Time) (bool, time.Time) {
	b.roll(now)
	return b.used >= b.daily, b.day.Add(24 * time.Hour)
}

// usedToday is what was relayed on now's UTC day.
func (b *relayBudget) usedToday(now time.Time) int64 {
	b.roll(now)
	return b.used
}

func (b *relayBudget) roll(now time.Time) {
	if d := now.UTC().Truncate(24 * time.Hour); !d.Equal(b.day) {
		b.day, b.used = d, 0
	}
}
