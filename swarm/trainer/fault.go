package trainer

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/swarm/pipeline"
	"github.com/swarm-train/swarm/swarm/progress"
)

// Fault injection for the process tests of Byzantine peers (the hidden
// --fault flag): each mode makes this node lie in one way the trust rules
// must survive. Never set them otherwise.
const (
	// FaultEpochAhead: its record claims an epoch 100 ahead (at most the
	// run's last).
	FaultEpochAhead = "epoch-ahead"
	// FaultSamples: its record claims twice the target batch finished and
	// in flight, at a throughput of 1e9 samples/s.
	FaultSamples = "samples"
	// FaultNormSq: its record reports squared gradient norms of 1e300.
	FaultNormSq = "normsq"
	// FaultDonor: it serves state sync an all-zero state (finite garbage,
	// correct chunk hashes) one epoch ahead of its own.
	FaultDonor = "donor"
	// FaultDonorChunks: it serves its real header with chunks that do not
	// match it.
	FaultDonorChunks = "donor-chunks"
	// FaultCredit: its record claims four times the credit its receipts
	// back, plus 10,000 samples.
	FaultCredit = "credit"
	// FaultGradFlip: the gradients it sends in pipeline answers are flipped
	// and scaled ×100.
	FaultGradFlip = "grad-flip"
	// FaultAvgFlip: the gradient it contributes to gradient rounds is
	// flipped and scaled ×100.
	FaultAvgFlip = "avg-flip"
	// FaultRequestEpoch: besides its honest micro-batches, it sends each
	// holder of the next shard a training request of epoch 2^64-1 every
	// 50 ms, while its record tells its real epoch.
	FaultRequestEpoch = "request-epoch"
	// FaultReduceLie: as a reducer of gradient and state rounds it returns
	// every part's aggregate flipped and ×10, committed to as it is
	// (averaging.Config.LieAsReducer): reducer audits must catch it.
	FaultReduceLie = "reduce-lie"
)

// parseFaults reads a comma-separated list of fault modes.
func parseFaults(s string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		switch f {
		case "":
		case FaultEpochAhead, FaultSamples, FaultNormSq, FaultDonor, FaultDonorChunks, FaultCredit, FaultGradFlip, FaultAvgFlip, FaultRequestEpoch, FaultReduceLie:
			out[f] = true
		default:
			return nil, fmt.Errorf("trainer: unknown fault %q", f)
		}
	}
	return out, nil
}

// lieLocked rewrites this node's record as its faults say (t.mu held).
func (t *Trainer) lieLocked(r *progress.Record) {
	if t.faults[FaultEpochAhead] && r.Shard >= 0 {
		r.Epoch = min(r.Epoch+100, uint64(t.totalEpochs()))
	}
	if t.faults[FaultDonor] && r.Shard >= 0 {
		r.Epoch = min(r.Epoch+1, uint64(t.totalEpochs()))
	}
	if t.faults[FaultSamples] {
		lim := t.recordLimits()
		r.Samples, r.InFlight, r.Throughput = lim.MaxSamples, lim.MaxSamples, progress.MaxThroughput
	}
	if t.faults[FaultCredit] {
		r.Credit = min(4*r.Credit+10_000, progress.MaxCredit)
	}
	if t.faults[FaultNormSq] {
		for i := range r.Norms {
			r.Norms[i].NormSq = 1e300
		}
	}
}

// garbage is a FaultDonor's state: all zeros.
func garbage(v []float32) []float32 { return make([]float32, len(v)) }

// farEpochLoop is FaultRequestEpoch's flood of requests from the future.
func (t *Trainer) farEpochLoop(ctx context.Context) {
	for clock.Sleep(ctx, t.clk, 50*time.Millisecond) == nil {
		t.mu.Lock()
		next := t.index + 1
		t.mu.Unlock()
		if next <= 0 || next >= len(t.m.Shards) {
			continue
		}
		s := t.stage.shape(next)
		q := &pipeline.Request{Kind: pipeline.KindTrain, Shard: uint32(next), Epoch: math.MaxUint64, N: 1,
			Act: make([]float32, s.ActPerSample), Targets: make([]int32, s.TargetsPerSample), Precision: t.stage.wirePrecision()}
		payload := q.Encode()
		for _, p := range t.holders(next, false) {
			_, _ = t.stage.call(ctx, p, q, payload)
		}
	}
}
