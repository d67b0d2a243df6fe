package epochs

import (
	"math"
	"slices"
	"time"
)

// Pace decides, in local mode with overlapped outer rounds, how long a
// round is and how far inner steps may run ahead of an outer round that is
// still being averaged.
//
// A holder that closes a round keeps taking inner steps while the round's
// deltas are averaged; the outer step then lands on top of that progress.
// With a fixed allowance (half a round) an outer round that takes longer
// than half a round's inner steps stalls compute until it lands: on a slow
// link the averaging, not the engine, sets the pace. Pace measures how long
// outer rounds take and how long an inner step takes, and answers:
//
//   - Overlap: the inner steps a holder may take while its last round is
//     averaged, enough to cover a recent round's averaging (the slowest of
//     the last few) with a margin, at least half a round and at most one
//     round: a delta is never applied more than a round late.
//   - Target: the inner steps of a round, local_steps or, when a round's
//     averaging outlasts them, as many as it takes (bounded by
//     max_local_steps): rounds then follow each other without queueing
//     behind the link, and each delta carries more progress per byte sent.
//
// With max_local_steps at most local_steps (the manifest's default) the
// round stays local_steps inner steps long and only the allowance adapts,
// still bounded by one round.
//
// Pace is a pure decision: no clock, lock or goroutine; the trainer feeds it
// the times it measured (virtual time in tests).
type Pace struct {
	local, max int
	rounds     []time.Duration // the last paceRounds outer rounds' averaging times
	step       time.Duration   // moving average of the time between inner steps
	last       time.Time       // the last inner step not preceded by a stall
}

// paceRounds is the number of recent outer rounds Pace remembers; paceMargin
// is the share by which it covers the slowest of them.
const (
	paceRounds = 4
	paceMargin = 1.25
	// paceGap: two inner steps further apart than this many mean step
	// times are not consecutive (the holder stalled, joined or paused).
	paceGap = 8
)

// NewPace is the pace of a run with localSteps inner steps a round and at
// most maxSteps (≤ localSteps: fixed rounds).
func NewPace(localSteps, maxSteps int) *Pace {
	localSteps = max(localSteps, 1)
	return &Pace{local: localSteps, max: max(maxSteps, localSteps)}
}

// ObserveRound records how long one outer round's averaging took.
func (p *Pace) ObserveRound(d time.Duration) {
	if d <= 0 {
		return
	}
	p.rounds = append(p.rounds, d)
	if len(p.rounds) > paceRounds {
		p.rounds = p.rounds[1:]
	}
}

// ObserveStep records an inner step taken at now; stalled says the step
// waited for an outer round (Overlap) before it ran, so the time since the
// last one is no measure of an inner step.
func (p *Pace) ObserveStep(now time.Time, stalled bool) {
	prev := p.last
	p.last = now
	if stalled || prev.IsZero() {
		return
	}
	d := now.Sub(prev)
	if d <= 0 || (p.step > 0 && d > paceGap*p.step) {
		return
	}
	if p.step == 0 {
		p.step = d
		return
	}
	p.step = (7*p.step + d) / 8
}

// need is the number of inner steps that fit in a recent outer round's
// averaging, with the margin; 0 while either is unmeasured.
func (p *Pace) need() int {
	if p.step <= 0 || len(p.rounds) == 0 {
		return 0
	}
	n := paceMargin * float64(slices.Max(p.rounds)) / float64(p.step)
	if n > math.MaxInt32 {
		return math.MaxInt32
	}
	return int(math.Ceil(n))
}

// Target is the number of inner steps the next round should have.
func (p *Pace) Target() int {
	return min(max(p.need(), p.local), p.max)
}

// Overlap is how many inner steps a holder may take while its last round
// is averaged: at least half a round, enough to cover the averaging if
// that fits, at most the round.
func (p *Pace) Overlap() int {
	target := p.Target()
	return min(max(p.need(), target/2, 1), target)
}
