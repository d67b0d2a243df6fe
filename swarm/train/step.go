// Package train trains a whole model on one machine — every shard of a run
// in one process on one engine — and provides the pieces a distributed node
// reuses: running a micro-batch through a chain of shards, global-norm
// clipping across shards, and evaluation on a held-out set.
package train

import (
	"errors"
	"fmt"
	"math"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/swarm/data"
)

// ErrDiverged: a loss or gradient norm is NaN or infinite.
var ErrDiverged = errors.New("train: loss or gradient is not finite")

// ForwardBackward runs one training micro-batch through shards[0..n-1] and
// back, adding each shard's parameter gradients into its Grads. It returns
// the last shard's mean loss over the batch (0 when b.DeferLoss left it on
// the device: engine.LossTaker).
func ForwardBackward(shards []engine.Shard, b *engine.Batch) (float32, error) {
	tapes := make([]engine.Tape, len(shards))
	release := func() {
		for _, t := range tapes {
			if t != nil {
				t.Release()
			}
		}
	}
	var act []float32
	var loss float32
	for i, s := range shards {
		out, l, tape, err := s.Forward(b, act, true)
		if err != nil {
			release()
			return 0, fmt.Errorf("shard %d forward: %w", s.Index(), err)
		}
		tapes[i], act, loss = tape, out, l
	}
	if !b.DeferLoss && (math.IsNaN(float64(loss)) || math.IsInf(float64(loss), 0)) {
		release()
		return loss, fmt.Errorf("%w: loss %v", ErrDiverged, loss)
	}
	var grad []float32
	for i := len(shards) - 1; i >= 0; i-- {
		g, err := shards[i].Backward(tapes[i], grad)
		tapes[i] = nil
		if err != nil {
			release()
			return 0, fmt.Errorf("shard %d backward: %w", shards[i].Index(), err)
		}
		grad = g
	}
	return loss, nil
}

// MicroBatches splits a target batch into micro-batch sizes of at most
// batch, as equal as possible (they differ by at most one).
func MicroBatches(target, batch int) []int {
	k := (target + batch - 1) / batch
	sizes := make([]int, k)
	for i := range sizes {
		sizes[i] = target / k
		if i < target%k {
			sizes[i]++
		}
	}
	return sizes
}

// GradNorm is the L2 norm of the gradients of all shards together.
func GradNorm(shards []engine.Shard) float64 {
	var sq float64
	for _, s := range shards {
		sq += s.GradNormSq()
	}
	return math.Sqrt(sq)
}

// ClipScale is the factor to multiply gradients by so that their global norm
// is at most clip (0: no clipping), given the norm before scaling.
func ClipScale(norm, clip float64) float64 {
	if clip > 0 && norm > clip {
		return clip / norm
	}
	return 1
}

// Metrics are the results of an evaluation.
type Metrics struct {
	Set      string  `json:"set"`                // "test" or "val"
	Samples  int     `json:"samples"`            // held-out samples evaluated
	Loss     float64 `json:"loss"`               // mean loss per target
	Accuracy float64 `json:"accuracy,omitempty"` // fraction of correct argmax predictions (classification sets)
}

// Evaluate runs the held-out set (its first limit samples if limit > 0)
// through the shards in evaluation mode, batch samples at a time.
func Evaluate(shards []engine.Shard, set *data.EvalSet, batch, limit int) (Metrics, error) {
	n := set.Len
	if limit > 0 && limit < n {
		n = limit
	}
	mt := Metrics{Set: set.Name, Samples: n}
	if n == 0 {
		return mt, fmt.Errorf("evaluate: held-out set %q is empty", set.Name)
	}
	var lossSum float64
	correct := 0
	for start := 0; start < n; start += batch {
		b := set.Batch(start, min(batch, n-start))
		var act []float32
		var loss float32
		for _, s := range shards {
			out, l, _, err := s.Forward(b, act, false)
			if err != nil {
				return mt, fmt.Errorf("evaluate: shard %d forward: %w", s.Index(), err)
			}
			act, loss = out, l
		}
		lossSum += float64(loss) * float64(b.N)
		if set.Classes > 0 {
			logits := act // the last shard's evaluation returns its logits
			c := len(logits) / b.N
			for i := 0; i < b.N; i++ {
				row := logits[i*c : (i+1)*c]
				best := 0
				for j, v := range row {
					if v > row[best] {
						best = j
					}
				}
				if int32(best) == b.Targets[i] {
					correct++
				}
			}
		}
	}
	mt.Loss = lossSum / float64(n)
	if set.Classes > 0 {
		mt.Accuracy = float64(correct) / float64(n)
	}
	return mt, nil
}
