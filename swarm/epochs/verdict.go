package epochs

import (
	"fmt"
	"slices"
	"time"

	"github.com/swarm-train/swarm/swarm/progress"
)

// Verdicts: the rules that ban a peer. The trust rules (trust.go) keep a
// lying peer from moving the swarm; the rules here decide when the lie is
// shown beyond doubt, so that the node bans the peer (guard.BanFor) and
// stops hearing it. Each rule is one an honest peer cannot break: an
// honest lone holder of its shard, a fast honest node and a node that just
// joined are never banned by them (sim_test.go drives each case).
//
//   - RuleSamples: a first-shard record claiming more samples finished in
//     its epoch than an honest holder can draw (Overclaims), at once.
//   - RuleEpoch: a record whose epoch is ahead of every other holder by
//     more than one, and ahead of the swarm's corroborated epoch by more
//     than one, that keeps its lead while the swarm moves EpochLieEpochs
//     epochs. An honest holder ahead (a lone holder whose shard-mates died,
//     or a shard waiting for a shard left behind) cannot finish an epoch
//     nobody else is in, so its epoch stands still while the swarm closes
//     the gap; a liar's claim moves with the swarm.
//   - RuleNorm: a record reporting, in NormLieEpochs epochs, a squared
//     gradient norm more than NormLieRatio² times the lower median of what
//     the other holders of its shard report for epochs within NormWindow of
//     it (holders of a shard average one gradient, which changes little from
//     one epoch to the next; one that averaged alone differs by a small
//     factor, never by 10⁴).
//   - RulePipelineNorm, RulePipelineEpoch, RuleAveraging: offenses the
//     trainer saw in the pipeline (a sender's activations or gradients far
//     above the median of the recent senders'; a request far ahead of the
//     node's epoch and of its sender's own record) or in averaging (a part
//     rejected as an outlier by the reducer), in RepeatOffenses distinct
//     epochs within RepeatWindow of each other.
//   - RuleBannedByPeers: a peer that a majority of its shard's other
//     holders (online or done), and at least BanQuorum of them, name in
//     their records as banned for a lie. A lie one node saw (a donor's
//     chunk that failed its hash, a state that did worse on its held-out
//     data) is evidence only that node holds; the holders that did not see
//     it kept averaging with the liar while those that did refused it, and
//     the shard's holders split into groups that averaged apart and ended
//     the run on different models. The minority follows the majority, so
//     the shard averages as one group again. Only the accused's shard-mates
//     count (they are the ones a split divides): peers of other shards, and
//     colluders short of a majority of the shard, cannot have an honest
//     holder banned by naming it.
//
// Each verdict is given once per peer, with the rule and the evidence.

// Rules a verdict names: guard's ban reasons, counted in
// swarm_security_bans_total{reason}.
const (
	RuleSamples       = "record-samples"
	RuleEpoch         = "record-epoch"
	RuleNorm          = "record-normsq"
	RulePipelineNorm  = "pipeline-norm"
	RulePipelineEpoch = "pipeline-epoch"
	RuleAveraging     = "averaging-outlier"
	RuleBannedByPeers = "banned-by-peers"
)

// BanQuorum is the fewest holders of its shard that must name a peer as
// banned before a node that saw no lie of its own bans it
// (RuleBannedByPeers), however few holders the shard has; with more, it
// takes a majority of them.
const BanQuorum = 2

// Thresholds of the rules.
const (
	// EpochLieEpochs is how many epochs the swarm moves while an
	// uncorroborated claim keeps its lead before it is a lie.
	EpochLieEpochs = 3
	// NormLieRatio bounds a holder's gradient norm against its shard's
	// (squared norms: NormLieRatio²).
	NormLieRatio = 100
	// NormLieEpochs epochs with an absurd norm make a verdict.
	NormLieEpochs = 3
	// NormWindow: a norm is compared with the shard's reports for epochs
	// this close to its own (a holder reports only the epochs it stepped).
	NormWindow = 4
	// RepeatOffenses offenses of one rule in distinct epochs make a
	// verdict.
	RepeatOffenses = 3
	// RepeatWindow: those epochs are within this many of each other. A liar
	// offends in every epoch it sends, while an honest peer's rare outlier
	// (late in training one micro-batch's gradient was 10–23× another's,
	// under norm_k 10) recurs far apart: three in a whole run banned honest
	// nodes.
	RepeatWindow = 8
	// maxSuspects bounds the peers the judge remembers.
	maxSuspects = 1024
)

// Verdict is the core's decision to ban Peer for Rule: a short fixed word
// (guard's reason), never peer-chosen text. Evidence says what the peer did.
type Verdict struct {
	Peer     string
	Rule     string
	Evidence string
}

// Offense is evidence against a peer that the trainer saw outside the
// records, in epoch Epoch: a sender whose pipeline values were far above
// the recent senders' (RulePipelineNorm), a request far ahead of its
// sender's record (RulePipelineEpoch), a member whose averaging part was
// rejected as an outlier (RuleAveraging).
type Offense struct {
	Peer     string
	Rule     string
	Epoch    uint64
	Evidence string
}

// suspect is what the judge remembers of one peer.
type suspect struct {
	// The record-epoch rule: a lead nobody corroborates since the swarm
	// was at fromSwarm and the peer claimed fromClaim.
	leading              bool
	fromSwarm, fromClaim uint64
	// epochs with evidence, per rule (at most the rule's threshold, the
	// latest kept), and the first evidence of each rule.
	epochs map[string][]uint64
	first  map[string]string
	at     time.Time // last evidence or record
}

// judge holds the suspects and the verdicts given.
type judge struct {
	suspects map[string]*suspect
	judged   map[string]bool // verdicts given, by peer
	pending  []Verdict       // from Offend, returned by the next Verdicts
}

func (j *judge) suspect(peer string, now time.Time) *suspect {
	if j.suspects == nil {
		j.suspects = map[string]*suspect{}
	}
	s := j.suspects[peer]
	if s == nil {
		s = &suspect{epochs: map[string][]uint64{}, first: map[string]string{}}
		j.suspects[peer] = s
	}
	if now.After(s.at) {
		s.at = now
	}
	return s
}

// note adds evidence of rule in epoch against peer; it returns the verdict
// when the evidence reached need distinct epochs.
func (j *judge) note(peer, rule string, epoch uint64, need int, window uint64, evidence string, now time.Time) (Verdict, bool) {
	if j.judged[peer] {
		return Verdict{}, false
	}
	s := j.suspect(peer, now)
	es := s.epochs[rule]
	if slices.Contains(es, epoch) {
		return Verdict{}, false
	}
	if len(es) == 0 {
		s.first[rule] = evidence
	}
	es = append(es, epoch)
	// With a window, only offenses within it of the latest count.
	if window > 0 {
		latest := slices.Max(es)
		es = slices.DeleteFunc(es, func(e uint64) bool { return e+window <= latest })
	}
	if len(es) > need {
		es = es[len(es)-need:]
	}
	s.epochs[rule] = es
	if len(es) < need {
		return Verdict{}, false
	}
	slices.Sort(es)
	ev := evidence
	if need > 1 {
		ev = fmt.Sprintf("in epochs %v; first: %s; last: %s", es, s.first[rule], evidence)
	}
	return j.condemn(peer, rule, ev), true
}

// condemn records the verdict on peer.
func (j *judge) condemn(peer, rule, evidence string) Verdict {
	if j.judged == nil {
		j.judged = map[string]bool{}
	}
	if len(j.judged) < maxSuspects {
		j.judged[peer] = true
	}
	delete(j.suspects, peer)
	return Verdict{Peer: peer, Rule: rule, Evidence: evidence}
}

// prune forgets suspects without a live record whose last evidence is
// older than a minute, then the oldest beyond maxSuspects.
func (j *judge) prune(live []progress.Record, now time.Time) {
	if len(j.suspects) <= len(live) {
		return
	}
	keep := make(map[string]bool, len(live))
	for _, r := range live {
		keep[r.Peer] = true
	}
	for p, s := range j.suspects {
		if !keep[p] && now.Sub(s.at) > time.Minute {
			delete(j.suspects, p)
		}
	}
	for len(j.suspects) > maxSuspects {
		var oldest string
		for p, s := range j.suspects {
			if oldest == "" || s.at.Before(j.suspects[oldest].at) {
				oldest = p
			}
		}
		delete(j.suspects, oldest)
	}
}

// Offend records an offense the trainer saw (pipeline, averaging); the
// verdict, once the peer offended in RepeatOffenses distinct epochs, comes
// with the next Verdicts.
func (m *Machine) Offend(o Offense, now time.Time) {
	if o.Peer == m.cfg.Self {
		return
	}
	if v, ok := m.judge.note(o.Peer, o.Rule, o.Epoch, RepeatOffenses, RepeatWindow, o.Evidence, now); ok {
		m.judge.pending = append(m.judge.pending, v)
	}
}

// Verdicts returns the peers to ban now, each once: those whose live
// records break a rule, and those whose offenses reached the threshold.
// Local mode counts samples and epochs per outer round, where holders may
// legitimately differ: only the offenses apply there.
func (m *Machine) Verdicts(in Input) []Verdict {
	out := m.judge.pending
	m.judge.pending = nil
	if !m.cfg.Local {
		out = append(out, m.recordVerdicts(in)...)
	}
	out = append(out, m.sharedVerdicts(in)...)
	m.judge.prune(in.Records, in.Now)
	return out
}

func (m *Machine) recordVerdicts(in Input) []Verdict {
	var out []Verdict
	swarm := SwarmEpoch(in.Records)
	norms := shardNorms(in.Records)
	for _, r := range in.Records {
		if r.Peer == m.cfg.Self || m.judge.judged[r.Peer] {
			continue
		}
		if m.Overclaims(r) {
			out = append(out, m.judge.condemn(r.Peer, RuleSamples, m.overclaim(r)))
			continue
		}
		if !holding(r) {
			continue
		}
		if v, ok := m.epochLie(in, r, swarm); ok {
			out = append(out, v)
			continue
		}
		for _, n := range r.Norms {
			others := norms.others(r, n.Epoch)
			if len(others) == 0 {
				continue
			}
			med := others[(len(others)-1)/2]
			if med <= 0 || n.NormSq <= NormLieRatio*NormLieRatio*med {
				continue
			}
			ev := fmt.Sprintf("epoch %d: squared gradient norm %.3g, %.3g times the lower median %.3g of the shard's other holders", n.Epoch, n.NormSq, n.NormSq/med, med)
			if v, ok := m.judge.note(r.Peer, RuleNorm, n.Epoch, NormLieEpochs, 0, ev, in.Now); ok {
				out = append(out, v)
				break
			}
		}
	}
	return out
}

// sharedVerdicts bans the live peers that a majority of their shard's
// other holders, and at least BanQuorum, name as banned
// (RuleBannedByPeers). Only a shard-mate's word counts, once per holder,
// never about itself or this node.
func (m *Machine) sharedVerdicts(in Input) []Verdict {
	shardOf := map[string]int{}
	for _, r := range in.Records {
		if r.Peer != m.cfg.Self && holding(r) {
			shardOf[r.Peer] = r.Shard
		}
	}
	accusers := map[string][]string{}
	for _, q := range in.Records {
		if q.Peer == m.cfg.Self || !holding(q) || m.judge.judged[q.Peer] {
			continue
		}
		named := map[string]bool{}
		for _, p := range q.Banned {
			s, ok := shardOf[p]
			if !ok || s != q.Shard || named[p] || p == q.Peer || m.judge.judged[p] {
				continue
			}
			named[p] = true
			accusers[p] = append(accusers[p], q.Peer)
		}
	}
	var out []Verdict
	for _, r := range in.Records { // in the records' order: deterministic
		qs := accusers[r.Peer]
		if len(qs) < BanQuorum || m.judge.judged[r.Peer] {
			continue
		}
		mates := 0 // r's shard's other holders, this node among them
		for p, s := range shardOf {
			if s == r.Shard && p != r.Peer {
				mates++
			}
		}
		if in.Node.Held && in.Node.Shard == r.Shard {
			mates++
		}
		if 2*len(qs) <= mates {
			continue
		}
		slices.Sort(qs)
		out = append(out, m.judge.condemn(r.Peer, RuleBannedByPeers,
			fmt.Sprintf("%d of its shard's %d other holders banned it for a lie this node did not see: %v", len(qs), mates, qs)))
	}
	return out
}

// epochLie follows r's lead over the swarm's corroborated epoch.
func (m *Machine) epochLie(in Input, r progress.Record, swarm uint64) (Verdict, bool) {
	s := m.judge.suspect(r.Peer, in.Now)
	if r.Epoch <= swarm+1 || corroborated(in.Records, r) {
		s.leading = false
		return Verdict{}, false
	}
	if !s.leading || r.Epoch < s.fromClaim || swarm < s.fromSwarm {
		s.leading, s.fromSwarm, s.fromClaim = true, swarm, r.Epoch
		return Verdict{}, false
	}
	moved := swarm - s.fromSwarm
	if moved < EpochLieEpochs || r.Epoch-s.fromClaim < moved {
		return Verdict{}, false
	}
	return m.judge.condemn(r.Peer, RuleEpoch, fmt.Sprintf(
		"its record claimed epoch %d when the swarm's corroborated epoch was %d, and %d when it was %d: a lead of %d epochs that no other holder came within one epoch of, kept while the swarm moved %d epochs",
		s.fromClaim, s.fromSwarm, r.Epoch, swarm, r.Epoch-swarm, moved)), true
}

// corroborated reports whether a holder other than r is within one epoch
// of r's epoch.
func corroborated(recs []progress.Record, r progress.Record) bool {
	for _, q := range recs {
		if q.Peer != r.Peer && holding(q) && q.Epoch >= r.Epoch-min(r.Epoch, 1) {
			return true
		}
	}
	return false
}

// normTable holds, per shard, the squared norms its holders report.
type normTable map[int][]peerNorm

type peerNorm struct {
	peer string
	progress.EpochNorm
}

func shardNorms(recs []progress.Record) normTable {
	t := normTable{}
	for _, r := range recs {
		if !holding(r) {
			continue
		}
		for _, n := range r.Norms {
			t[r.Shard] = append(t[r.Shard], peerNorm{r.Peer, n})
		}
	}
	return t
}

// others is the sorted reports of r's shard by other holders for epochs
// within NormWindow of epoch.
func (t normTable) others(r progress.Record, epoch uint64) []float64 {
	var out []float64
	for _, n := range t[r.Shard] {
		if n.peer != r.Peer && max(n.Epoch, epoch)-min(n.Epoch, epoch) <= NormWindow {
			out = append(out, n.NormSq)
		}
	}
	slices.Sort(out)
	return out
}
