package epochs

import (
	"fmt"
	"testing"
	"time"

	"github.com/swarm-train/swarm/swarm/progress"
)

// expect checks an action's kind, epoch and donors.
func expect(t *testing.T, got Action, kind Kind, epoch uint64, donors ...string) {
	t.Helper()
	if got.Kind != kind || got.Epoch != epoch || fmt.Sprint(got.Donors) != fmt.Sprint(donors) && len(donors)+len(got.Donors) > 0 {
		t.Fatalf("got %v epoch %d donors %v, want %v epoch %d donors %v", got.Kind, got.Epoch, got.Donors, kind, epoch, donors)
	}
}

func online(peer string, shard int, epoch uint64) progress.Record {
	return progress.Record{Peer: peer, Shard: shard, State: progress.StateOnline, Epoch: epoch}
}

// A holder whose round had a group, but whose shard-mates got two epochs
// ahead meanwhile, is behind the swarm: it catches up instead of stepping.
// One epoch ahead with a group is the normal order of steps: it steps. A
// single shard-mate two ahead is a claim nobody corroborates: it steps.
func TestBehindTheSwarmAfterRound(t *testing.T) {
	for _, c := range []struct {
		mates []uint64 // b1's and b2's epochs after the round
		want  Kind
		donor []string
	}{{[]uint64{5, 6}, Step, nil}, {[]uint64{5, 7}, Step, nil}, {[]uint64{7, 7}, CatchUp, []string{"b1", "b2"}}} {
		m := New(Config{Self: "b0", Epochs: 20, TargetBatch: 64, GroupSize: 4})
		now := time.Unix(1_000_000, 0)
		a0 := online("a0", 0, 5)
		a0.Samples = 64
		in := Input{Now: now, Records: []progress.Record{a0, online("b0", 1, 5), online("b1", 1, 5), online("b2", 1, 5)},
			Node: Node{Shard: 1, Held: true, Online: true, Epoch: 5}}
		// a0's 64 samples count once it could have finished them.
		expect(t, m.Step(in, Event{}), Wait, 0)
		in.Now = now.Add(time.Second)
		expect(t, m.Step(in, Event{}), Close, 5)
		in.Records[2].Closing, in.Records[3].Closing = true, true // the mates close it too
		act := m.Step(in, Event{Kind: Close, Shard: 1, Epoch: 5})
		expect(t, act, Average, 5)
		if act.Group != 3 || act.Key != KeyGrad || fmt.Sprint(act.Want) != "[b1 b2]" || act.Room != 3 {
			t.Fatalf("round %q of group %d wanting %v (room %d), want grad of 3 wanting b1 and b2", act.Key, act.Group, act.Want, act.Room)
		}
		in.Records[2].Epoch, in.Records[3].Epoch = c.mates[0], c.mates[1]
		act = m.Step(in, Event{Kind: Average, OK: true, Group: 2})
		if act.Kind != c.want {
			t.Errorf("mates at epochs %v: %v after a round of two, want %v", c.mates, act.Kind, c.want)
		}
		if c.want == CatchUp {
			expect(t, act, CatchUp, 5, c.donor...)
			expect(t, m.Step(in, Event{Kind: CatchUp}), Step, 5) // the donor failed: step
		}
	}
}

// A catch-up whose download took longer than an epoch loads a state the
// shard's holders have already moved one epoch past: the node reopens at
// their epoch (one step short) instead of finding them ahead again and
// catching up forever; a state two epochs stale is caught up again.
func TestCaughtUpBehindTheDonors(t *testing.T) {
	for _, c := range []struct {
		loaded, reopen uint64
	}{{7, 7}, {6, 7}, {5, 5}} {
		m := New(Config{Self: "b0", Epochs: 20, TargetBatch: 64, GroupSize: 4})
		in := Input{Now: time.Unix(1_000_000, 0), Records: []progress.Record{online("a0", 0, 7), online("b0", 1, 3), online("b1", 1, 7), online("b2", 1, 7)},
			Node: Node{Shard: 1, Held: true, Online: true, Epoch: 3}}
		expect(t, m.Step(in, Event{}), Close, 3)
		expect(t, m.Step(in, Event{Kind: Close, Shard: 1, Epoch: 3}), CatchUp, 3, "b1", "b2")
		expect(t, m.Step(in, Event{Kind: CatchUp, OK: true, Epoch: c.loaded}), Reopen, c.reopen)
	}
}

// Local mode (2f1b549, 4b85ed3): a holder behind another holder of its
// shard closes and catches up from the latest (reopening its own round if
// that fails); later shards end their rounds with the first shard's
// holders; every 10th round and the last average the outer state (unless
// the fingerprints show the holders equal: TestOuterStateOnlyWhenApart).
func TestLocalMode(t *testing.T) {
	cfg := Config{Self: "b0", Epochs: 20, BatchSize: 8, GroupSize: 4, Local: true, LocalSteps: 4}
	now := time.Unix(1_000_000, 0)
	node := Node{Shard: 1, Held: true, Online: true, Epoch: 3}

	m := New(cfg)
	in := Input{Now: now, Records: []progress.Record{online("b1", 1, 4), online("b2", 1, 5), online("b3", 1, 5)}, Node: node}
	expect(t, m.Step(in, Event{}), Close, 3)
	expect(t, m.Step(in, Event{Kind: Close, Shard: 1, Epoch: 3}), CatchUp, 3, "b2", "b3")
	expect(t, m.Step(in, Event{Kind: CatchUp, OK: true, Epoch: 5}), Reopen, 5)
	expect(t, m.Step(in, Event{}), Close, 3)
	expect(t, m.Step(in, Event{Kind: Close, Shard: 1, Epoch: 3}), CatchUp, 3, "b2", "b3")
	expect(t, m.Step(in, Event{Kind: CatchUp}), Reopen, 3)

	// The donors serve their last outer state, a round behind their records
	// while they are in the next outer round: the node reopens in the round
	// they are in, or it would find them ahead and catch up again, forever.
	m = New(cfg)
	expect(t, m.Step(in, Event{}), Close, 3)
	expect(t, m.Step(in, Event{Kind: Close, Shard: 1, Epoch: 3}), CatchUp, 3, "b2", "b3")
	expect(t, m.Step(in, Event{Kind: CatchUp, OK: true, Epoch: 4}), Reopen, 5)
	// A lone mate's far-ahead claim is not the swarm's round: it sets
	// nothing (SwarmEpoch, TestBehindTheSwarmAfterRound).
	m = New(cfg)
	lone := Input{Now: now, Records: []progress.Record{online("b1", 1, 3), online("b2", 1, 3), online("b3", 1, 500)}, Node: node}
	expect(t, m.Step(lone, Event{}), Wait, 0)

	// Shard 1 has taken its steps; it still waits for the first shard.
	m = New(cfg)
	node.Samples = 100
	in = Input{Now: now, Records: []progress.Record{online("a0", 0, 3)}, Node: node}
	expect(t, m.Step(in, Event{}), Wait, 0)
	in.Records[0].Epoch = 4
	expect(t, m.Step(in, Event{}), OuterStep, 3)

	// A holder whose every mate is in an earlier round waits for them
	// (AheadWait at most) before its outer step; then it goes on, and the
	// mate that did not come is not waited for again.
	m = New(Config{Self: "a0", Epochs: 20, BatchSize: 8, GroupSize: 4, Local: true, LocalSteps: 4})
	lead := Node{Shard: 0, Held: true, Online: true, Epoch: 5, Samples: 64}
	behind := Input{Now: now, Records: []progress.Record{online("a1", 0, 3)}, Node: lead}
	expect(t, m.Step(behind, Event{}), Wait, 0)
	behind.Now = now.Add(AheadWait)
	expect(t, m.Step(behind, Event{}), OuterStep, 5)
	lead.Epoch = 6
	expect(t, m.Step(Input{Now: behind.Now, Records: behind.Records, Node: lead}, Event{}), OuterStep, 6)
	// A mate in the same round: no wait.
	m = New(Config{Self: "a0", Epochs: 20, BatchSize: 8, GroupSize: 4, Local: true, LocalSteps: 4})
	lead.Epoch = 5
	same := online("a2", 0, 5)
	same.Samples = 64
	expect(t, m.Step(Input{Now: now, Records: []progress.Record{online("a1", 0, 3), same}, Node: lead}, Event{}), OuterStep, 5)

	for _, c := range []struct {
		round uint64
		full  bool
	}{{3, false}, {9, true}, {10, false}, {18, false}, {19, true}} {
		m = New(cfg)
		n := Node{Shard: 0, Held: true, Online: true, Epoch: c.round, Samples: 32}
		act := m.Step(Input{Now: now, Node: n}, Event{})
		expect(t, act, OuterStep, c.round)
		if act.Full != c.full {
			t.Errorf("round %d: full %v, want %v", c.round, act.Full, c.full)
		}
	}
}

// TestOuterStateOnlyWhenApart: the rounds that may average the outer state
// (every OuterStateEvery-th, and the run's last) do so only where a mate
// in the round shows another fingerprint of it than this node's, or none,
// or this node has none; mates in other rounds are not asked, and other
// rounds never average it.
func TestOuterStateOnlyWhenApart(t *testing.T) {
	cfg := Config{Self: "a0", Epochs: 20, BatchSize: 8, GroupSize: 4, Local: true, LocalSteps: 4}
	now := time.Unix(1_000_000, 0)
	mate := func(peer string, epoch, outer uint64) progress.Record {
		r := online(peer, 0, epoch)
		r.Samples, r.Outer = 32, outer
		return r
	}
	for _, c := range []struct {
		name  string
		round uint64
		own   uint64
		mates []progress.Record
		full  bool
	}{
		{"equal", 9, 7, []progress.Record{mate("a1", 9, 7), mate("a2", 9, 7)}, false},
		{"one apart", 9, 7, []progress.Record{mate("a1", 9, 7), mate("a2", 9, 5)}, true},
		{"a mate without one", 9, 7, []progress.Record{mate("a1", 9, 7), mate("a2", 9, 0)}, true},
		{"this node without one", 9, 0, []progress.Record{mate("a1", 9, 7)}, true},
		{"a mate a round behind", 9, 7, []progress.Record{mate("a1", 9, 7), mate("a2", 8, 5)}, false},
		{"the last round, equal", 19, 7, []progress.Record{mate("a1", 19, 7)}, false},
		{"the last round, apart", 19, 7, []progress.Record{mate("a1", 19, 3)}, true},
		{"not a state round", 10, 7, []progress.Record{mate("a1", 10, 3)}, false},
		{"another shard's holder", 9, 7, []progress.Record{mate("a1", 9, 7), {Peer: "b1", Shard: 1, State: progress.StateOnline, Epoch: 9, Outer: 3}}, false},
	} {
		m := New(cfg)
		n := Node{Shard: 0, Held: true, Online: true, Epoch: c.round, Samples: 64, Outer: c.own}
		act := m.Step(Input{Now: now, Records: c.mates, Node: n}, Event{})
		if act.Kind != OuterStep || act.Epoch != c.round {
			t.Errorf("%s: %v of epoch %d, want the outer step of %d", c.name, act.Kind, act.Epoch, c.round)
		}
		if act.Full != c.full {
			t.Errorf("%s: full %v, want %v", c.name, act.Full, c.full)
		}
	}
}

// TestLocalRoundWaitsForAJoiner: a local-mode round that is due while a
// holder loads the shard's state to join it waits for it, JoinWait at most
// (its outer step alone would part the two); the joiner online, the round
// is the two's; a joiner that did not come in time is not waited for again.
func TestLocalRoundWaitsForAJoiner(t *testing.T) {
	cfg := Config{Self: "a0", Epochs: 20, BatchSize: 8, GroupSize: 4, Local: true, LocalSteps: 4}
	now := time.Unix(1_000_000, 0)
	n := Node{Shard: 0, Held: true, Online: true, Epoch: 2, Samples: 64, Outer: 7}
	joiner := progress.Record{Peer: "a1", Shard: 0, State: progress.StateJoining}
	other := progress.Record{Peer: "b1", Shard: 1, State: progress.StateJoining} // another shard's: not waited for

	m := New(cfg)
	in := Input{Now: now, Records: []progress.Record{joiner, other}, Node: n}
	expect(t, m.Step(in, Event{}), Wait, 0)
	in.Now = now.Add(JoinWait - time.Millisecond)
	expect(t, m.Step(in, Event{}), Wait, 0)
	// Online in this round, with the anchor it loaded: one round of two.
	online := online("a1", 0, 2)
	online.Outer = 7
	in.Records[0] = online
	act := m.Step(in, Event{})
	expect(t, act, OuterStep, 2)
	if act.Group != 2 || act.Full {
		t.Fatalf("round of group %d (full %v), want 2, not full", act.Group, act.Full)
	}

	// Not come within JoinWait: the round goes on alone, and the next one
	// does not wait for it again.
	m = New(cfg)
	in = Input{Now: now, Records: []progress.Record{joiner}, Node: n}
	expect(t, m.Step(in, Event{}), Wait, 0)
	in.Now = now.Add(JoinWait)
	expect(t, m.Step(in, Event{}), OuterStep, 2)
	in.Node.Epoch = 3
	expect(t, m.Step(in, Event{}), OuterStep, 3)

	// Sync mode does not wait.
	m = New(Config{Self: "a0", Epochs: 20, TargetBatch: 64, GroupSize: 4})
	expect(t, m.Step(Input{Now: now, Records: []progress.Record{joiner}, Node: n}, Event{}), Close, 2)
}

// Over a slow link a mate's closing record arrives later than GatherGrace:
// the first such gather runs out (the mate is late for that round), and the
// wait adapts, so that from then on the round waits for it: twice the
// latest arrival, coming down slowly when mates close sooner, never above
// GatherMax. A mate that never closes is late once and costs nothing more.
func TestGatherWaitAdapts(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	m := New(Config{Self: "b0", Epochs: 200, TargetBatch: 64, GroupSize: 4})
	recs := []progress.Record{online("a0", 0, 5), online("b0", 1, 5), online("b1", 1, 5), online("x", 1, 5)}
	in := Input{Now: now, Records: recs, Node: Node{Shard: 1, Held: true, Online: true, Epoch: 5}}
	// epoch runs one gather in which b1 closes at once and x after xAfter
	// (never: 0), ticking every 10 ms, and returns the round's group.
	epoch := func(e uint64, xAfter time.Duration) int {
		t.Helper()
		m.phase, m.shard, m.epoch = open, 1, e
		for i := range in.Records {
			in.Records[i].Epoch, in.Records[i].Closing = e, in.Records[i].Peer == "b1"
		}
		start := in.Now
		for {
			if xAfter > 0 && in.Now.Sub(start) >= xAfter {
				in.Records[3].Closing = true
			}
			if act := m.gather(in); act.Kind == Average {
				members := []string{"b0", "b1"}
				if act.Group == 3 {
					members = append(members, "x") // it joined the round waiting for it
				}
				m.noteRound(in, members)
				return act.Group
			}
			in.Now = in.Now.Add(10 * time.Millisecond)
			if in.Now.Sub(start) > 2*GatherMax {
				t.Fatalf("epoch %d: still gathering after %v", e, in.Now.Sub(start))
			}
		}
	}

	// x's record shows it closing 300 ms after ours: the first gather runs
	// out at GatherGrace, the next ones wait for it.
	if g := epoch(5, 300*time.Millisecond); g != 2 {
		t.Fatalf("epoch 5: group %d, want 2 (x's closing after the first %v)", g, GatherGrace)
	}
	if w := m.gatherWait(); w != 2*GatherGrace {
		t.Fatalf("after a gather that ran out: wait %v, want %v", w, 2*GatherGrace)
	}
	m.noteRound(in, []string{"b0", "b1", "x"}) // x joined a round since: reliable again
	for e := uint64(6); e < 12; e++ {
		if g := epoch(e, 300*time.Millisecond); g != 3 {
			t.Fatalf("epoch %d: group %d with x closing 300 ms after us (wait %v), want 3", e, g, m.gatherWait())
		}
	}
	if w := m.gatherWait(); w < 600*time.Millisecond || w > 700*time.Millisecond {
		t.Errorf("x closing 300 ms after us: wait %v, want about twice that", w)
	}
	// Mates closing with us: the wait comes down, a quarter an epoch, to
	// GatherGrace.
	prev := m.gatherWait()
	for e := uint64(12); e < 30; e++ {
		epoch(e, time.Millisecond)
		if w := m.gatherWait(); w < prev*3/4-time.Millisecond || w < GatherGrace {
			t.Fatalf("epoch %d: wait %v after %v, want at least three quarters of it and %v", e, w, prev, GatherGrace)
		}
		prev = m.gatherWait()
	}
	if prev != GatherGrace {
		t.Errorf("mates closing with us for 18 epochs: wait %v, want %v", prev, GatherGrace)
	}
	// However late x's record is, the wait stays within GatherMax.
	for e := uint64(30); e < 36; e++ {
		epoch(e, 900*time.Millisecond)
		m.noteRound(in, []string{"b0", "b1", "x"})
		if w := m.gatherWait(); w > GatherMax {
			t.Fatalf("epoch %d: wait %v, above GatherMax", e, w)
		}
	}
	if w := m.gatherWait(); w != GatherMax {
		t.Errorf("x closing 900 ms after us: wait %v, want %v", w, GatherMax)
	}
	// x never closes again: late in the first gather, not waited for after.
	epoch(36, 0)
	for e := uint64(37); e < 37+LateProbe-1; e++ {
		start := in.Now
		if g := epoch(e, 0); g != 2 || in.Now.Sub(start) > 0 {
			t.Fatalf("epoch %d: group %d after %v with x late, want 2 at once", e, g, in.Now.Sub(start))
		}
	}
}

// A holder that closed its epoch waits, GatherGrace at most, for its
// shard-mates' records to show them closing it too; the round then starts
// as soon as those closing joined (with none closing, it waits for any
// mate). A mate waited for that did not join the round is late: not waited
// for again until it joins one, or every LateProbe epochs.
func TestGatherClosingMates(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	start := func(closing ...bool) (*Machine, Input) {
		m := New(Config{Self: "b0", Epochs: 200, TargetBatch: 64, GroupSize: 4})
		a0 := online("a0", 0, 5)
		a0.Samples = 64
		in := Input{Now: now, Records: []progress.Record{a0, online("b0", 1, 5), online("b1", 1, 5), online("x", 1, 5)},
			Node: Node{Shard: 1, Held: true, Online: true, Epoch: 5}}
		in.Records[2].Closing, in.Records[3].Closing = closing[0], closing[1]
		m.Step(in, Event{})
		in.Now = now.Add(time.Second)
		expect(t, m.Step(in, Event{}), Close, 5)
		return m, in
	}

	m, in := start(true, false)
	expect(t, m.Step(in, Event{Kind: Close, Shard: 1, Epoch: 5}), Wait, 0) // x not closing yet
	in.Now = in.Now.Add(GatherGrace / 2)
	expect(t, m.Step(in, Event{}), Wait, 0)
	in.Now = in.Now.Add(GatherGrace)
	act := m.Step(in, Event{})
	expect(t, act, Average, 5)
	if act.Group != 2 {
		t.Errorf("group %d with x never closing, want 2 (b0 and b1)", act.Group)
	}

	m, in = start(true, false)
	expect(t, m.Step(in, Event{Kind: Close, Shard: 1, Epoch: 5}), Wait, 0)
	in.Records[3].Closing = true // x closes within the grace
	if act := m.Step(in, Event{}); act.Kind != Average || act.Group != 3 {
		t.Errorf("%v of group %d with every mate closing, want average of 3", act.Kind, act.Group)
	}

	m, in = start(false, false)
	m.Step(in, Event{Kind: Close, Shard: 1, Epoch: 5})
	in.Now = in.Now.Add(2 * GatherGrace)
	if act := m.Step(in, Event{}); act.Kind != Average || act.Group != 3 {
		t.Errorf("%v of group %d with no mate closing, want average of 3 (any mate)", act.Kind, act.Group)
	}

	// x closes its epochs (it says so) but does not join the round of
	// epoch 5: late. The next rounds neither wait for it nor count on it,
	// but every LateProbe epochs; once it joins a round it is waited for
	// again.
	m, in = start(true, true)
	expect(t, m.Step(in, Event{Kind: Close, Shard: 1, Epoch: 5}), Average, 5)
	act = m.Step(in, Event{Kind: Average, OK: true, Group: 2, Members: []string{"b0", "b1"}})
	expect(t, act, Step, 5)
	for e := uint64(6); e <= 5+LateProbe; e++ {
		m.phase, m.epoch = open, e
		for i := range in.Records {
			in.Records[i].Epoch = e
		}
		act := m.gather(in)
		probe := e == 5+LateProbe
		switch {
		case !probe && (act.Kind != Average || act.Group != 2):
			t.Fatalf("epoch %d: %v of group %d with x late since epoch 5, want average of 2", e, act.Kind, act.Group)
		case probe && (act.Kind != Average || act.Group != 3):
			t.Fatalf("epoch %d: %v of group %d, want the probe: average of 3", e, act.Kind, act.Group)
		}
	}
	m.noteRound(in, []string{"b0", "b1", "x"}) // it joined the probe
	m.phase, m.epoch = open, 6+LateProbe
	for i := range in.Records {
		in.Records[i].Epoch = 6 + LateProbe
	}
	if act := m.gather(in); act.Kind != Average || act.Group != 3 {
		t.Errorf("%v of group %d after x joined a round, want average of 3", act.Kind, act.Group)
	}
}
