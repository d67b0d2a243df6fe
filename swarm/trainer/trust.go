package trainer

import (
	"errors"
	"fmt"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/averaging"
	"github.com/swarm-train/swarm/swarm/epochs"
	"github.com/swarm-train/swarm/swarm/pipeline"
	"github.com/swarm-train/swarm/swarm/progress"
)

// Values peers send that pass every bound but are far larger than the
// other senders': the trainer refuses them, counts the refusal, and reports
// the offense to the decision core, which bans a peer that keeps offending
// (epochs.RepeatOffenses). Both checks use the run's averaging.norm_k and
// are off without it.
//
//   - In the pipeline, a stage compares the activations of each training
//     request, and a sender the gradients of each answer, with those of the
//     recent senders (pipeline.NormWatch). A request is answered bad input;
//     an answer is not acknowledged (no receipt credits it), counts as a
//     failed hop and the micro-batch goes to another holder.
//   - In averaging, the reducers reject a member's part far above the
//     group's median (averaging.Config.NormK); each rejection this node saw
//     as a reducer is an offense of the member.

// whyNorm is the refusal reason for values far above the other senders'.
const whyNorm = "norm"

// errOutlier marks values far above the recent senders' (checkScale).
var errOutlier = errors.New("far above the other senders'")

// A pipeline request far ahead of this node's epoch (maxEpochLead) cannot
// be served. Whether it is a lie depends on what its sender told the swarm:
//   - its own record is in that epoch too: an honest holder ahead (a lone
//     holder waiting for a shard that rejoined); the stream is reset and
//     nothing is held against it (errEpochAhead);
//   - its record is far behind the request (by more than maxEpochLead too):
//     the request contradicts what its sender reports; it is counted and an
//     offense for the core, which bans a sender that keeps doing it
//     (epochs.RulePipelineEpoch, errEpochLie);
//   - it has no record: refused with a strike, like any bad input
//     (errFarEpoch, stage.go).
var (
	errEpochAhead = errors.New("epoch far ahead of this node's, as its sender's record says")
	errEpochLie   = errors.New("epoch far ahead of this node's and of its sender's record")
)

// farEpoch is the refusal of a request of epoch from p, this node being in
// own (epoch > own + maxEpochLead).
func (s *stageServer) farEpoch(p peer.ID, epoch, own uint64) error {
	rec, ok := s.gate.peerRecord(p)
	switch {
	case !ok:
		return fmt.Errorf("epoch %d, this node is in %d, the sender has no record: %w", epoch, own, errFarEpoch)
	case rec.Epoch >= epoch-min(epoch, maxEpochLead):
		return fmt.Errorf("epoch %d, this node is in %d, the sender's record in %d: %w", epoch, own, rec.Epoch, errEpochAhead)
	}
	err := fmt.Errorf("epoch %d, this node is in %d, the sender's record in %d: %w", epoch, own, rec.Epoch, errEpochLie)
	s.gate.offend(p, epochs.RulePipelineEpoch, "a pipeline request of "+err.Error())
	return err
}

// banNorm: a sender of outlying gradients is not excluded from the next
// picks (the micro-batch goes to another holder): its next answers are
// checked and counted too, until the core bans it.
const banNorm = 0

// checkScale checks the values v (samples > 0: a gradient of a micro-batch
// of that many samples) that p sent against the recent senders'; it returns
// the refusal when they are far above.
func (s *stageServer) checkScale(w *pipeline.NormWatch, p peer.ID, what string, v []float32, samples int) error {
	scale := pipeline.Scale(v, samples)
	out, ref := w.Check(p, scale)
	if !out {
		return nil
	}
	err := fmt.Errorf("%w: %s of scale %.3g, %.3g times the recent senders' %.3g (norm_k %g)", errOutlier, what, scale, scale/ref, ref, s.m.Averaging.NormK)
	s.gate.offend(p, epochs.RulePipelineNorm, err.Error())
	s.refusals.Count(p, protoPipeline, whyNorm, err) // judged by the core
	return err
}

// offend reports an offense of p in this node's epoch to the core; the
// epoch loop carries out a verdict at its next turn.
func (t *Trainer) offend(p peer.ID, rule, evidence string) {
	t.mu.Lock()
	t.core.Offend(epochs.Offense{Peer: p.String(), Rule: rule, Epoch: t.epoch, Evidence: evidence}, t.clk.Now())
	t.mu.Unlock()
	t.kickEpoch()
}

// outlierPrefix starts the reason averaging gives a member whose part a
// reducer of this node rejected for its norm (Result.Excluded).
const outlierPrefix = "as sender: rejected: "

// averagingOffenses reports the members of a round whose parts this node,
// as a reducer, rejected as outliers.
func (t *Trainer) averagingOffenses(res averaging.Result) {
	for p, why := range res.Excluded {
		if ev, ok := strings.CutPrefix(why, outlierPrefix); ok {
			t.offend(p, epochs.RuleAveraging, ev)
		}
	}
}

// lieGradient is FaultAvgFlip: the gradient this node contributes to
// gradient rounds flipped and scaled ×100 (FaultGradFlip, on the pipeline's
// answers, is the stage server's gradFlip).
func (t *Trainer) lieGradient(v []float32) {
	if t.faults[FaultAvgFlip] {
		flip(v)
	}
}

// flip is the fault injections' lie: v flipped and scaled ×100.
func flip(v []float32) {
	for i := range v {
		v[i] *= -100
	}
}

// peerRecord is p's live record (stageGate).
func (t *Trainer) peerRecord(p peer.ID) (progress.Record, bool) {
	return t.tracker.Get(p.String(), t.clk.Now())
}
