package epochs

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/swarm-train/swarm/swarm/progress"
)

// The rules in this file decide how much of what peers report the core
// believes. Every peer of an open run is admitted, and one that lies about
// its epoch, its samples or its gradient's norm must not be able to end an
// epoch, move the swarm's epoch or finish the run on its own.

// SwarmEpoch is the swarm's epoch as its live holders corroborate it, never
// the highest epoch anyone claims: the highest epoch that at least two
// holders (online or done, on a shard) reached. A holder that is the only
// one of its shard speaks for its shard alone, so its epoch counts too, but
// at most one past that corroborated epoch: an honest lone holder is at
// most one epoch ahead of the rest of the swarm (its epoch ends with the
// others'), while a lone liar far ahead would move every node. With fewer
// than two holders there is nothing to corroborate and the corroborated
// epoch is 0.
func SwarmEpoch(recs []progress.Record) uint64 {
	var first, second uint64 // the two highest epochs among holders
	n := 0
	perShard := map[int]int{}
	for _, r := range recs {
		if !holding(r) {
			continue
		}
		perShard[r.Shard]++
		switch {
		case n == 0 || r.Epoch > first:
			first, second = r.Epoch, first
		case n == 1 || r.Epoch > second:
			second = r.Epoch
		}
		n++
	}
	base := uint64(0)
	if n >= 2 {
		base = second
	}
	out := base
	for _, r := range recs {
		if holding(r) && perShard[r.Shard] == 1 && r.Epoch > out {
			out = min(r.Epoch, base+1)
		}
	}
	return out
}

// holding reports whether r is a holder of a shard whose epoch counts:
// online or done.
func holding(r progress.Record) bool { return r.Shard >= 0 && active(r) }

// Bounds on the samples a peer's record may count in an epoch.
const (
	// RateSlack is how much faster than its rate a peer may seem to
	// finish samples (a rate is a mean over seconds, including the pauses
	// at each epoch's end; the burst within an epoch is faster).
	RateSlack = 2
	// allowanceBatches micro-batches count at once: a peer seen first in
	// an epoch may already have finished some.
	allowanceBatches = 2
)

// sampleBound is the most samples r may count toward its epoch now: what
// it could have finished since this core first saw it in that epoch at
// its rate (its announced samples/s, at most the first shard's lower
// median rate, at least the floor) with RateSlack, plus a micro-batch or
// two. A peer that announces a huge rate or inflates its samples cannot
// close an epoch before the honest holders could have; an honest peer that
// seems to outrun the bound is only counted a little later.
func (m *Machine) sampleBound(r progress.Record, now time.Time, rateCap float64) int {
	return m.boundSince(r, m.claims[r.Peer].since, now, rateCap)
}

// boundSince is sampleBound with the budget starting at since.
func (m *Machine) boundSince(r progress.Record, since, now time.Time, rateCap float64) int {
	elapsed := max(now.Sub(since).Seconds(), 0)
	rate := min(max(r.Throughput, m.rateFloor()), rateCap)
	b := float64(allowanceBatches*m.cfg.BatchSize) + RateSlack*rate*elapsed
	if b >= float64(1<<30) {
		return 1 << 30
	}
	return int(b)
}

// rateFloor is the rate every first-shard peer is allowed before rates are
// measured: the target batch per second.
func (m *Machine) rateFloor() float64 { return float64(max(m.cfg.TargetBatch, 1)) }

// rateCap is the lower median of the announced rates of the first shard's
// holders (at least the floor): no peer counts samples faster than the
// typical one, whatever it announces.
func (m *Machine) rateCap(recs []progress.Record) float64 {
	var rates []float64
	for _, r := range recs {
		if r.Shard == 0 && holding(r) {
			rates = append(rates, r.Throughput)
		}
	}
	if len(rates) == 0 {
		return m.rateFloor()
	}
	slices.Sort(rates)
	return max(rates[(len(rates)-1)/2], m.rateFloor())
}

// observe notes, for every first-shard peer, when this core first saw it
// in its current epoch (the start of its sample budget) and when it last
// finished samples (claimLive).
func (m *Machine) observe(recs []progress.Record, now time.Time) {
	for _, r := range recs {
		if r.Peer != m.cfg.Self && r.Shard == 0 {
			m.seen(r, now)
		}
	}
}

// seen takes in r, a first-shard peer's record, and returns what the core
// knows of the peer. Every record the core is shown counts: a peer whose
// finished samples were seen only by the check that closed the epoch (its
// last micro-batch, the others' records showing it) finished samples all
// the same, and must not look stalled ClaimStall later.
func (m *Machine) seen(r progress.Record, now time.Time) claimSeen {
	s, ok := m.claims[r.Peer]
	s.note(r.Epoch, r.Samples, now, !ok)
	m.claims[r.Peer] = s
	return s
}

// note takes in a holder's samples finished in epoch at now (first: the
// first time it is seen): at moves when it finished more.
func (s *claimSeen) note(epoch uint64, samples int, now time.Time, first bool) {
	if first || epoch != s.epoch && samples > 0 || epoch == s.epoch && samples > s.samples {
		s.at = now
	}
	if first || s.sinceEpoch != epoch || s.since.IsZero() {
		s.since, s.sinceEpoch = now, epoch
	}
	s.epoch, s.samples = epoch, samples
}

// MaxNormRatio bounds, for clipping, the gradient norm a shard reported by
// a single holder may have relative to this node's own shard: with no
// second report to compare it with, a 1e300 from one peer must not drive
// the clip scale to 0.
const MaxNormRatio = 10

// GlobalNormSq is the squared norm of the whole model's gradient for
// clipping: own (this node's shard) plus, for every other shard, the lower
// median of the squared norms its holders reported (one liar among two
// honest holders, or beside one, changes nothing), capped at
// MaxNormRatio² × own when the shard has a single report.
func GlobalNormSq(own float64, reports map[int][]float64) float64 {
	total := own
	for _, vs := range reports {
		if len(vs) == 0 {
			continue
		}
		vs = slices.Clone(vs)
		slices.Sort(vs)
		v := vs[(len(vs)-1)/2]
		if len(vs) == 1 {
			v = min(v, MaxNormRatio*MaxNormRatio*own)
		}
		total += v
	}
	return total
}

// Overclaims reports whether r claims more samples than any honest
// first-shard holder can, in sync mode (a lie on its face):
//
//   - finished in its epoch, more than the target batch and a micro-batch:
//     an honest holder draws at most its share of the target batch (never
//     more than the whole), and a micro-batch it drew counts in the epoch
//     it was drawn in;
//   - finished and in flight together, more than claimCeiling: a holder
//     shows a micro-batch as both while it finishes (an honest demo holder
//     was seen at 256 finished and 64 in flight of 256), and a lone holder
//     with --in-flight 64 has that many out when the epoch closes.
//
// The core then ignores the peer's samples and does not wait for it in
// rounds, and Verdicts bans it (RuleSamples). A liar that claims less is
// held to its rate (sampleBound).
func (m *Machine) Overclaims(r progress.Record) bool {
	return !m.cfg.Local && r.Shard == 0 && r.Peer != m.cfg.Self &&
		(r.Samples > m.finishedCeiling() || r.Samples+r.InFlight > m.claimCeiling())
}

// MaxInFlightBatches is the most micro-batches a node may keep in flight
// (trainer.MaxInFlight, --in-flight's ceiling).
const MaxInFlightBatches = 64

// finishedCeiling is the most samples an honest first-shard holder
// finishes in one epoch: the target batch, and a micro-batch of slack.
func (m *Machine) finishedCeiling() int {
	return m.cfg.TargetBatch + max(m.cfg.BatchSize, 1)
}

// claimCeiling is the most samples finished and in flight that an honest
// first-shard holder can show in one epoch: twice the target batch (late
// finishes and retries), plus a full pipeline of micro-batches.
func (m *Machine) claimCeiling() int {
	return 2*m.cfg.TargetBatch + MaxInFlightBatches*max(m.cfg.BatchSize, 1)
}

// overclaim is the evidence against a record that Overclaims.
func (m *Machine) overclaim(r progress.Record) string {
	if r.Samples > m.finishedCeiling() {
		return fmt.Sprintf("epoch %d: %d samples finished, more than an honest holder can (%d: the target batch of %d and a micro-batch)",
			r.Epoch, r.Samples, m.finishedCeiling(), m.cfg.TargetBatch)
	}
	return fmt.Sprintf("epoch %d: %d samples finished and %d in flight, more than an honest holder can (%d: twice the target batch of %d and %d micro-batches in flight)",
		r.Epoch, r.Samples, r.InFlight, m.claimCeiling(), m.cfg.TargetBatch, MaxInFlightBatches)
}

// SoleHolder returns the record of the run's only holder: the one live
// record that holds a shard (online or done). Nothing corroborates its
// epoch, and SwarmEpoch holds it to 1; a joiner that sees it advance may
// still take its state (SoleWatch).
func SoleHolder(recs []progress.Record) (progress.Record, bool) {
	var sole progress.Record
	n := 0
	for _, r := range recs {
		if holding(r) {
			sole = r
			n++
		}
	}
	return sole, n == 1
}

// A joiner believes the run's only holder once it has watched the holder's
// epoch advance by SoleAdvance over at least SoleWatchFor.
const (
	SoleWatchFor = 2 * time.Second
	SoleAdvance  = 2
)

// SoleWatch decides how far a joiner without trained state believes the
// run's only holder (SoleHolder) when nothing corroborates it: the first
// volunteer of a run that trained alone for a while is far ahead of epoch 1,
// and a joiner that held it to SwarmEpoch could never join it. A record
// alone proves nothing (a liar's record at the run's last epoch would
// finish the joiner), so the joiner watches the holder first: once the
// holder's epoch advanced by SoleAdvance over SoleWatchFor, a state up to
// its epoch plus what it advanced while watched (its record lags its state
// by about as much) is taken, and the held-out check (where the joiner has
// data) still judges the state. A liar that advances its claim at a
// plausible rate from a high start passes the watch; held-out data is then
// what refuses its state. A zero SoleWatch is ready to use.
type SoleWatch struct {
	peer  string
	epoch uint64
	at    time.Time
}

// Observe notes rec (the run's only holder) at now and returns the highest
// epoch of a state to take from it, with ok false while it has not been
// watched long enough, or did not advance, or is another holder than the
// one watched so far (the watch restarts).
func (w *SoleWatch) Observe(rec progress.Record, now time.Time) (limit uint64, ok bool) {
	if w.peer != rec.Peer || rec.Epoch < w.epoch {
		*w = SoleWatch{peer: rec.Peer, epoch: rec.Epoch, at: now}
		return 0, false
	}
	adv := rec.Epoch - w.epoch
	if now.Sub(w.at) < SoleWatchFor || adv < SoleAdvance {
		return 0, false
	}
	if rec.Epoch+adv < rec.Epoch {
		return math.MaxUint64, true
	}
	return rec.Epoch + adv, true
}
