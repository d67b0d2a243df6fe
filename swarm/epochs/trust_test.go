package epochs

import (
	"math"
	"testing"
	"time"

	"github.com/swarm-train/swarm/swarm/progress"
)

// The swarm's epoch is what two holders reached, or a lone holder of a
// shard one epoch past that; never one peer's claim.
func TestSwarmEpoch(t *testing.T) {
	rec := func(peer string, shard int, epoch uint64) progress.Record { return online(peer, shard, epoch) }
	done := rec("x", 1, 600)
	done.State = progress.StateDone
	joining := rec("j", 1, 900)
	joining.State = progress.StateJoining
	for _, c := range []struct {
		name string
		recs []progress.Record
		want uint64
	}{
		{"clean", []progress.Record{rec("a0", 0, 5), rec("a1", 0, 5), rec("b0", 1, 5), rec("b1", 1, 5)}, 5},
		{"liar at 2^64-1", []progress.Record{rec("a0", 0, 5), rec("a1", 0, 5), rec("b0", 1, 5), rec("b1", 1, 5), rec("x", 1, math.MaxUint64)}, 5},
		{"liar at +100", []progress.Record{rec("a0", 0, 5), rec("a1", 0, 5), rec("b0", 1, 5), rec("x", 0, 105)}, 5},
		{"liar done", []progress.Record{rec("a0", 0, 5), rec("a1", 0, 5), rec("b0", 1, 5), rec("b1", 1, 5), done}, 5},
		{"joining and shardless ignored", []progress.Record{rec("a0", 0, 5), rec("b0", 1, 5), joining, rec("y", -1, 99)}, 5},
		{"two holders ahead", []progress.Record{rec("a0", 0, 10), rec("a1", 0, 10), rec("b0", 1, 7), rec("b1", 1, 7)}, 10},
		{"one holder of each shard", []progress.Record{rec("a0", 0, 6), rec("b0", 1, 5)}, 6},
		{"lone liar far ahead", []progress.Record{rec("a0", 0, 5), rec("b0", 1, 105)}, 6},
		{"liar alone before anyone chose a shard", []progress.Record{rec("x", 0, 600), rec("j", -1, 0)}, 1},
	} {
		if got := SwarmEpoch(c.recs); got != c.want {
			t.Errorf("%s: swarm epoch %d, want %d", c.name, got, c.want)
		}
	}
}

// The run's only holder is believed once it was watched advancing: a
// record frozen far ahead (a liar's single record) never is, a holder that
// trains is after SoleWatchFor, up to its epoch plus what it advanced while
// watched; another holder restarts the watch, and two holders are not a
// sole holder at all.
func TestSoleWatch(t *testing.T) {
	t0 := time.Unix(1000, 0)
	if _, ok := SoleHolder([]progress.Record{online("a", 0, 5), online("b", 1, 5)}); ok {
		t.Fatal("two holders taken for the run's only one")
	}
	j := online("j", -1, 0)
	j.State = progress.StateJoining
	rec, ok := SoleHolder([]progress.Record{online("x", 0, 600), j})
	if !ok || rec.Peer != "x" {
		t.Fatalf("sole holder %+v %v, want x", rec, ok)
	}

	var frozen SoleWatch
	for s := range 10 {
		if _, ok := frozen.Observe(online("x", 0, 600), t0.Add(time.Duration(s)*time.Second)); ok {
			t.Fatalf("a record that never advanced was believed after %d s", s)
		}
	}

	var w SoleWatch
	steps := []struct {
		after time.Duration
		rec   progress.Record
		limit uint64
		ok    bool
	}{
		{0, online("v", 0, 97), 0, false},
		{time.Second, online("v", 0, 200), 0, false},                // advancing, not watched long enough
		{SoleWatchFor, online("v", 0, 415), 415 + 318, true},        // 318 epochs while watched
		{SoleWatchFor + time.Second, online("w", 0, 900), 0, false}, // another holder: watch again
		{2*SoleWatchFor + time.Second, online("w", 0, 901), 0, false},
		{2*SoleWatchFor + time.Second, online("w", 0, 902), 904, true},
		{3 * SoleWatchFor, online("w", 0, 10), 0, false}, // went back: watch again
	}
	for i, s := range steps {
		limit, ok := w.Observe(s.rec, t0.Add(s.after))
		if ok != s.ok || limit != s.limit {
			t.Errorf("step %d (%s at epoch %d): limit %d %v, want %d %v", i, s.rec.Peer, s.rec.Epoch, limit, ok, s.limit, s.ok)
		}
	}
	var huge SoleWatch
	huge.Observe(online("z", 0, math.MaxUint64-3), t0)
	if limit, ok := huge.Observe(online("z", 0, math.MaxUint64-1), t0.Add(SoleWatchFor)); !ok || limit != math.MaxUint64 {
		t.Errorf("near 2^64: limit %d %v, want it saturated", limit, ok)
	}
}

// lying adds to a clean two-shard swarm a Byzantine peer x on shard whose
// record lie rewrites; it never averages or serves.
func lyingSwarm(t *testing.T, epochs uint64, shard int, lie func(s *sim, r *progress.Record)) *sim {
	s := newSim(t, syncCfg(epochs))
	for _, id := range []string{"a0", "a1"} {
		s.add(id, 0, 0, progress.StateOnline)
	}
	for _, id := range []string{"b0", "b1"} {
		s.add(id, 1, 0, progress.StateOnline)
	}
	if lie != nil {
		x := s.add("x", shard, 0, progress.StateOnline)
		x.phantom, x.lie = true, lie
	}
	return s
}

// lowest is the lowest epoch of the honest nodes.
func (s *sim) lowest() uint64 {
	low := uint64(math.MaxUint64)
	for _, n := range s.nodes {
		if !n.phantom {
			low = min(low, n.epoch)
		}
	}
	return low
}

// honestSamples is, per epoch, the samples the first shard's honest
// holders had finished when the first of them closed it.
func (s *sim) honestSamples() map[uint64]int {
	out := map[uint64]int{}
	for _, id := range []string{"a0", "a1"} {
		for _, a := range s.node(id).actions(Close) {
			out[a.epoch] += a.samples
		}
	}
	return out
}

// One Byzantine peer whose record claims a far-ahead epoch (2^64-1, 100
// ahead, the run's end, or always one ahead of the swarm) in either shard
// cannot move the swarm: every honest node takes every step, never asks it
// for its state, and each epoch holds the target batch, so the run takes
// as long as a clean one.
func TestSimLiarAheadCannotMoveSwarm(t *testing.T) {
	const epochs = 40
	clean := lyingSwarm(t, epochs, 0, nil)
	clean.runUntil(time.Minute, "the clean run's end", clean.allAt(epochs))
	cleanTook := clean.now.Sub(time.Unix(1_000_000, 0))
	for _, c := range []struct {
		name string
		to   func(s *sim) uint64
	}{
		{"2^64-1", func(*sim) uint64 { return math.MaxUint64 }},
		{"+100", func(s *sim) uint64 { return s.lowest() + 100 }},
		{"the run's end", func(*sim) uint64 { return epochs }},
		{"+1", func(s *sim) uint64 { return s.lowest() + 1 }},
	} {
		for shard := range 2 {
			s := lyingSwarm(t, epochs, shard, func(s *sim, r *progress.Record) {
				r.Epoch = c.to(s)
				if r.Epoch >= epochs {
					r.State = progress.StateDone
				}
			})
			s.runUntil(time.Minute, c.name+": the run's end", s.allAt(epochs))
			if took := s.now.Sub(time.Unix(1_000_000, 0)); took < cleanTook*9/10 {
				t.Errorf("%s on shard %d: the run took %v, the clean one %v: epochs ended early", c.name, shard, took, cleanTook)
			}
			for _, n := range s.nodes {
				if n.phantom {
					continue
				}
				if st := len(n.actions(Step)); st != epochs {
					t.Errorf("%s on shard %d: %s stepped %d times, want %d", c.name, shard, n.id, st, epochs)
				}
				for _, a := range n.actions(CatchUp) {
					t.Errorf("%s on shard %d: %s asked %v for a state at epoch %d", c.name, shard, n.id, a.act.Donors, a.epoch)
				}
			}
			for e, got := range s.honestSamples() {
				if got < s.cfg.TargetBatch {
					t.Errorf("%s on shard %d: epoch %d closed with %d honest samples of %d", c.name, shard, e, got, s.cfg.TargetBatch)
				}
			}
		}
	}
}

// Two honest holders ahead do move the swarm (and a lone honest holder of
// its shard one epoch ahead does, so that thin swarms keep moving).
func TestSimCorroboratedAheadMoves(t *testing.T) {
	s := newSim(t, syncCfg(20))
	s.add("a0", 0, 8, progress.StateOnline)
	s.add("a1", 0, 8, progress.StateOnline)
	b0 := s.add("b0", 1, 3, progress.StateOnline)
	s.runUntil(2*time.Second, "the lone holder left behind level with the first shard", func() bool { return b0.epoch >= 8 })
	s.runUntil(time.Minute, "the run's end", s.allAt(20))

	thin := newSim(t, syncCfg(20))
	thin.add("a0", 0, 0, progress.StateOnline)
	thin.add("b0", 1, 0, progress.StateOnline)
	thin.runUntil(time.Minute, "a one-holder-per-shard run's end", thin.allAt(20))
}

// A peer that reports more samples than it could have finished (at an
// announced rate of 1e9/s) counts only what the first shard's typical rate
// allows since it was seen in the epoch: the honest holders still finish
// most of every epoch's target batch (unbounded, its record alone would
// close every epoch with none).
func TestSimInflatedSamplesBounded(t *testing.T) {
	const epochs = 30
	s := lyingSwarm(t, epochs, 0, func(s *sim, r *progress.Record) {
		r.Epoch = s.node("a0").epoch
		// The whole target batch at once (more would be a lie on its face).
		r.Samples, r.Throughput = s.cfg.TargetBatch, 1e9
	})
	s.runUntil(5*time.Minute, "the run's end", s.allAt(epochs))
	for e, got := range s.honestSamples() {
		if got < s.cfg.TargetBatch/3 {
			t.Errorf("epoch %d closed with %d honest samples of %d", e, got, s.cfg.TargetBatch)
		}
	}
	// It never closes its epoch when they do (nor joins a round): the
	// honest holders do not wait for it (it was late, gather), but once
	// every LateProbe epochs, so the run takes about as long as a clean one.
	clean := lyingSwarm(t, epochs, 0, nil)
	clean.runUntil(5*time.Minute, "the clean run's end", clean.allAt(epochs))
	took, cleanTook := s.now.Sub(time.Unix(1_000_000, 0)), clean.now.Sub(time.Unix(1_000_000, 0))
	t.Logf("with the liar %v, clean %v", took, cleanTook)
	if took > cleanTook*3/2 {
		t.Errorf("the run took %v with a liar that never closes in time, the clean one %v", took, cleanTook)
	}

	// The bound itself: rate × time with slack, from when the peer was
	// first seen in the epoch (a liar that claims no more than the target
	// batch, so that its record is not a lie on its face).
	m := New(Config{Self: "a0", TargetBatch: 1000, BatchSize: 8})
	t0 := time.Unix(1_000_000, 0)
	honest := progress.Record{Peer: "a1", Shard: 0, State: progress.StateOnline, Epoch: 3, Throughput: 100}
	liar := progress.Record{Peer: "x", Shard: 0, State: progress.StateOnline, Epoch: 3, Throughput: 1e9, Samples: 500, InFlight: 500}
	self := Node{Shard: 0, Held: true, Online: true, Epoch: 3}
	selfRec := progress.Record{Peer: "a0", Shard: 0, State: progress.StateOnline, Epoch: 3, Throughput: 100}
	in := Input{Now: t0, Records: []progress.Record{selfRec, honest, liar}, Node: self}
	if got := m.Samples(in); got != 16 {
		t.Errorf("at first sight the liar counts %d samples, want 16 (two micro-batches)", got)
	}
	in.Now = t0.Add(100 * time.Millisecond)
	// rate cap: lower median of 100, 100, 1e9 = 100, and the floor (the
	// target batch per second) is 1000: 16 + 2 × 1000 × 0.1.
	if got, want := m.Samples(in), 16+RateSlack*100; got != want {
		t.Errorf("a second later the liar counts %d samples, want %d", got, want)
	}
	if got, want := m.Claimed(in), 16+RateSlack*100; got != want {
		t.Errorf("claimed %d with the liar's in-flight claim, want %d (finished and in flight within one bound)", got, want)
	}
	in.Records[2].Epoch = 4 // a new epoch starts its budget again
	in.Node.Epoch = 4
	in.Records[0].Epoch, in.Records[1].Epoch = 4, 4
	if got := m.Samples(in); got != 16 {
		t.Errorf("in its next epoch the liar counts %d samples at once, want 16", got)
	}
}

// Clipping takes each other shard's norm as the lower median of its
// holders' reports, a lone report at most MaxNormRatio times this shard's
// norm: one 1e300 cannot drive the clip scale to 0.
func TestGlobalNormSq(t *testing.T) {
	for _, c := range []struct {
		name    string
		reports map[int][]float64
		want    float64
	}{
		{"own shard only", nil, 1},
		{"honest", map[int][]float64{1: {2, 2}}, 3},
		{"liar beside one honest holder", map[int][]float64{1: {2, 1e300}}, 3},
		{"liar beside two", map[int][]float64{1: {1e300, 2, 2}}, 3},
		{"lone liar capped", map[int][]float64{1: {1e300}}, 1 + MaxNormRatio*MaxNormRatio},
		{"lone honest", map[int][]float64{1: {4}, 2: {9}}, 14},
	} {
		if got := GlobalNormSq(1, c.reports); got != c.want {
			t.Errorf("%s: %g, want %g", c.name, got, c.want)
		}
	}
}

// A first-shard peer whose record is in another epoch (a liar claiming one
// far ahead) holds no share of this epoch's target batch: the honest
// holders draw all of it.
func TestShareOnlyInThisEpoch(t *testing.T) {
	m := New(Config{Self: "a0", TargetBatch: 256, BatchSize: 8})
	now := time.Unix(1_000_000, 0)
	self := Node{Shard: 0, Held: true, Online: true, Epoch: 2}
	recs := []progress.Record{online("a0", 0, 2), online("a1", 0, 2), online("x", 0, 102)}
	if got := m.Share(Input{Now: now, Records: recs, Node: self}); got != 128 {
		t.Errorf("share %d with a liar in another epoch, want 128 (two holders)", got)
	}
	recs[2].Epoch = 2
	if got := m.Share(Input{Now: now, Records: recs, Node: self}); got != 86 {
		t.Errorf("share %d with three holders in the epoch, want 86", got)
	}
}

// A first-shard holder whose record is still in the epoch before this
// node's (it reopens with this node, its record is on its way) holds a
// share within ShareGrace of this node's opening; so does one in the epoch
// that has not started on it yet. After the grace only holders that
// started or finished samples in the epoch do: one that stays behind or
// idle cannot keep the epoch from filling.
func TestShareGrace(t *testing.T) {
	m := New(Config{Self: "a0", Epochs: 100, TargetBatch: 256, BatchSize: 8})
	t0 := time.Unix(1_000_000, 0)
	self := Node{Shard: 0, Held: true, Online: true, Epoch: 2}
	// The core reopens epoch 2 at t0.
	m.phase = stepping
	m.shard, m.epoch, m.stepEpoch = 0, 1, 1
	if a := m.Step(Input{Now: t0, Node: Node{Shard: 0, Held: true, Online: true, Epoch: 1}}, Event{Kind: Step}); a.Kind != Reopen || a.Epoch != 2 {
		t.Fatalf("got %v epoch %d, want reopen 2", a.Kind, a.Epoch)
	}
	behind, idle, started := online("a1", 0, 1), online("a2", 0, 2), online("a3", 0, 2)
	started.InFlight = 8
	far := online("a4", 0, 0)
	recs := []progress.Record{online("a0", 0, 2), behind, idle, started, far}
	share := func(at time.Duration) int { return m.Share(Input{Now: t0.Add(at), Records: recs, Node: self}) }
	if got := share(ShareGrace - time.Millisecond); got != 64 {
		t.Errorf("share %d within the grace, want 64 (a0 to a3; a4 is two epochs behind)", got)
	}
	if got := share(ShareGrace); got != 128 {
		t.Errorf("share %d after the grace, want 128 (a0 and a3, which started)", got)
	}
	recs[1].Epoch, recs[1].InFlight = 2, 8 // a1 reopened and started
	if got := share(ShareGrace + time.Millisecond); got != 86 {
		t.Errorf("share %d with a1 started too, want 86", got)
	}
	// A core that never saw the epoch open counts the grace from the
	// first time it sees the epoch.
	fresh := New(Config{Self: "a0", Epochs: 100, TargetBatch: 256, BatchSize: 8})
	in := Input{Now: t0, Records: []progress.Record{online("a0", 0, 2), online("a1", 0, 1)}, Node: self}
	if got := fresh.Share(in); got != 128 {
		t.Errorf("share %d at first sight, want 128", got)
	}
	in.Now = t0.Add(ShareGrace)
	if got := fresh.Share(in); got != 256 {
		t.Errorf("share %d a grace after first sight, want 256", got)
	}
	// At epoch 0, a record at 2^64-1 is not one behind.
	zero := New(Config{Self: "a0", Epochs: 100, TargetBatch: 256, BatchSize: 8})
	in = Input{Now: t0, Records: []progress.Record{online("a0", 0, 0), online("x", 0, math.MaxUint64)}, Node: Node{Shard: 0, Held: true, Online: true}}
	if got := zero.Share(in); got != 256 {
		t.Errorf("share %d at epoch 0 beside a record at 2^64-1, want 256", got)
	}
}

// A first-shard record claiming more finished than the target batch and a
// micro-batch, or more finished and in flight than twice the target batch
// and a full pipeline, is a lie on its face (an honest one was
// seen at 256 + 64 of 256; a lone holder with --in-flight 64 has 64
// micro-batches out): the peer counts nothing, holds no share, is not waited
// for in rounds, and is named for a ban with the evidence.
func TestOverclaimIsALie(t *testing.T) {
	m := New(Config{Self: "a0", TargetBatch: 256, BatchSize: 8, GroupSize: 4})
	now := time.Unix(1_000_000, 0)
	liar := online("x", 0, 2)
	liar.Samples, liar.InFlight = 4096, 4096
	honest := online("a1", 0, 2)
	honest.Samples, honest.InFlight = 256, 64
	full := online("a1", 0, 2)
	full.Samples, full.InFlight = 256, MaxInFlightBatches*8 // a full pipeline of 8-sample micro-batches
	if m.Overclaims(honest) || m.Overclaims(full) {
		t.Fatal("an honest holder's claim counted as a lie")
	}
	in := Input{Now: now, Records: []progress.Record{online("a0", 0, 2), honest, liar}, Node: Node{Shard: 0, Held: true, Online: true, Epoch: 2}}
	if got := m.Share(in); got != 128 {
		t.Errorf("share %d, want 128 (the liar holds none)", got)
	}
	in.Now = now.Add(time.Hour) // every bound long past
	if got := m.Samples(in); got != 256 {
		t.Errorf("samples %d, want the honest 256", got)
	}
	lies := m.Verdicts(in)
	if len(lies) != 1 || lies[0].Peer != "x" || lies[0].Rule != RuleSamples {
		t.Fatalf("verdicts %+v, want x", lies)
	}
	if again := m.Verdicts(in); len(again) != 0 {
		t.Errorf("verdicts %+v the second time: a peer is condemned once", again)
	}
	m.shard, m.epoch = 0, 2
	if got := m.mates(in); len(got) != 1 || got[0] != "a1" {
		t.Errorf("round mates %v, want a1 only", got)
	}
	local := New(Config{Self: "a0", TargetBatch: 256, Local: true})
	if len(local.Verdicts(in)) != 0 {
		t.Error("local mode counts samples per round: no lie to see")
	}

	// Finished samples alone: an honest holder finishes at most its share
	// of the target batch; more than the whole and a micro-batch is a lie.
	done := online("a1", 0, 2)
	done.Samples = 256 + 8
	if m.Overclaims(done) {
		t.Error("the target batch and a micro-batch finished counted as a lie")
	}
	done.Samples++
	if !m.Overclaims(done) {
		t.Error("more than the target batch and a micro-batch finished is not a lie")
	}
}

// A shard-mate one epoch ahead that the rest of the shard does not follow
// (a liar riding the other shard's lead) neither aborts the round nor is
// offered as a donor; a lone shard-mate ahead, or two, are.
func TestHoldersAheadNeedTheShard(t *testing.T) {
	m := New(Config{Self: "a0", TargetBatch: 64, GroupSize: 4})
	recs := []progress.Record{online("a0", 0, 5), online("a1", 0, 5), online("x", 0, 6), online("b0", 1, 6), online("b1", 1, 6)}
	in := Input{Records: recs, Node: Node{Shard: 0, Held: true, Online: true, Epoch: 5}}
	if d := m.holdersAhead(in, 0, 5); len(d) != 0 {
		t.Errorf("holders ahead %v: one of two shard-mates ahead", d)
	}
	in.Records[1].Epoch = 6
	if d := m.holdersAhead(in, 0, 5); len(d) != 2 {
		t.Errorf("holders ahead %v, want a1 and x", d)
	}
	in.Records = []progress.Record{online("a0", 0, 5), online("a1", 0, 6), online("b0", 1, 6)}
	if d := m.holdersAhead(in, 0, 5); len(d) != 1 {
		t.Errorf("holders ahead %v, want the lone shard-mate a1", d)
	}
}

// The core notes a peer's finished samples from every record it is shown,
// the check that closes the epoch included: a shard-mate whose samples
// only that check saw is not taken for stalled ClaimStall later (it then
// lost its share and its claim, and holders drew the whole target batch
// each).
func TestFinishedSamplesSeenByEveryCheck(t *testing.T) {
	m := New(Config{Self: "a0", Epochs: 100, TargetBatch: 128, BatchSize: 64})
	t0 := time.Unix(1_000_000, 0)
	for e := range uint64(10) {
		at := t0.Add(time.Duration(e) * time.Second)
		self := Node{Shard: 0, Held: true, Online: true, Epoch: e, Samples: 64}
		mate := online("a1", 0, e)
		mate.InFlight = 64
		m.Claimed(Input{Now: at, Records: []progress.Record{mate}, Node: self})
		mate.InFlight, mate.Samples = 0, 64
		if got := m.Samples(Input{Now: at.Add(100 * time.Millisecond), Records: []progress.Record{mate}, Node: self}); got != 128 {
			t.Fatalf("epoch %d: samples %d, want 128", e, got)
		}
	}
	mate := online("a1", 0, 10)
	mate.InFlight = 64
	in := Input{Now: t0.Add(10 * time.Second), Records: []progress.Record{mate}, Node: Node{Shard: 0, Held: true, Online: true, Epoch: 10}}
	if got := m.Share(in); got != 64 {
		t.Errorf("share %d, want 64: a1 finished samples in every epoch", got)
	}
	if got := m.Claimed(in); got != 64 {
		t.Errorf("claimed %d, want a1's 64 in flight", got)
	}
}

// drawingSwarm is a two-shard swarm of two holders each whose first-shard
// nodes draw like the trainer (simDraw) with the demo's numbers: a target
// batch of two micro-batches of 64, two micro-batches in flight, 30 ms a
// trip. x, when lie is set, is a Byzantine first-shard peer whose record
// lie rewrites; it never draws, averages or serves.
func drawingSwarm(t *testing.T, epochs uint64, lie func(s *sim, r *progress.Record)) *sim {
	cfg := syncCfg(epochs)
	cfg.TargetBatch, cfg.BatchSize, cfg.GroupSize = 128, 64, 2
	s := newSim(t, cfg)
	s.draw = &simDraw{limit: 2, trip: 30 * time.Millisecond}
	s.add("a0", 0, 0, progress.StateOnline)
	s.add("a1", 0, 0, progress.StateOnline)
	s.add("b0", 1, 0, progress.StateOnline)
	s.add("b1", 1, 0, progress.StateOnline)
	if lie != nil {
		x := s.add("x", 0, 0, progress.StateOnline)
		x.phantom, x.lie = true, lie
	}
	return s
}

// Holders that reopen an epoch together hear of each other's reopening
// only from their next records. Each draws its share of the target batch
// meanwhile, not the whole of it: every epoch closes with the target batch
// and no more (the demo computed 1.75 times the samples its epochs count
// when a shard-mate still in the epoch before held no share), each holder
// drawing half, in about one micro-batch's trip.
func TestSimHoldersReopeningTogetherDrawTheirShare(t *testing.T) {
	const epochs = 40
	s := drawingSwarm(t, epochs, nil)
	s.runUntil(time.Minute, "the run's end", s.allAt(epochs))
	for e, got := range s.honestSamples() {
		if got != s.cfg.TargetBatch {
			t.Errorf("epoch %d closed with %d samples, want the target batch of %d", e, got, s.cfg.TargetBatch)
		}
	}
	for _, id := range []string{"a0", "a1"} {
		for _, a := range s.node(id).actions(Close) {
			if a.samples != s.cfg.TargetBatch/2 {
				t.Errorf("%s closed epoch %d with %d samples, want its share of %d", id, a.epoch, a.samples, s.cfg.TargetBatch/2)
			}
		}
	}
	// A trip, a tick for the records, the round and the reopening: about
	// 150 ms an epoch; drawing the whole batch alone takes two trips more.
	if took, most := s.now.Sub(time.Unix(1_000_000, 0)), epochs*200*time.Millisecond; took > most {
		t.Errorf("%d epochs took %v, want at most %v", epochs, took, most)
	}
}

// A first-shard peer that stays one epoch behind, idle in the epoch, or far
// ahead holds a share of no epoch beyond ShareGrace: the run ends, each
// epoch at most about a grace longer than in the clean run, and it closes
// no epoch (every one holds the honest holders' target batch).
func TestSimShareLiarsDelayAtMostTheGrace(t *testing.T) {
	const epochs = 20
	clean := drawingSwarm(t, epochs, nil)
	clean.runUntil(time.Minute, "the clean run's end", clean.allAt(epochs))
	cleanTook := clean.now.Sub(time.Unix(1_000_000, 0))
	for _, c := range []struct {
		name string
		lie  func(s *sim, r *progress.Record)
	}{
		{"one behind", func(s *sim, r *progress.Record) { r.Epoch = s.lowest() - min(s.lowest(), 1) }},
		{"idle in the epoch", func(s *sim, r *progress.Record) { r.Epoch = s.lowest() }},
		{"+100", func(s *sim, r *progress.Record) { r.Epoch = s.lowest() + 100 }},
	} {
		s := drawingSwarm(t, epochs, c.lie)
		s.runUntil(time.Minute, c.name+": the run's end", s.allAt(epochs))
		took := s.now.Sub(time.Unix(1_000_000, 0))
		if most := cleanTook + epochs*(ShareGrace+100*time.Millisecond); took > most {
			t.Errorf("%s: %d epochs took %v, the clean run %v: want at most %v", c.name, epochs, took, cleanTook, most)
		}
		for e, got := range s.honestSamples() {
			if got < s.cfg.TargetBatch {
				t.Errorf("%s: epoch %d closed with %d honest samples of %d", c.name, e, got, s.cfg.TargetBatch)
			}
		}
		t.Logf("%s: %v (clean %v)", c.name, took, cleanTook)
	}
}

// A first-shard holder one epoch ahead closes the epoch for the others only
// while nobody still in it finishes samples (2c4a3b9's stall: the honest
// first-shard holder had moved on, its mate's micro-batches all failed, and
// the records that showed the target reached were gone, so nobody could
// close the epoch and nobody could be corroborated past it). While a holder
// in the epoch does finish samples, the one ahead counts for nothing: a liar
// one epoch ahead cannot end epochs early.
func TestAheadHolderClosesStalledEpoch(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	cfg := Config{Self: "b0", Epochs: 20, TargetBatch: 64, BatchSize: 8, GroupSize: 4}
	ahead := online("a0", 0, 2)
	ahead.Throughput = 100
	stuck := online("x0", 0, 1) // its micro-batches all fail
	node := Node{Shard: 1, Held: true, Online: true, Epoch: 1}
	in := Input{Now: t0, Records: []progress.Record{ahead, stuck, online("b0", 1, 1), online("x1", 1, 1)}, Node: node}

	m := New(cfg)
	expect(t, m.Step(in, Event{}), Wait, 0)
	in.Now = t0.Add(ClaimStall - time.Millisecond)
	expect(t, m.Step(in, Event{}), Wait, 0) // x0 was first seen at t0: it may still finish
	in.Now = t0.Add(ClaimStall)
	expect(t, m.Step(in, Event{}), Close, 1)

	// A mate in the epoch that finishes samples: the one ahead counts for
	// nothing, however long.
	m = New(cfg)
	for s := range 20 {
		in.Now = t0.Add(time.Duration(s) * time.Second)
		in.Records[1].Samples = 2 * s
		if got := m.Samples(in); got != 2*s {
			t.Fatalf("after %d s with x0 finishing samples: %d samples, want x0's %d", s, got, 2*s)
		}
	}
	// It stops: once ClaimStall passed, the one ahead counts.
	in.Now = in.Now.Add(ClaimStall)
	if got := m.Samples(in); got != 38+64 {
		t.Errorf("x0 stalled: %d samples, want its 38 and the target batch for a0", got)
	}

	// This node on the first shard, finishing samples itself: the same.
	m = New(Config{Self: "a1", Epochs: 20, TargetBatch: 64, BatchSize: 8, GroupSize: 4})
	self := Node{Shard: 0, Held: true, Online: true, Epoch: 1}
	in = Input{Records: []progress.Record{ahead, online("a1", 0, 1)}, Node: self}
	for s := range 10 {
		in.Now = t0.Add(time.Duration(s) * time.Second)
		in.Node.Samples = 4 * s
		if got := m.Samples(in); got != 4*s {
			t.Fatalf("after %d s finishing samples itself: %d samples, want its own %d", s, got, 4*s)
		}
	}
	in.Now = in.Now.Add(ClaimStall)
	if got := m.Samples(in); got != 36+64 {
		t.Errorf("its own micro-batches failing: %d samples, want its 36 and the target batch for a0", got)
	}

	// Just opened: the one ahead is held to what it could have finished
	// since (two micro-batches, then twice its rate).
	m = New(cfg)
	in = Input{Now: t0, Records: []progress.Record{ahead, online("b0", 1, 1)}, Node: node}
	if got := m.Samples(in); got != 16 {
		t.Errorf("at the epoch's opening the one ahead counts %d samples, want 16", got)
	}
	in.Now = t0.Add(100 * time.Millisecond)
	if got, want := m.Samples(in), 16+RateSlack*100/10; got != want { // its rate of 100/s
		t.Errorf("100 ms in, the one ahead counts %d samples, want %d", got, want)
	}
}
