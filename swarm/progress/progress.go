// Package progress keeps what the nodes of a run tell each other about
// themselves: the shard each holds, its speed and state, the collaborative
// epoch it is in and the samples it has processed there, its recent loss.
// Records are pushed to every run peer over a small protocol; each one is
// bound to the peer that sent it (the authenticated stream's remote peer)
// and expires if not refreshed. There is no coordinator: every node derives
// the global epoch and progress from the records it holds.
package progress

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"
)

// Node states.
const (
	StateJoining = "joining" // downloading state or not yet trained
	StateOnline  = "online"  // training
	StateDone    = "done"    // the run's last epoch is finished
	// StatePaused is never sent: status views show it for an online node
	// whose record says Paused.
	StatePaused = "paused"
)

// ShownState is the state status views show for r: paused for an online
// node that its volunteer's limits hold.
func (r *Record) ShownState() string {
	if r.Paused && r.State == StateOnline {
		return StatePaused
	}
	return r.State
}

// MaxRecordSize bounds one encoded record on the wire.
const MaxRecordSize = 8 << 10

// Record is one node's self-report.
type Record struct {
	Peer       string  `json:"peer"`
	RunID      string  `json:"run_id"`
	Seq        uint64  `json:"seq"`   // grows with every record a node sends; older ones are ignored
	Shard      int     `json:"shard"` // -1 before the node has chosen one
	State      string  `json:"state"`
	Device     string  `json:"device"`
	Rate       float64 `json:"rate"`              // FLOP/s on its shard (claims.Holder.Rate)
	Throughput float64 `json:"throughput"`        // samples/s through its shard
	Epoch      uint64  `json:"epoch"`             // collaborative epoch (optimizer step) it is in
	Samples    int     `json:"samples"`           // samples it finished in that epoch
	Loss       float64 `json:"loss"`              // recent training loss seen by this node (last shard), or 0
	Round      uint64  `json:"round"`             // last averaging round
	GroupSize  int     `json:"group_size"`        // of that round
	Fraction   float64 `json:"fraction"`          // of the vector averaged in it
	Accuracy   float64 `json:"accuracy"`          // test accuracy once measured, else -1
	Closing    bool    `json:"closing,omitempty"` // ending its epoch (averaging) now
	// Paused is set while the volunteer's limits (GPU temperature, other
	// programs) hold its training; it still holds its shard and serves state.
	Paused bool `json:"paused,omitempty"`
	// InFlight is the number of samples it started in Epoch and has not
	// finished yet (first shard), so peers do not start more than the
	// target batch between them.
	InFlight int `json:"in_flight,omitempty"`
	// Norms are the squared L2 norms of its shard's averaged gradient in
	// its latest epochs (sync mode), from which every shard derives the
	// global norm for clipping.
	Norms []EpochNorm `json:"norms,omitempty"`
	// Credit is the samples its receipts back (swarm/credit): a claim any
	// run peer may check against the receipts it shows.
	Credit int64 `json:"credit,omitempty"`
	// Banned are the peers this node banned in the run for a lie it saw
	// (the latest MaxBanned): a node that did not see the lie bans a peer
	// that a majority of its shard's other holders name
	// (epochs.RuleBannedByPeers), so that the honest
	// holders of a shard never split over a liar only some of them caught.
	Banned []string `json:"banned,omitempty"`
	// Left is set on the last record of a node that leaves the run:
	// receivers drop its record at once rather than at its expiry.
	Left bool `json:"left,omitempty"`
	// EveryMS is how often (ms) the node publishes its record at least
	// (Gossip: it grows with the swarm). Receivers keep the record for at
	// least three such intervals.
	EveryMS int64 `json:"every_ms,omitempty"`
	// Outer (local mode) is a fingerprint of the outer state, the anchor
	// and momentum, it began Epoch with; 0 where it has none for Epoch.
	// Holders whose fingerprints agree need not average that state
	// (epochs.OuterStateEvery). Any value is a valid claim: one that lies
	// costs its mates at most the periodic state round they ran before.
	Outer uint64 `json:"outer,omitempty"`
}

// MaxBanned bounds Record.Banned.
const MaxBanned = 8

// MaxEvery bounds Record.EveryMS: a record claims to be refreshed at least
// this often, so it lives at most 3×MaxEvery past the tracker's TTL.
const MaxEvery = 20 * time.Second

// EpochNorm is the squared norm of a shard's averaged gradient in one epoch.
type EpochNorm struct {
	Epoch  uint64  `json:"epoch"`
	NormSq float64 `json:"norm_sq"`
}

// MaxNorms bounds Record.Norms.
const MaxNorms = 4

// NormAt returns the squared gradient norm the record reports for epoch.
func (r *Record) NormAt(epoch uint64) (float64, bool) {
	for _, n := range r.Norms {
		if n.Epoch == epoch {
			return n.NormSq, true
		}
	}
	return 0, false
}

// Validate checks a decoded record; errors name the field.
func (r *Record) Validate() error {
	if r.Peer == "" {
		return errors.New("record: peer missing")
	}
	if r.Shard < -1 || r.Shard > 1<<16 {
		return fmt.Errorf("record: shard %d out of range", r.Shard)
	}
	switch r.State {
	case StateJoining, StateOnline, StateDone:
	default:
		return fmt.Errorf("record: unknown state %q", r.State)
	}
	for _, f := range []struct {
		name string
		v    float64
	}{{"rate", r.Rate}, {"throughput", r.Throughput}, {"loss", r.Loss}, {"fraction", r.Fraction}} {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) || f.v < 0 {
			return fmt.Errorf("record: %s %v is not a finite non-negative number", f.name, f.v)
		}
	}
	if r.Samples < 0 || r.GroupSize < 0 || r.InFlight < 0 || r.Credit < 0 || r.Credit > MaxCredit {
		return errors.New("record: negative count or credit out of range")
	}
	if r.EveryMS < 0 || r.EveryMS > MaxEvery.Milliseconds() {
		return fmt.Errorf("record: every_ms %d outside 0..%d", r.EveryMS, MaxEvery.Milliseconds())
	}
	if len(r.Norms) > MaxNorms {
		return fmt.Errorf("record: %d gradient norms, at most %d", len(r.Norms), MaxNorms)
	}
	for _, n := range r.Norms {
		if math.IsNaN(n.NormSq) || math.IsInf(n.NormSq, 0) || n.NormSq < 0 {
			return fmt.Errorf("record: gradient norm of epoch %d: %v is not a finite non-negative number", n.Epoch, n.NormSq)
		}
	}
	if len(r.Banned) > MaxBanned {
		return fmt.Errorf("record: %d banned peers, at most %d", len(r.Banned), MaxBanned)
	}
	for _, p := range r.Banned {
		if p == "" || len(p) > 128 {
			return fmt.Errorf("record: banned peer %.16q empty or over 128 bytes", p)
		}
	}
	if len(r.Device) > 128 || len(r.RunID) > 128 || len(r.Peer) > 128 {
		return errors.New("record: peer, device or run_id too long")
	}
	switch {
	case r.Rate > MaxRate:
		return fmt.Errorf("record: rate %g FLOP/s over %g", r.Rate, MaxRate)
	case r.Throughput > MaxThroughput:
		return fmt.Errorf("record: throughput %g samples/s over %g", r.Throughput, float64(MaxThroughput))
	case r.Loss > MaxLoss:
		return fmt.Errorf("record: loss %g over %g", r.Loss, float64(MaxLoss))
	case r.Fraction > 1:
		return fmt.Errorf("record: fraction %g over 1", r.Fraction)
	case math.IsNaN(r.Accuracy) || r.Accuracy < -1 || r.Accuracy > 1:
		return fmt.Errorf("record: accuracy %v outside [-1, 1]", r.Accuracy)
	case r.GroupSize > MaxGroupSize:
		return fmt.Errorf("record: group of %d, at most %d", r.GroupSize, MaxGroupSize)
	}
	return nil
}

// Caps on a record's numbers whatever the run (Validate).
const (
	MaxRate       = 1e18 // FLOP/s
	MaxThroughput = 1e9  // samples/s
	MaxLoss       = 1e6
	MaxGroupSize  = 1 << 16
	MaxCredit     = 1 << 32 // samples: at most 65,536 receipts (credit.MaxKept) of at most 65,536 samples each
)

// Limits are what the run implies for a record (Check).
type Limits struct {
	Shards     int    // the run's shard count: Shard < Shards
	MaxSamples int    // Samples and InFlight at most
	MaxEpoch   uint64 // the run's last epoch
}

// Check refuses a valid record whose numbers the run does not allow; a zero
// field of l checks nothing.
func (r *Record) Check(l Limits) error {
	if l.Shards > 0 && r.Shard >= l.Shards {
		return fmt.Errorf("record: shard %d, the run has %d", r.Shard, l.Shards)
	}
	if l.MaxSamples > 0 && (r.Samples > l.MaxSamples || r.InFlight > l.MaxSamples) {
		return fmt.Errorf("record: %d samples, %d in flight; at most %d", r.Samples, r.InFlight, l.MaxSamples)
	}
	if l.MaxEpoch > 0 {
		if r.Epoch > l.MaxEpoch {
			return fmt.Errorf("record: epoch %d, the run has %d", r.Epoch, l.MaxEpoch)
		}
		for _, n := range r.Norms {
			if n.Epoch > l.MaxEpoch {
				return fmt.Errorf("record: norm of epoch %d, the run has %d", n.Epoch, l.MaxEpoch)
			}
		}
	}
	return nil
}

// Encode returns the record's wire form (JSON).
func (r *Record) Encode() ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxRecordSize {
		return nil, fmt.Errorf("record: %d bytes, limit %d", len(b), MaxRecordSize)
	}
	return b, nil
}

// Decode parses and validates a wire record.
func Decode(b []byte) (*Record, error) {
	if len(b) > MaxRecordSize {
		return nil, fmt.Errorf("record: %d bytes, limit %d", len(b), MaxRecordSize)
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("record: %w", err)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// MaxPeers bounds the peers a Tracker holds records of.
const MaxPeers = 1024

// Tracker holds the latest live record of every peer, of MaxPeers at most.
type Tracker struct {
	ttl time.Duration
	max int

	mu      sync.Mutex
	recs    map[string]entry
	changed chan struct{} // closed and replaced on every accepted update
}

type entry struct {
	rec  Record
	seen time.Time
	ttl  time.Duration
}

// life is how long the tracker keeps rec after it arrives: its TTL, or
// three of the intervals at which rec's node says it publishes when that
// is longer.
func (t *Tracker) life(rec Record) time.Duration {
	every := min(time.Duration(rec.EveryMS)*time.Millisecond, MaxEvery)
	return max(t.ttl, 3*every)
}

// NewTracker keeps records for ttl after they arrive.
func NewTracker(ttl time.Duration) *Tracker {
	return &Tracker{ttl: ttl, max: MaxPeers, recs: map[string]entry{}, changed: make(chan struct{})}
}

// Update stores rec if it is newer than what the tracker holds for its
// peer. A new peer's record is dropped while MaxPeers live records are held.
func (t *Tracker) Update(rec Record, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	old, ok := t.recs[rec.Peer]
	if ok && old.rec.Seq >= rec.Seq && now.Sub(old.seen) < old.ttl {
		return false
	}
	if !ok && len(t.recs) >= t.max {
		for p, e := range t.recs {
			if now.Sub(e.seen) >= e.ttl {
				delete(t.recs, p)
			}
		}
		if len(t.recs) >= t.max {
			return false
		}
	}
	t.recs[rec.Peer] = entry{rec: rec, seen: now, ttl: t.life(rec)}
	close(t.changed)
	t.changed = make(chan struct{})
	return true
}

// Forget drops a peer's record (it was seen gone); waiters on Changed wake.
func (t *Tracker) Forget(peer string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.recs[peer]; ok {
		delete(t.recs, peer)
		close(t.changed)
		t.changed = make(chan struct{})
	}
}

// Get returns peer's live record.
func (t *Tracker) Get(peer string, now time.Time) (Record, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.recs[peer]
	if !ok || now.Sub(e.seen) >= e.ttl {
		return Record{}, false
	}
	return e.rec, true
}

// TTL is how long the tracker keeps a record at least.
func (t *Tracker) TTL() time.Duration { return t.ttl }

// Has reports whether the tracker holds a record of peer, live or not.
func (t *Tracker) Has(peer string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.recs[peer]
	return ok
}

// Len is the number of peers whose records the tracker holds.
func (t *Tracker) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.recs)
}

// ShardLen is the number of peers whose records the tracker holds with
// shard.
func (t *Tracker) ShardLen(shard int) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, e := range t.recs {
		if e.rec.Shard == shard {
			n++
		}
	}
	return n
}

// Changed returns a channel closed at the next accepted update.
func (t *Tracker) Changed() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changed
}

// Live returns the unexpired records sorted by peer.
func (t *Tracker) Live(now time.Time) []Record {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Record, 0, len(t.recs))
	for p, e := range t.recs {
		if now.Sub(e.seen) >= e.ttl {
			delete(t.recs, p)
			continue
		}
		out = append(out, e.rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Peer < out[j].Peer })
	return out
}

// Summary is what a node derives from the live records (its own included).
type Summary struct {
	Epoch      uint64    // highest epoch any live peer reports
	Samples    int       // samples finished in Epoch by the first shard's holders
	Throughput float64   // global samples/s: sum over the first shard's holders
	Loss       float64   // mean recent loss over last-shard holders that report one
	ShardTP    []float64 // per shard, sum of holders' samples/s
	ShardPeers [][]string
}

// Summarize derives the swarm's state from records for a run of nShards.
func Summarize(recs []Record, nShards int) Summary {
	s := Summary{ShardTP: make([]float64, nShards), ShardPeers: make([][]string, nShards)}
	for _, r := range recs {
		s.Epoch = max(s.Epoch, r.Epoch)
	}
	var lossSum float64
	var lossN int
	for _, r := range recs {
		if r.Shard < 0 || r.Shard >= nShards {
			continue
		}
		s.ShardTP[r.Shard] += r.Throughput
		s.ShardPeers[r.Shard] = append(s.ShardPeers[r.Shard], r.Peer)
		if r.Shard == 0 {
			s.Throughput += r.Throughput
			if r.Epoch == s.Epoch {
				s.Samples += r.Samples
			}
		}
		if r.Shard == nShards-1 && r.Loss > 0 {
			lossSum += r.Loss
			lossN++
		}
	}
	if lossN > 0 {
		s.Loss = lossSum / float64(lossN)
	}
	return s
}
