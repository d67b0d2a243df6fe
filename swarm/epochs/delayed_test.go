package epochs

import (
	"fmt"
	"testing"
	"time"

	"github.com/swarm-train/swarm/swarm/progress"
)

func delayedCfg(epochs uint64) Config {
	c := syncCfg(epochs)
	c.Delayed = true
	return c
}

// cleanRun runs two shards of two holders each to the end and returns the
// virtual time it took.
func cleanRun(t *testing.T, cfg Config) (*sim, time.Duration) {
	s := newSim(t, cfg)
	for _, id := range []string{"a0", "a1"} {
		s.add(id, 0, 0, progress.StateOnline)
	}
	for _, id := range []string{"b0", "b1"} {
		s.add(id, 1, 0, progress.StateOnline)
	}
	start := s.now
	s.runUntil(2*time.Minute, "the run's end", func() bool { return s.allAt(cfg.Epochs)() && s.node("a0").eval && s.node("a1").eval })
	return s, s.now.Sub(start)
}

// With delayed updates a clean swarm detaches every gradient round but the
// last, reopens the next epoch at once, lands each round (complete) and
// takes its step, never catches up, runs the same state rounds as without
// delay, ends on one model, and runs faster than without delay: the
// rounds (avgTime) hide behind the next epoch's compute.
func TestSimDelayedCleanRun(t *testing.T) {
	const epochs = 60
	s, took := cleanRun(t, delayedCfg(epochs))
	_, plain := cleanRun(t, syncCfg(epochs))
	for _, n := range s.nodes {
		steps := n.actions(Step)
		if len(steps) != epochs {
			t.Errorf("%s stepped %d times, want %d", n.id, len(steps), epochs)
		}
		for i, a := range steps {
			if a.act.Epoch != uint64(i) {
				t.Errorf("%s: step %d was of epoch %d", n.id, i, a.act.Epoch)
				break
			}
			// The step of epoch e is taken in epoch e+1 (the last one's
			// in its own epoch, before the run ends).
			if want := min(uint64(i)+1, epochs-1); a.epoch != want || a.act.Delayed != (i < epochs-1) {
				t.Errorf("%s: step of epoch %d taken in epoch %d (delayed %v), want in %d", n.id, i, a.epoch, a.act.Delayed, want)
			}
		}
		if c := n.actions(CatchUp); len(c) > 0 {
			t.Errorf("%s caught up %d times in a clean run", n.id, len(c))
		}
		detached := 0
		for _, a := range n.actions(Average) {
			if !a.ok {
				t.Errorf("%s: gradient round of epoch %d failed", n.id, a.act.Epoch)
			}
			if a.act.Detach {
				detached++
			}
		}
		if detached != epochs-1 {
			t.Errorf("%s detached %d rounds, want %d (all but the last)", n.id, detached, epochs-1)
		}
		var states []uint64
		for _, a := range n.actions(AverageState) {
			states = append(states, a.act.Epoch)
		}
		if fmt.Sprint(states) != "[49 59]" {
			t.Errorf("%s: state rounds at epochs %v, want [49 59]", n.id, states)
		}
	}
	if a, b := s.node("b0").model, s.node("b1").model; a != b || a != epochs {
		t.Errorf("b0 and b1 ended on models %d and %d, want %d", a, b, epochs)
	}
	if took > plain*85/100 {
		t.Errorf("the delayed run took %v, the plain one %v: the rounds did not overlap the compute", took, plain)
	}
	t.Logf("virtual time: %v delayed, %v without", took, plain)
}

// At most one round in flight: a node whose next epoch ends before its
// round landed waits for it (Land), takes its step, then starts the next
// round; and an epoch may start while a round is in flight.
func TestDelayedOneRoundInFlight(t *testing.T) {
	cfg := delayedCfg(10)
	cfg.Self = "a"
	m := New(cfg)
	now := time.Unix(1_000_000, 0)
	mate := progress.Record{Peer: "b", Shard: 1, State: progress.StateOnline, Epoch: 3, Closing: true}
	in := Input{Now: now, Records: []progress.Record{mate, {Peer: "s0", Shard: 0, State: progress.StateOnline, Epoch: 4}}, Node: Node{Shard: 1, Held: true, Online: true, Epoch: 3}}
	want := func(a Action, k Kind, epoch uint64) {
		t.Helper()
		if a.Kind != k || a.Epoch != epoch {
			t.Fatalf("got %v of epoch %d, want %v of %d", a.Kind, a.Epoch, k, epoch)
		}
	}
	want(m.Step(in, Event{}), Close, 3)
	a := m.Step(in, Event{Kind: Close, Shard: 1, Epoch: 3})
	want(a, Average, 3)
	if !a.Detach || a.Group != 2 {
		t.Fatalf("round of epoch 3: %+v, want detached, group 2", a)
	}
	want(m.Step(in, Event{Kind: Average, Detached: true}), Reopen, 4)
	if e, ok := m.InFlight(); !ok || e != 3 {
		t.Fatalf("in flight: %d %v, want epoch 3", e, ok)
	}
	// Epoch 4 ends before the round landed: land it first.
	mate.Epoch = 4
	in.Records[0], in.Records[1].Epoch, in.Node.Epoch = mate, 5, 4
	want(m.Step(in, Event{}), Close, 4)
	want(m.Step(in, Event{Kind: Close, Shard: 1, Epoch: 4}), Land, 3)
	a = m.Step(in, Event{Kind: Land, OK: true, Group: 2, Members: []string{"a", "b"}})
	want(a, Step, 3)
	if !a.Delayed {
		t.Fatal("the landed round's step is not marked delayed")
	}
	a = m.Step(in, Event{Kind: Step})
	want(a, Average, 4)
	if !a.Detach {
		t.Fatal("epoch 4's round not detached")
	}
	want(m.Step(in, Event{Kind: Average, Detached: true}), Reopen, 5)

	// It lands while epoch 5 is open: step, and back to the epoch.
	in.Node.Epoch, in.Records[0].Epoch, in.Records[0].Closing = 5, 5, false
	want(m.Step(in, Event{Kind: Land, OK: true, Group: 2, Members: []string{"a", "b"}}), Step, 4)
	if a := m.Step(in, Event{Kind: Step}); a.Kind != Wait {
		t.Fatalf("after the delayed step: %v, want wait", a.Kind)
	}
	if _, ok := m.InFlight(); ok {
		t.Fatal("a landed round is still in flight")
	}
	// The run's last epoch is not detached.
	in.Node.Epoch, in.Records[0].Epoch, in.Records[0].Closing, in.Records[1].Epoch = 9, 9, true, 10
	want(m.Step(in, Event{}), Close, 9)
	a = m.Step(in, Event{Kind: Close, Shard: 1, Epoch: 9})
	want(a, Average, 9)
	if a.Detach {
		t.Fatal("the last epoch's round was detached")
	}
}

// detachedAt3 is node a, a holder of shard 1 with b, whose epoch 3 round
// is detached and in flight; a holder of shard 0 is at epoch 4.
func detachedAt3(t *testing.T) (*Machine, Input) {
	t.Helper()
	cfg := delayedCfg(10)
	cfg.Self = "a"
	m := New(cfg)
	in := Input{Now: time.Unix(1_000_000, 0), Records: []progress.Record{{Peer: "b", Shard: 1, State: progress.StateOnline, Epoch: 3, Closing: true},
		{Peer: "s0", Shard: 0, State: progress.StateOnline, Epoch: 4}}, Node: Node{Shard: 1, Held: true, Online: true, Epoch: 3}}
	m.Step(in, Event{})
	m.Step(in, Event{Kind: Close, Shard: 1, Epoch: 3})
	m.Step(in, Event{Kind: Average, Detached: true})
	return m, in
}

// A node that moved to another shard while its round was in flight drops
// the landed round without a step.
func TestDelayedMovedDropsRound(t *testing.T) {
	m, in := detachedAt3(t)
	in.Node = Node{Shard: 0, Held: true, Online: true, Epoch: 4}
	if a := m.Step(in, Event{Kind: Land, OK: true, Group: 2}); a.Kind == Step {
		t.Fatalf("stepped shard %d's landed round on shard 0", a.Shard)
	}
	if _, ok := m.InFlight(); ok {
		t.Fatal("the dropped round is still in flight")
	}
}

// A round in flight that fails (one holder loses its result): that holder
// steps with its own gradient, counts itself drifted and runs a state
// round right after the delayed step; the swarm never stalls and ends on
// one model. (Here the round lands as the next epoch closes, so the
// one-sided state round holds the holder past its mate's next round,
// which is then incomplete too: one more state round, not one an epoch.)
func TestSimDelayedRoundFails(t *testing.T) {
	s := newSim(t, delayedCfg(20))
	s.add("a0", 0, 0, progress.StateOnline)
	b0 := s.add("b0", 1, 0, progress.StateOnline)
	b1 := s.add("b1", 1, 0, progress.StateOnline)
	s.lose = func(n *simNode, r *simRound) bool { return n == b0 && r.key == KeyGrad && r.epoch == 3 }
	s.runUntil(time.Minute, "the run's end", s.allAt(20))
	var states []uint64
	for _, a := range b0.actions(AverageState) {
		states = append(states, a.act.Epoch)
		if a.act.Epoch == 3 && !a.act.Delayed {
			t.Error("b0's state round after the delayed step of epoch 3 is not marked delayed")
		}
	}
	if len(states) < 2 || states[0] != 3 || states[len(states)-1] != 19 || len(states) > 3 {
		t.Errorf("b0's state rounds at epochs %v, want 3 first, 19 last, at most one more", states)
	}
	if st := len(b0.actions(Step)); st != 20 {
		t.Errorf("b0 stepped %d times, want 20", st)
	}
	if b0.model != b1.model {
		t.Errorf("b0 and b1 ended on models %d and %d", b0.model, b1.model)
	}
}

// A joiner that comes online mid-overlap with the state a holder serves
// (the parameters of the epoch before its open one, a round in flight)
// ends that epoch at once and detaches its round; its mates' round of that
// epoch formed without it, so it lands at once, left out (the joiner's one
// cost: a step with its own gradient), and the joiner ends on the holders'
// model without stalling them. A holder that leaves mid-overlap leaves its mate to land
// its round alone and go on.
func TestSimDelayedJoinAndLeave(t *testing.T) {
	s := newSim(t, delayedCfg(40))
	s.add("a0", 0, 0, progress.StateOnline)
	h := s.add("h", 1, 0, progress.StateOnline)
	g := s.add("g", 1, 0, progress.StateOnline)
	j := s.add("j", 1, 0, "")
	const joinAt, leaveAt = 5, 20
	s.hook = func(s *sim) {
		if _, ok := h.m.InFlight(); j.state == "" && h.epoch == joinAt && ok {
			// The state served: the model of the epoch before.
			j.state, j.held, j.epoch, j.model = progress.StateOnline, true, h.epoch-1, h.model
		}
		if _, ok := g.m.InFlight(); g.state == progress.StateOnline && g.epoch == leaveAt && ok {
			g.state = ""
		}
	}
	s.runUntil(10*time.Second, "the joiner online", func() bool { return j.state == progress.StateOnline })
	start, from := s.now, h.epoch
	s.runUntil(10*time.Second, "the joiner level", func() bool { return j.epoch > joinAt+1 })
	if took := s.now.Sub(start); took > window+4*avgTime {
		t.Errorf("the joiner took %v to be level", took)
	}
	if h.epoch < from+1 {
		t.Errorf("the holder went from epoch %d to %d while the joiner came level", from, h.epoch)
	}
	for _, a := range h.actions(Average) {
		if !a.at.Before(start) && a.took > avgTime+2*simTick {
			t.Errorf("the holder's round of epoch %d took %v while the joiner came level: it waited for the joiner", a.act.Epoch, a.took)
		}
	}
	s.runUntil(time.Minute, "the run's end", func() bool {
		return h.epoch >= 40 && j.epoch >= 40 && s.node("a0").epoch >= 40
	})
	if h.model != j.model {
		t.Errorf("holder and joiner ended on models %d and %d", h.model, j.model)
	}
	for _, n := range []*simNode{h, j} {
		for _, a := range n.actions(Average) {
			if a.took > window+avgTime {
				t.Errorf("%s: round of epoch %d took %v", n.id, a.act.Epoch, a.took)
			}
		}
	}
}

// A round in flight that fails while a holder of the shard is past it (it
// went on without this node) takes no step: the node catches up from that
// holder at its epoch's end.
func TestDelayedFailedRoundBehindCatchesUp(t *testing.T) {
	m, in := detachedAt3(t)
	in.Node.Epoch = 4
	in.Records[0].Epoch, in.Records[0].Closing, in.Records[1].Epoch = 5, false, 5
	if a := m.Step(in, Event{Kind: Land}); a.Kind != Wait {
		t.Fatalf("a failed round with a holder past it: %v, want no step (wait)", a.Kind)
	}
	if a := m.Step(in, Event{}); a.Kind != Close || a.Epoch != 4 {
		t.Fatalf("got %v of %d, want close 4 (the swarm is ahead)", a.Kind, a.Epoch)
	}
	a := m.Step(in, Event{Kind: Close, Shard: 1, Epoch: 4})
	if a.Kind != CatchUp || len(a.Donors) != 1 || a.Donors[0] != "b" {
		t.Fatalf("got %+v, want a catch-up from b", a)
	}
}
