package epochs

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/swarm-train/swarm/swarm/progress"
)

// verdictsAgainst returns, per honest node, the verdicts it gave, and fails
// for each one against a peer other than liar ("" : none may be given).
func (s *sim) verdictsAgainst(t *testing.T, name, liar string) map[string][]simVerdict {
	t.Helper()
	out := map[string][]simVerdict{}
	for _, n := range s.nodes {
		if n.phantom {
			continue
		}
		for _, v := range n.verdicts {
			if v.Peer != liar {
				t.Errorf("%s: %s banned the honest %s at epoch %d for %s: %s", name, n.id, v.Peer, v.epoch, v.Rule, v.Evidence)
				continue
			}
			out[n.id] = append(out[n.id], v)
		}
	}
	return out
}

// No rule bans an honest peer: a lone holder of its shard far ahead of a
// shard that rejoined (the previous attempt at these rules banned it), a
// shard waiting for a shard left behind, a first-shard holder four times as
// fast as its shard-mate, a node that joins mid-run, a holder whose rounds
// fail (its gradient norm then differs from its shard-mate's), and a clean
// swarm. Each runs to its end with no verdict from any node.
func TestSimHonestNeverBanned(t *testing.T) {
	const epochs = 40
	for _, c := range []struct {
		name  string
		build func(s *sim)
	}{
		{"clean", func(s *sim) {
			s.add("a0", 0, 0, progress.StateOnline)
			s.add("a1", 0, 0, progress.StateOnline)
			s.add("b0", 1, 0, progress.StateOnline)
			s.add("b1", 1, 0, progress.StateOnline)
		}},
		{"lone first-shard holder far ahead of a rejoined shard", func(s *sim) {
			s.add("a0", 0, 25, progress.StateOnline)
			s.add("b0", 1, 1, progress.StateOnline)
			s.add("b1", 1, 1, progress.StateOnline)
		}},
		{"lone last-shard holder far ahead of a rejoined shard", func(s *sim) {
			s.add("a0", 0, 1, progress.StateOnline)
			s.add("a1", 0, 1, progress.StateOnline)
			s.add("b0", 1, 25, progress.StateOnline)
		}},
		{"one holder a shard, far apart", func(s *sim) {
			s.add("a0", 0, 30, progress.StateOnline)
			s.add("b0", 1, 1, progress.StateOnline)
		}},
		{"lone holder waiting for a shard left behind", func(s *sim) {
			s.add("a0", 0, 10, progress.StateOnline)
			s.add("b0", 1, 7, progress.StateOnline)
			s.add("b1", 1, 7, progress.StateOnline)
		}},
		{"two holders waiting for a shard left behind", func(s *sim) {
			s.add("a0", 0, 10, progress.StateOnline)
			s.add("a1", 0, 10, progress.StateOnline)
			s.add("b0", 1, 7, progress.StateOnline)
			s.add("b1", 1, 7, progress.StateOnline)
		}},
		{"fast first-shard holder", func(s *sim) {
			s.add("a0", 0, 0, progress.StateOnline).speed = 4 * rate
			s.add("a1", 0, 0, progress.StateOnline)
			s.add("b0", 1, 0, progress.StateOnline)
			s.add("b1", 1, 0, progress.StateOnline)
		}},
		{"joiner mid-run", func(s *sim) {
			s.add("a0", 0, 0, progress.StateOnline)
			s.add("b0", 1, 0, progress.StateOnline)
			s.add("b1", 1, 0, progress.StateOnline)
			j := s.add("j", 0, 0, "")
			s.hook = func(s *sim) {
				a0 := s.node("a0")
				switch {
				case j.state == "" && a0.epoch >= 10:
					j.state, j.held = progress.StateJoining, false
				case j.state == progress.StateJoining && a0.epoch >= 12:
					// Online at the swarm's corroborated epoch with a copy
					// of the holder's state.
					j.state, j.held, j.epoch, j.model = progress.StateOnline, true, SwarmEpoch(s.records()), a0.model
				}
			}
		}},
		{"holder whose rounds fail", func(s *sim) {
			s.add("a0", 0, 0, progress.StateOnline)
			s.add("a1", 0, 0, progress.StateOnline)
			b0 := s.add("b0", 1, 0, progress.StateOnline)
			s.add("b1", 1, 0, progress.StateOnline)
			s.lose = func(n *simNode, r *simRound) bool { return n == b0 && r.key == KeyGrad && r.epoch%3 == 0 }
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newSim(t, syncCfg(epochs))
			c.build(s)
			s.runUntil(5*time.Minute, "the run's end", s.allAt(epochs))
			s.verdictsAgainst(t, c.name, "")
		})
	}
}

// One Byzantine first-shard peer whose record lies in one way is banned by
// every honest node within a few epochs, once, with the rule and the
// evidence: an epoch 100 ahead (on either shard), squared gradient norms of
// 1e300, twice the target batch finished at 1e9 samples/s. The honest
// nodes still take every step.
func TestSimRecordLiarsBanned(t *testing.T) {
	const epochs = 40
	for _, c := range []struct {
		name   string
		shard  int
		rule   string
		within uint64 // epochs of the honest nodes from the liar's first record to its ban
		lie    func(s *sim, r *progress.Record)
	}{
		{"epoch +100", 0, RuleEpoch, EpochLieEpochs + 2, func(s *sim, r *progress.Record) { r.Epoch = s.lowest() + 100 }},
		{"epoch +100 on the last shard", 1, RuleEpoch, EpochLieEpochs + 2, func(s *sim, r *progress.Record) { r.Epoch = s.lowest() + 100 }},
		{"epoch +3", 0, RuleEpoch, EpochLieEpochs + 2, func(s *sim, r *progress.Record) { r.Epoch = s.lowest() + 3 }},
		{"normsq 1e300", 0, RuleNorm, NormLieEpochs + 3, func(s *sim, r *progress.Record) {
			r.Epoch = s.node("a0").epoch
			for _, n := range s.node("a0").norms {
				r.Norms = append(r.Norms, progress.EpochNorm{Epoch: n.Epoch, NormSq: 1e300})
			}
		}},
		{"samples", 0, RuleSamples, 1, func(s *sim, r *progress.Record) {
			r.Epoch = s.node("a0").epoch
			r.Samples, r.InFlight, r.Throughput = 2*s.cfg.TargetBatch, 2*s.cfg.TargetBatch, 1e9
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := lyingSwarm(t, epochs, c.shard, c.lie)
			s.runUntil(5*time.Minute, "the run's end", s.allAt(epochs))
			got := s.verdictsAgainst(t, c.name, "x")
			for _, n := range s.nodes {
				if n.phantom {
					continue
				}
				vs := got[n.id]
				if len(vs) != 1 {
					t.Errorf("%s gave %d verdicts against the liar, want 1", n.id, len(vs))
					continue
				}
				v := vs[0]
				if v.Rule != c.rule || v.Evidence == "" {
					t.Errorf("%s banned the liar for %q (%s), want %s with evidence", n.id, v.Rule, v.Evidence, c.rule)
				}
				if v.epoch >= c.within {
					t.Errorf("%s banned the liar at its epoch %d, want within %d", n.id, v.epoch, c.within)
				}
				if st := len(n.actions(Step)); st != epochs {
					t.Errorf("%s stepped %d times, want %d", n.id, st, epochs)
				}
			}
			if t.Failed() || testing.Verbose() {
				for id, vs := range got {
					t.Logf("%s at epoch %d: %s: %s", id, vs[0].epoch, vs[0].Rule, vs[0].Evidence)
				}
			}
		})
	}
}

// A record that claims the run's end (done), or one epoch past the swarm,
// is not a shown lie: an honest holder that finished, or one a little
// ahead, looks the same. It is neutralised (TestSimLiarAheadCannotMoveSwarm)
// and not banned.
func TestSimUnprovenLiesNotBanned(t *testing.T) {
	const epochs = 30
	for _, c := range []struct {
		name string
		lie  func(s *sim, r *progress.Record)
	}{
		{"done", func(s *sim, r *progress.Record) { r.Epoch, r.State = epochs, progress.StateDone }},
		{"+1", func(s *sim, r *progress.Record) { r.Epoch = s.lowest() + 1 }},
	} {
		s := lyingSwarm(t, epochs, 0, c.lie)
		s.runUntil(5*time.Minute, "the run's end", s.allAt(epochs))
		for id, vs := range s.verdictsAgainst(t, c.name, "x") {
			t.Errorf("%s: %s banned the liar: %s: %s", c.name, id, vs[0].Rule, vs[0].Evidence)
		}
	}
}

// Offenses the trainer reports (pipeline norms, averaging outliers) make a
// verdict once a peer offended in RepeatOffenses distinct epochs; more
// offenses in one epoch count once; the verdict comes once.
func TestOffensesRepeat(t *testing.T) {
	m := New(Config{Self: "a0", TargetBatch: 64, BatchSize: 8})
	now := time.Unix(1_000_000, 0)
	in := Input{Now: now, Records: []progress.Record{online("a0", 0, 5), online("x", 1, 5)}, Node: Node{Shard: 0, Held: true, Online: true, Epoch: 5}}
	offend := func(epoch uint64) {
		m.Offend(Offense{Peer: "x", Rule: RulePipelineNorm, Epoch: epoch, Evidence: "gradient norm 100 times the median"}, now)
	}
	for range 5 {
		offend(5)
	}
	offend(6)
	m.Offend(Offense{Peer: "a0", Rule: RulePipelineNorm, Epoch: 7, Evidence: "self"}, now)
	if v := m.Verdicts(in); len(v) != 0 {
		t.Fatalf("verdicts %+v after offenses in two epochs", v)
	}
	offend(8)
	v := m.Verdicts(in)
	if len(v) != 1 || v[0].Peer != "x" || v[0].Rule != RulePipelineNorm || !strings.Contains(v[0].Evidence, "[5 6 8]") {
		t.Fatalf("verdicts %+v, want x for pipeline-norm in epochs 5, 6, 8", v)
	}
	offend(9)
	if v := m.Verdicts(in); len(v) != 0 {
		t.Fatalf("verdicts %+v after the peer was condemned", v)
	}
	// Offenses far apart (an honest sender's rare outlier) make no verdict:
	// only those within RepeatWindow epochs of the latest count.
	m = New(Config{Self: "a0", TargetBatch: 64, BatchSize: 8})
	for _, e := range []uint64{5, 5 + RepeatWindow, 5 + 2*RepeatWindow, 5 + 3*RepeatWindow} {
		offend(e)
	}
	if v := m.Verdicts(in); len(v) != 0 {
		t.Fatalf("verdicts %+v for offenses %d epochs apart", v, RepeatWindow)
	}
	offend(5 + 3*RepeatWindow + 1)
	if v := m.Verdicts(in); len(v) != 0 {
		t.Fatalf("verdicts %+v for two offenses within the window", v)
	}
	offend(5 + 3*RepeatWindow + 2)
	if v := m.Verdicts(in); len(v) != 1 {
		t.Fatalf("verdicts %+v, want one for three offenses within %d epochs", v, RepeatWindow)
	}
	// Offenses of peers without a record are forgotten after a minute;
	// the judge never holds more than maxSuspects.
	for i := range 3 * maxSuspects {
		m.Offend(Offense{Peer: string(rune('A' + i)), Rule: RuleAveraging, Epoch: 1}, now)
	}
	m.Verdicts(in)
	if len(m.judge.suspects) > maxSuspects {
		t.Errorf("%d suspects held", len(m.judge.suspects))
	}
	in.Now = now.Add(2 * time.Minute)
	m.Verdicts(in)
	if len(m.judge.suspects) > len(in.Records) {
		t.Errorf("%d suspects held a minute later with %d live records", len(m.judge.suspects), len(in.Records))
	}
}

// A holder whose record keeps up with its shard's epoch but that never
// joins a round (a node that lost its way: banned by the other shard's
// holders, it no longer hears when epochs end), whether its record says it
// is closing its epochs or not, is not waited for once it was late, but
// every LateProbe epochs: the run takes about as long as a clean one, and
// the shard's other holders end on one model without a state round every
// epoch.
func TestSimLateMateNotWaitedFor(t *testing.T) {
	const epochs = 100
	clean := lyingSwarm(t, epochs, 1, nil)
	clean.runUntil(5*time.Minute, "the clean run's end", clean.allAt(epochs))
	cleanTook := clean.now.Sub(time.Unix(1_000_000, 0))
	for _, closing := range []bool{false, true} {
		s := lyingSwarm(t, epochs, 1, func(s *sim, r *progress.Record) { r.Epoch, r.Closing = s.node("b0").epoch, closing })
		s.runUntil(5*time.Minute, "the run's end", s.allAt(epochs))
		took := s.now.Sub(time.Unix(1_000_000, 0))
		if took > cleanTook*3/2 {
			t.Errorf("closing %v: the run took %v with a mate that never joins a round, the clean one %v", closing, took, cleanTook)
		}
		b0, b1 := s.node("b0"), s.node("b1")
		if b0.model != b1.model {
			t.Errorf("closing %v: b0 and b1 ended on models %d and %d", closing, b0.model, b1.model)
		}
		if n := len(b0.actions(AverageState)); n > 6 {
			t.Errorf("closing %v: b0 ran %d state rounds", closing, n)
		}
		s.verdictsAgainst(t, "late mate", "")
		t.Logf("closing %v: with a late mate %v, clean %v; b0's state rounds: %d", closing, took, cleanTook, len(b0.actions(AverageState)))
	}
}

// A holder's squared norms are compared with what the other holders of its
// shard report for nearby epochs (each reports only the epochs it stepped):
// 1e300 in three epochs is a lie even when no other holder reported those
// very epochs; an honest holder that averaged alone (a few times the others'
// norm), or one whose shard-mates report nothing nearby, is not.
func TestNormLie(t *testing.T) {
	m := New(Config{Self: "b0", TargetBatch: 64, BatchSize: 8})
	now := time.Unix(1_000_000, 0)
	norms := func(r progress.Record, v float64, epochs ...uint64) progress.Record {
		for _, e := range epochs {
			r.Norms = append(r.Norms, progress.EpochNorm{Epoch: e, NormSq: v})
		}
		return r
	}
	recs := []progress.Record{
		norms(online("a0", 0, 20), 0.3, 16, 17, 18, 19),
		norms(online("a1", 0, 20), 0.9, 17, 18, 19), // stepped alone in some
		norms(online("x", 0, 20), 1e300, 12, 14, 21),
		norms(online("far", 1, 20), 1e300, 1, 2, 3), // nothing of its shard nearby
		online("b0", 1, 20),
	}
	vs := m.Verdicts(Input{Now: now, Records: recs, Node: Node{Shard: 1, Held: true, Online: true, Epoch: 20}})
	if len(vs) != 1 || vs[0].Peer != "x" || vs[0].Rule != RuleNorm {
		t.Fatalf("verdicts %+v, want x for %s", vs, RuleNorm)
	}
	t.Log(vs[0].Evidence)
}

// donor-chunks (make redteam): a liar on shard 0 that serves state chunks
// failing their hash was banned by the two holders that fetched state from
// it, while the third honest holder, which never did, kept averaging with
// it. Banned peers' streams are refused, so the shard's holders averaged in
// two groups from then on and ended the run on different models. The third
// holder bans the liar as soon as two holders name it in their records,
// and from then on the three honest holders average every gradient
// together, without the liar.
func TestSimBanNamedByTwoHolders(t *testing.T) {
	s := newSim(t, syncCfg(30))
	// The liar first: it leads the rounds the others join in this order.
	l := s.add("l", 0, 0, progress.StateOnline)
	h1 := s.add("h1", 0, 0, progress.StateOnline)
	h2 := s.add("h2", 0, 0, progress.StateOnline)
	h3 := s.add("h3", 0, 0, progress.StateOnline)
	s.add("b0", 1, 0, progress.StateOnline)
	s.add("b1", 1, 0, progress.StateOnline)
	const banAt = 5
	s.hook = func(s *sim) {
		for _, n := range []*simNode{h2, h3} {
			if n.epoch == banAt && !n.banned[l.id] {
				n.banned = map[string]bool{l.id: true} // its chunks failed their hash
			}
		}
	}
	s.runUntil(2*time.Minute, "the run's end", s.allAt(30))
	got := s.verdictsAgainst(t, "", l.id)
	if vs := got[h1.id]; len(vs) != 1 || vs[0].Rule != RuleBannedByPeers || !strings.Contains(vs[0].Evidence, "[h2 h3]") {
		t.Errorf("h1's verdicts against the liar: %+v, want one for %s naming h2 and h3", vs, RuleBannedByPeers)
	} else if vs[0].epoch > banAt+1 {
		t.Errorf("h1 banned the liar at epoch %d, the others at %d", vs[0].epoch, banAt)
	}
	// From soon after the ban, every round of an honest holder has the
	// three of them and not the liar, and they end on one model.
	for _, n := range []*simNode{h1, h2, h3} {
		for _, a := range n.acts {
			if (a.act.Kind != Average && a.act.Kind != AverageState) || a.act.Epoch < banAt+2 {
				continue
			}
			slices.Sort(a.members)
			if !a.ok || fmt.Sprint(a.members) != "[h1 h2 h3]" {
				t.Errorf("%s: %s round of epoch %d: ok %v, members %v; want the three honest holders", n.id, a.act.Kind, a.act.Epoch, a.ok, a.members)
			}
		}
	}
	if h1.model != h2.model || h2.model != h3.model {
		t.Errorf("honest holders ended on models %d, %d, %d", h1.model, h2.model, h3.model)
	}
}

// RuleBannedByPeers needs BanQuorum holders: one peer naming an honest one
// (a liar) bans nobody, nor do non-holders, a peer naming itself, a record
// naming the same peer twice, or names of this node.
func TestBannedByPeersQuorum(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	rec := func(p string, shard int, state string, banned ...string) progress.Record {
		return progress.Record{Peer: p, Shard: shard, State: state, Epoch: 3, Banned: banned}
	}
	for _, c := range []struct {
		name string
		recs []progress.Record
		want string // the peer banned, "" none
	}{
		{"one accuser", []progress.Record{rec("l", 0, progress.StateOnline, "h"), rec("h", 0, progress.StateOnline)}, ""},
		{"one accuser naming twice", []progress.Record{rec("l", 0, progress.StateOnline, "h", "h"), rec("h", 0, progress.StateOnline)}, ""},
		{"accusers not holding", []progress.Record{
			rec("j1", -1, progress.StateJoining, "h"), rec("j2", 0, progress.StateJoining, "h"), rec("h", 0, progress.StateOnline)}, ""},
		{"one holder and a joiner", []progress.Record{
			rec("a", 0, progress.StateOnline, "h"), rec("j2", 0, progress.StateJoining, "h"), rec("h", 0, progress.StateOnline)}, ""},
		{"naming itself", []progress.Record{rec("a", 0, progress.StateOnline, "a"), rec("b", 1, progress.StateOnline, "a")}, ""},
		{"naming this node", []progress.Record{rec("a", 0, progress.StateOnline, "self"), rec("b", 1, progress.StateOnline, "self")}, ""},
		{"a peer without a live record", []progress.Record{rec("a", 0, progress.StateOnline, "gone"), rec("b", 1, progress.StateOnline, "gone")}, ""},
		{"two holders, one done", []progress.Record{
			rec("a", 0, progress.StateOnline, "l"), rec("b", 0, progress.StateDone, "l"), rec("l", 0, progress.StateOnline)}, "l"},
		{"two holders of another shard", []progress.Record{
			rec("a", 1, progress.StateOnline, "l"), rec("b", 1, progress.StateOnline, "l"), rec("l", 0, progress.StateOnline)}, ""},
		{"two of five shard-mates (colluders short of a majority)", []progress.Record{
			rec("a", 0, progress.StateOnline, "l"), rec("b", 0, progress.StateOnline, "l"), rec("c", 0, progress.StateOnline),
			rec("d", 0, progress.StateOnline), rec("l", 0, progress.StateOnline)}, ""},
		{"three of five shard-mates", []progress.Record{
			rec("a", 0, progress.StateOnline, "l"), rec("b", 0, progress.StateOnline, "l"), rec("c", 0, progress.StateOnline, "l"),
			rec("d", 0, progress.StateOnline), rec("l", 0, progress.StateOnline)}, "l"},
	} {
		m := New(Config{Self: "self", Epochs: 10, TargetBatch: 64, BatchSize: 8, GroupSize: 4})
		in := Input{Now: now, Records: c.recs, Node: Node{Shard: 0, Held: true, Online: true, Epoch: 3}}
		var got []string
		for range 2 { // given once
			for _, v := range m.Verdicts(in) {
				if v.Rule != RuleBannedByPeers {
					t.Errorf("%s: verdict for %s", c.name, v.Rule)
				}
				got = append(got, v.Peer)
			}
		}
		want := []string{}
		if c.want != "" {
			want = []string{c.want}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: banned %v, want %v", c.name, got, want)
		}
	}
}
