package epochs

import (
	"testing"
	"time"

	"github.com/swarm-train/swarm/swarm/progress"
)

// holder models one local-mode holder in virtual time: inner steps of step
// each, a round that closes once it took p.Target() steps (steps taken
// while the last round averaged count towards the next, as the trainer's
// carry does), whose averaging takes avg; while it averages, at most
// p.Overlap() steps run, and a holder past them waits for it to land. It
// returns the utilisation (time stepping ÷ time) over rounds [skip, rounds)
// and every round's size.
func holder(p *Pace, step, avg func(round int) time.Duration, rounds, skip int) (float64, []int) {
	now := time.Unix(1_000_000, 0)
	var (
		inner, ahead int // steps in the open round; of them, taken while the last one averaged
		pending      bool
		landAt       time.Time
		stalled      bool
		sizes        []int
		from         time.Time
		busy         time.Duration
	)
	for len(sizes) < rounds {
		if pending && !now.Before(landAt) {
			p.ObserveRound(avg(len(sizes) - 1))
			pending = false
		}
		if !pending && inner >= p.Target() {
			sizes = append(sizes, inner)
			if len(sizes) == skip {
				from, busy = now, 0
			}
			inner, ahead, pending, landAt = 0, 0, true, now.Add(avg(len(sizes)-1))
			continue
		}
		if pending && ahead >= p.Overlap() {
			now, stalled = landAt, true
			continue
		}
		d := step(len(sizes))
		now = now.Add(d)
		busy += d
		inner++
		if pending {
			ahead++
		}
		p.ObserveStep(now, stalled)
		stalled = false
	}
	return busy.Seconds() / now.Sub(from).Seconds(), sizes
}

func constant(d time.Duration) func(int) time.Duration { return func(int) time.Duration { return d } }

// On a link where an outer round takes longer than half a round of inner
// steps, fixed rounds (max_local_steps unset) with the old half-round
// allowance stall compute for the rest of each round; the paced rounds
// grow to cover the averaging (within max_local_steps) and compute no
// longer stalls. On a fast link nothing changes: rounds of local_steps,
// half a round of overlap.
func TestPaceKeepsComputeBusy(t *testing.T) {
	const local = 50
	step := constant(40 * time.Millisecond) // 50 steps: 2 s
	for _, c := range []struct {
		name        string
		avg         time.Duration
		max         int
		minUtil     float64
		maxUtil     float64
		minSize     int
		maxSize     int
		wantOverlap int
	}{
		// 3 s rounds: fixed rounds may overlap a whole round (2 s), then
		// stall 1 s of every 3.
		{"slow link, fixed rounds", 3 * time.Second, 0, 0.6, 0.7, local, local, local},
		// Paced: 1.25 × 3 s ÷ 40 ms = 94 steps a round, no stall.
		{"slow link, paced", 3 * time.Second, 4 * local, 0.99, 1, 94, 94, 94},
		// 12 s rounds would need 375 steps: the manifest caps the round at
		// 200 (8 s), which stalls 4 s of every 12 but far less than fixed
		// rounds would (2 s of 12).
		{"very slow link, capped", 12 * time.Second, 4 * local, 0.6, 0.7, 4 * local, 4 * local, 4 * local},
		{"very slow link, fixed rounds", 12 * time.Second, 0, 0.15, 0.2, local, local, local},
		// 0.5 s rounds fit in half a round: nothing changes.
		{"fast link, paced", 500 * time.Millisecond, 4 * local, 0.99, 1, local, local, local / 2},
	} {
		p := NewPace(local, c.max)
		util, sizes := holder(p, step, constant(c.avg), 30, 10)
		lo, hi := sizes[10], sizes[10]
		for _, s := range sizes[10:] {
			lo, hi = min(lo, s), max(hi, s)
		}
		if util < c.minUtil || util > c.maxUtil || lo < c.minSize || hi > c.maxSize || p.Overlap() != c.wantOverlap {
			t.Errorf("%s: utilisation %.3f (want %.2f-%.2f), rounds of %d-%d steps (want %d-%d), overlap %d (want %d)",
				c.name, util, c.minUtil, c.maxUtil, lo, hi, c.minSize, c.maxSize, p.Overlap(), c.wantOverlap)
		}
	}
}

// Pace follows the link: rounds that slow down lengthen the next rounds
// within a few rounds, rounds that speed up shorten them again once the
// slow ones leave its memory (paceRounds), never below local_steps.
func TestPaceFollowsTheLink(t *testing.T) {
	const local = 50
	avg := func(round int) time.Duration {
		if round >= 10 && round < 20 {
			return 3 * time.Second
		}
		return 500 * time.Millisecond
	}
	p := NewPace(local, 4*local)
	_, sizes := holder(p, constant(40*time.Millisecond), avg, 40, 0)
	if sizes[9] != local || sizes[35] != local {
		t.Errorf("rounds of %d and %d steps on a fast link, want %d: %v", sizes[9], sizes[35], local, sizes)
	}
	if sizes[15] != 94 {
		t.Errorf("round 15 (3 s averaging) has %d steps, want 94: %v", sizes[15], sizes)
	}
}

// Measurements that are no measurement are ignored: non-positive round
// times, the first step, a step after a stall, a step after a long pause
// (paceGap); an unmeasured pace is the fixed rule (local_steps rounds,
// half of them overlapping, at least one); a round of absurd length is
// capped by max_local_steps, and max_local_steps below local_steps means
// fixed rounds.
func TestPaceMeasurements(t *testing.T) {
	p := NewPace(50, 200)
	if p.Target() != 50 || p.Overlap() != 25 {
		t.Fatalf("unmeasured: target %d overlap %d, want 50 and 25", p.Target(), p.Overlap())
	}
	if q := NewPace(1, 0); q.Target() != 1 || q.Overlap() != 1 {
		t.Fatalf("one step a round: target %d overlap %d, want 1 and 1", q.Target(), q.Overlap())
	}
	now := time.Unix(1_000_000, 0)
	p.ObserveRound(0)
	p.ObserveRound(-time.Second)
	p.ObserveStep(now, false)                                    // first: no interval
	p.ObserveStep(now.Add(time.Hour), true)                      // after a stall
	p.ObserveStep(now.Add(time.Hour+10*time.Millisecond), false) // 10 ms
	p.ObserveStep(now.Add(2*time.Hour), false)                   // a pause, beyond paceGap
	if p.step != 10*time.Millisecond || len(p.rounds) != 0 {
		t.Fatalf("step %v, rounds %v: want 10ms and none", p.step, p.rounds)
	}
	p.ObserveRound(1000 * time.Hour)
	if p.Target() != 200 || p.Overlap() != 200 {
		t.Fatalf("absurd round: target %d overlap %d, want 200 and 200", p.Target(), p.Overlap())
	}
	q := NewPace(50, 10)
	q.step = 10 * time.Millisecond
	q.ObserveRound(time.Hour)
	if q.Target() != 50 || q.Overlap() != 50 {
		t.Fatalf("max below local: target %d overlap %d, want 50 and 50", q.Target(), q.Overlap())
	}
}

// The core ends a first-shard round at the pace's target (Node.RoundSteps)
// when it is set, at local_steps when it is not: 2 holders × 64 steps of 8
// samples are not a round of 100 steps, 2 × 100 are.
func TestRoundStepsEndsTheRound(t *testing.T) {
	cfg := Config{Self: "a0", Epochs: 20, BatchSize: 8, GroupSize: 2, Local: true, LocalSteps: 50}
	now := time.Unix(1_000_000, 0)
	mate := online("a1", 0, 3)
	for _, c := range []struct {
		steps, roundSteps int
		want              Kind
	}{{64, 0, OuterStep}, {64, 100, Wait}, {100, 100, OuterStep}} {
		mate.Samples = c.steps * 8
		n := Node{Shard: 0, Held: true, Online: true, Epoch: 3, Samples: c.steps * 8, RoundSteps: c.roundSteps}
		if got := New(cfg).Step(Input{Now: now, Records: []progress.Record{mate}, Node: n}, Event{}); got.Kind != c.want {
			t.Errorf("%d steps each, round of %d: %v, want %v", c.steps, c.roundSteps, got.Kind, c.want)
		}
	}
}
