package trainer

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"sort"

	"github.com/swarm-train/swarm/swarm/credit"
	"github.com/swarm-train/swarm/swarm/epochs"
	"github.com/swarm-train/swarm/swarm/progress"
)

// BulkStatus is a node's bulk listener and its averaging transfers so far.
type BulkStatus struct {
	Listen    string `json:"listen"`
	Transfers int64  `json:"transfers"` // on direct connections, as sender or reducer
	OnLibp2p  int64  `json:"on_libp2p"` // offered but left on libp2p (a peer's port not reachable, its tickets full)
}

// Status is the training part of `swarm status --json` (under
// services.training). The README documents it.
type Status struct {
	RunID       string  `json:"run_id"`
	RunName     string  `json:"run_name"`
	Mode        string  `json:"mode"`
	Epoch       uint64  `json:"epoch"`  // this node's collaborative epoch
	Epochs      int     `json:"epochs"` // in the whole run
	Shard       int     `json:"shard"`  // held by this node, -1 before choosing
	State       string  `json:"state"`
	Samples     int     `json:"samples"` // the swarm's samples in this epoch so far
	TargetBatch int     `json:"target_batch"`
	SamplesPerS float64 `json:"samples_per_s"` // global: through the first shard
	Loss        float64 `json:"loss"`          // recent training loss (last shard)
	Utilization float64 `json:"utilization"`   // this node: time computing / wall time
	BusySeconds float64 `json:"busy_seconds"`  // this node's time computing since the trainer started
	WallSeconds float64 `json:"wall_seconds"`  // wall time since the trainer started
	Processed   int64   `json:"processed"`     // samples through this node's shard since it started
	Accuracy    float64 `json:"accuracy"`      // test accuracy at the end of the run, -1 before
	// ValLoss and ValPerplexity (language models): this node's last
	// evaluation on the validation split (exp of the loss: per token of the
	// run's tokenizer); absent before one.
	ValLoss       *float64 `json:"val_loss,omitempty"`
	ValPerplexity *float64 `json:"val_perplexity,omitempty"`
	ParamsHash    string   `json:"params_hash"` // FNV-1a of this node's shard parameters (holders of a shard compare equal after averaging)
	Averaging     avgInfo  `json:"averaging"`   // this node's last averaging round
	// EpochPhases (sync mode, once an epoch has passed every phase): where
	// this node's recent epochs spent their time (phases.go).
	EpochPhases *EpochPhases `json:"epoch_phases,omitempty"`
	// OuterTraffic (local mode): the outer rounds this node averaged with
	// peers and their bytes, by kind.
	OuterTraffic *OuterTraffic `json:"outer_traffic,omitempty"`
	// Bulk (with Config.BulkListen): the bulk listener and the averaging
	// transfers it moved to direct connections or left on libp2p.
	Bulk   *BulkStatus   `json:"bulk,omitempty"`
	Shards []ShardStatus `json:"shards"`
	Peers  []PeerStatus  `json:"peers"`
	// Credit is this node's credited work: the samples its receipts back.
	Credit credit.Totals `json:"credit"`
}

// ShardStatus is one shard of the run.
type ShardStatus struct {
	Index      int      `json:"index"`
	Peers      []string `json:"peers"`
	Throughput float64  `json:"throughput"` // samples/s, sum over holders
	// NoHolder: no live node holds the shard online (or done); the swarm
	// waits for one to take it. LastSeenEpoch: the epoch a holder was
	// last seen at (nil: never seen).
	NoHolder      bool    `json:"no_holder,omitempty"`
	LastSeenEpoch *uint64 `json:"last_seen_epoch,omitempty"`
}

// PeerStatus is one live node of the run (this one included).
type PeerStatus struct {
	PeerID     string  `json:"peer_id"`
	Shard      int     `json:"shard"`
	State      string  `json:"state"`
	Device     string  `json:"device"`
	Throughput float64 `json:"throughput"`
	Epoch      uint64  `json:"epoch"`
	Accuracy   float64 `json:"accuracy"`
	// Credit is the samples its record says its receipts back; CreditCheck
	// is this node's last check of that claim: "" (not checked yet),
	// "backed" or why it failed.
	Credit      int64  `json:"credit"`
	CreditCheck string `json:"credit_check,omitempty"`
}

// OuterTraffic counts local mode's outer rounds averaged with peers: delta
// rounds (compressed with delta_codec topk) and rounds that also average
// the outer state; bytes are what this node sent and received. Values is
// the length of this node's delta.
type OuterTraffic struct {
	DeltaRounds uint64 `json:"delta_rounds"`
	DeltaBytes  int64  `json:"delta_bytes"`
	StateRounds uint64 `json:"state_rounds"`
	StateBytes  int64  `json:"state_bytes"`
	Values      int    `json:"values"`
}

// Status reports the trainer's view of the run.
func (t *Trainer) Status() Status {
	t.gossip.Current() // refresh our own record
	recs := t.tracker.Live(t.clk.Now())
	paused := t.pausedNow()
	sum := progress.Summarize(recs, len(t.m.Shards))
	mt := t.meters
	busy, wall := mt.busyTime().Seconds(), mt.wall().Seconds()
	t.mu.Lock()
	st := Status{
		RunID: t.runID, RunName: t.m.Name, Mode: t.m.Averaging.Mode, Epoch: t.epoch, Epochs: t.totalEpochs(),
		Shard: t.index, State: t.state, TargetBatch: t.m.Training.TargetBatch, Averaging: mt.lastRound(),
		Accuracy: -1, Samples: t.core.Samples(t.inputLocked()), Processed: mt.samples(),
	}
	if t.m.Model.LanguageModel() && t.evalLoss > 0 {
		l, p := t.evalLoss, math.Exp(t.evalLoss)
		st.ValLoss, st.ValPerplexity = &l, &p
	}
	if t.done {
		st.State = progress.StateDone
	}
	if st.State == progress.StateOnline && paused {
		st.State = progress.StatePaused
	}
	if !t.sync() {
		st.OuterTraffic = &OuterTraffic{DeltaRounds: mt.deltaRounds.Load(), DeltaBytes: mt.deltaBytes.Load(),
			StateRounds: mt.stateRounds.Load(), StateBytes: mt.stateBytes.Load(), Values: int(mt.deltaValues.Load())}
	}
	if ph := mt.epochPhases(); ph.Epochs > 0 {
		st.EpochPhases = &ph
	}
	if t.bulk != nil {
		up, stayed := t.bulk.Stats()
		st.Bulk = &BulkStatus{Listen: t.bulk.Addr().String(), Transfers: up, OnLibp2p: stayed}
	}
	if wall > 0 {
		st.Utilization = busy / wall
		st.BusySeconds, st.WallSeconds = busy, wall
	}
	sh := t.shard
	t.noteSeenLocked(recs)
	seen := make(map[int]uint64, len(t.lastSeen))
	for k, v := range t.lastSeen {
		seen[k] = v
	}
	t.mu.Unlock()
	if sh != nil {
		t.stepMu.RLock()
		h := fnv.New64a()
		var b [4]byte
		for _, x := range sh.Params() {
			binary.LittleEndian.PutUint32(b[:], math.Float32bits(x))
			h.Write(b[:])
		}
		t.stepMu.RUnlock()
		st.ParamsHash = fmt.Sprintf("%016x", h.Sum64())
	}
	st.SamplesPerS, st.Loss = sum.Throughput, sum.Loss
	for i := range t.m.Shards {
		peers := append([]string{}, sum.ShardPeers[i]...)
		sort.Strings(peers)
		st.Shards = append(st.Shards, ShardStatus{Index: i, Peers: peers, Throughput: sum.ShardTP[i]})
	}
	for _, i := range epochs.Unheld(recs, len(t.m.Shards)) {
		st.Shards[i].NoHolder = true
		if e, ok := seen[i]; ok {
			st.Shards[i].LastSeenEpoch = &e
		}
	}
	var checks map[string]credit.Checked
	if t.credit != nil {
		st.Credit, checks = t.credit.Credited(), t.credit.Verified()
	}
	for _, r := range recs {
		ps := PeerStatus{PeerID: r.Peer, Shard: r.Shard, State: r.ShownState(), Device: r.Device,
			Throughput: r.Throughput, Epoch: r.Epoch, Accuracy: r.Accuracy, Credit: r.Credit}
		if c, ok := checks[r.Peer]; ok {
			ps.CreditCheck = "backed"
			if c.Err != "" {
				ps.CreditCheck = c.Err
			}
		}
		st.Peers = append(st.Peers, ps)
		if r.Accuracy > st.Accuracy {
			st.Accuracy = r.Accuracy
		}
	}
	return st
}

// rateLocked is the compute rate in FLOP/s the claims use: measured, or
// the announced one before that (t.mu held).
func (t *Trainer) rateLocked() float64 {
	if t.index < 0 {
		return t.startRate()
	}
	if r, ok := t.meters.rate(t.flops[t.index]); ok {
		return r
	}
	return t.startRate()
}

// record is this node's progress record.
func (t *Trainer) record() progress.Record {
	paused := t.pausedNow()
	last := t.meters.lastRound()
	t.mu.Lock()
	defer t.mu.Unlock()
	r := progress.Record{
		Shard: max(t.index, 0), State: t.state, Device: t.cfg.Device, Rate: t.rateLocked(),
		Throughput: t.meters.throughput(), Epoch: t.epoch, Samples: t.samples, Loss: t.meters.loss(),
		Round: last.Round, GroupSize: last.GroupSize, Fraction: last.Fraction, Accuracy: t.accuracy,
		Closing: t.closing, Paused: paused, InFlight: t.drawn, Norms: append([]progress.EpochNorm(nil), t.norms...),
		Banned: slices.Clone(t.banned), Outer: t.outerSumLocked(),
	}
	if t.credit != nil {
		r.Credit = t.credit.Credited().Samples
	}
	if t.index < 0 {
		r.State = progress.StateJoining
		r.Shard = -1 // not a holder yet
	}
	if t.done {
		r.State = progress.StateDone
	}
	// Never a record that the peers' checks refuse (progress.Record.Check):
	// a later shard counts every micro-batch it served in its epoch, and
	// while the first shard's holders are apart (some left behind, or some
	// averaging without a liar they banned) it serves more than twice the
	// target batch in one. The peers refused each such record, banned the
	// node for the repeated refusals, and it never finished the run (the
	// donor red-team run: a shard-1 holder at 598 samples stopped at epoch
	// 593 of 600). Only the first shard's count decides anything, and an
	// honest holder's is within the limit; a later shard's is shown capped.
	lim := t.recordLimits()
	r.Samples, r.InFlight = min(max(r.Samples, 0), lim.MaxSamples), min(max(r.InFlight, 0), lim.MaxSamples)
	t.lieLocked(&r)
	return r
}
