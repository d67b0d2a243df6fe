package trainer

import (
	"fmt"
	"strings"

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
	// FaultGradFlip: the gradients it sends, in pipeline answers and in
	// gradient rounds, are flipped and scaled ×100.
	FaultGradFlip = "grad-flip"
)

// parseFaults reads a comma-separated list of fault modes.
func parseFaults(s string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		switch f {
		case "":
		case FaultEpochAhead, FaultSamples, FaultNormSq, FaultDonor, FaultDonorChunks, FaultCredit, FaultGradFlip:
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
