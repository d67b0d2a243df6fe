// Package engine defines what a node asks of the code that computes a shard:
// forward, backward, flat parameter/gradient/optimizer buffers and the
// optimizer step. The pure-Go engine (engine/native) and the PyTorch worker
// (engine/torch) both implement it with the same parameter layout
// (run.Manifest.Layout), so buffers move between them and between nodes as-is.
package engine

import (
	"errors"

	"github.com/swarm-train/swarm/spec/run"
)

// Batch is one micro-batch of training data. The first shard reads X (dense
// inputs, N×input for mlp-mnist) or Tokens (N×block_size token ids for
// gpt-char and llama); the last shard reads Targets (N class labels, or N×block_size
// next-token ids). Shards in between read neither.
type Batch struct {
	N       int
	X       []float32
	Tokens  []int32
	Targets []int32
	// DeferLoss asks a last shard that is a LossTaker (and DefersLoss) to
	// keep a training forward's loss on its device: Forward returns 0 and
	// TakeLoss reads the sum later. Other shards ignore it.
	DeferLoss bool
}

// LossTaker is a last shard that can keep the losses of training forwards
// on its device (Batch.DeferLoss), so that a micro-batch costs no wait for
// the device: the loss is read once per optimizer step.
type LossTaker interface {
	// DefersLoss says whether deferring helps (a GPU) or was asked for.
	DefersLoss() bool
	// TakeLoss returns the sum of loss × samples of the deferred forwards
	// since the last call, and their samples, and starts a new sum. After a
	// device restart it may cover fewer samples than were sent.
	TakeLoss() (sum float64, samples int, err error)
}

// Tape holds what a Forward kept for its Backward. Each tape is consumed by
// exactly one Backward (or released with Release), so several micro-batches
// may be in flight through one shard at once.
type Tape interface {
	Release()
}

// Shard is one contiguous stage of a model on one device. Forward and
// Backward may be called from several goroutines; parameter-gradient
// accumulation and Step are serialised inside the engine.
type Shard interface {
	// Index is the shard's position in the run's manifest.
	Index() int
	// Forward runs the stage on a micro-batch. in is the previous shard's
	// output activations (N×ActivationSize of the previous shard), nil on the
	// first shard. It returns this shard's output activations, or on the last
	// shard the mean loss over the batch's targets and, for an evaluation, the
	// logits (N×classes, or N×block_size×vocab; nil when training). A training
	// Forward (train true) returns a tape for Backward; an evaluation one
	// returns nil.
	Forward(b *Batch, in []float32, train bool) (out []float32, loss float32, tape Tape, err error)
	// Backward consumes the tape of one training Forward. gradOut is the
	// gradient of the loss with respect to this shard's output (nil on the
	// last shard, which starts from its own mean loss). It adds the parameter
	// gradients into Grads and returns the gradient with respect to the input
	// (nil on the first shard).
	Backward(tape Tape, gradOut []float32) (gradIn []float32, err error)
	// Logits returns the last shard's output scores of the most recent
	// evaluation Forward (N×classes, or N×block_size×vocab); nil elsewhere.
	// With evaluations running at once, use the logits each Forward returns.
	Logits() []float32

	// Params, Grads and OptState are the live flat buffers (layout:
	// run.Manifest.Layout; OptState is the optimizer's per-parameter state,
	// e.g. AdamW's first then second moments). Callers may read and overwrite
	// their contents between steps, never resize them.
	Params() []float32
	Grads() []float32
	OptState() []float32
	// ZeroGrad clears the gradient buffer.
	ZeroGrad()
	// GradNormSq is the squared L2 norm of the gradient buffer (for clipping
	// by the global norm across shards).
	GradNormSq() float64
	// Step applies one optimizer step at learning rate lr to gradients
	// multiplied by scale (for clipping and averaging), and advances the step
	// counter.
	Step(lr float64, scale float32) error
	// StepCount is the number of optimizer steps taken; SetStepCount restores it.
	StepCount() int64
	SetStepCount(n int64)
	// Sync makes the live buffers current after they were written from
	// outside (a device engine copies them to the device); a host engine may
	// do nothing.
	Sync() error
	Close() error
}

// Engine builds shards on one kind of device.
type Engine interface {
	// Name is a short name such as "native" or "torch-cuda".
	Name() string
	// NewShard builds shard index of the run with the run's initial parameters
	// (run.Manifest.InitParams) and zero optimizer state.
	NewShard(m *run.Manifest, index int) (Shard, error)
	Close() error
}

// Errors shared by the engines.
var (
	// ErrShape: a buffer's length does not match what the shard expects.
	ErrShape = errors.New("engine: buffer has the wrong size")
	// ErrNonFinite: an input or gradient holds NaN or Inf.
	ErrNonFinite = errors.New("engine: non-finite value")
	// ErrRange: a token id or class label is outside the model's vocabulary
	// or classes.
	ErrRange = errors.New("engine: id out of range")
	// ErrTape: a tape was used twice, or came from another shard.
	ErrTape = errors.New("engine: invalid tape")
)
