package native

import (
	"fmt"
	"sync"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/internal/fvec"
	"github.com/swarm-train/swarm/spec/run"
)

// model is one architecture's forward and backward over a shard's units.
// Inputs reaching it have been checked by the Shard.
type model interface {
	// arenaSize is the number of float32 values a tape of n samples needs.
	arenaSize(n int) int
	// forward fills the tape and returns the output activations (a fresh
	// slice) or, on the last shard, nil and the mean loss.
	forward(t *tape, in []float32) (out []float32, loss float32)
	// backward consumes the tape and returns the input gradient (a fresh
	// slice), nil on the first shard.
	backward(t *tape, gradOut []float32) []float32
	// logits returns the last shard's logits kept in the tape.
	logits(t *tape) []float32
	// checkBatch validates the parts of b this shard reads.
	checkBatch(b *engine.Batch, needTargets bool) error
}

// Shard is one native shard of a run. It implements engine.Shard.
type Shard struct {
	threads     int
	man         *run.Manifest
	index       int
	first, last bool
	layout      []run.Tensor
	tensors     map[string][]float32 // parameter views by tensor name
	params      []float32
	grads       []float32
	state       []float32
	opt         run.OptimizerSpec
	model       model
	inSize      int // per-sample input width (X on the first MLP shard, activations elsewhere; 0 for GPT embeddings)
	outSize     int // per-sample output width, 0 on the last shard
	cut         cutProj

	// mu: Forward holds it for reading (parameters), Backward and Step for
	// writing (gradients, parameters).
	mu   sync.RWMutex
	step int64

	poolMu sync.Mutex
	arenas [][]float32 // released tape arenas for reuse

	logitsMu   sync.Mutex
	lastLogits []float32
}

var _ engine.Shard = (*Shard)(nil)

// layoutSpan views the tensors first to last of layout (adjacent in it) in
// buf, one of the shard's flat buffers, as one slice.
func layoutSpan(layout []run.Tensor, buf []float32, first, last string) []float32 {
	lo, hi := -1, -1
	for _, t := range layout {
		if t.Name == first {
			lo = t.Offset
		}
		if t.Name == last {
			hi = t.Offset + t.Size()
		}
	}
	if lo < 0 || hi < lo {
		panic("native: tensors " + first + ".." + last + " missing from layout")
	}
	return buf[lo:hi]
}

// layoutView views one tensor of layout in buf.
func layoutView(layout []run.Tensor, buf []float32, name string) []float32 {
	return layoutSpan(layout, buf, name, name)
}

// cutProj is the shard's side of the learned projections at its cuts
// (training.activation_rank): up widens each incoming row from rank to
// upW values before the model, down narrows each outgoing row from downW
// to rank values after it. Either is nil where the shard has no such cut.
type cutProj struct {
	rank, rows  int // rows: activation rows a sample (a language model's positions)
	upW, downW  int
	up, dup     []float32 // [upW, rank] and its gradient
	down, ddown []float32 // [rank, downW] and its gradient
}

// arenaSize is what the projections keep on a tape of n samples: the
// narrow input and its widened copy, and the wide output's gradient.
func (c *cutProj) arenaSize(n int) int {
	size := 0
	if c.up != nil {
		size += n * c.rows * (c.rank + c.upW)
	}
	if c.down != nil {
		size += n * c.rows * c.downW
	}
	return size
}

// tape is what a training Forward keeps for its Backward.
type tape struct {
	owner   *Shard
	mu      sync.Mutex
	done    bool
	n       int
	arena   []float32
	used    int
	slots   [][]float32
	tokens  []int32
	targets []int32

	// cutIn is the narrow input an up-projection widened, cutOut the
	// model's wide output a down-projection narrowed.
	cutIn, cutOut []float32

	// gpt-char and llama activations (mlp-mnist uses slots); llama keeps
	// its final RMSNorm in lnf and lnfr.
	blocks          []blockActs
	lblocks         []llamaActs
	x               []float32 // residual stream after the shard's blocks
	lnf, lnfm, lnfr []float32
	logits, probs   []float32
}

// alloc cuts n values from the tape's arena (not zeroed).
func (t *tape) alloc(n int) []float32 {
	s := t.arena[t.used : t.used+n : t.used+n]
	t.used += n
	return s
}

// Release gives the tape's memory back to its shard; a consumed tape ignores it.
func (t *tape) Release() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return
	}
	t.done = true
	t.owner.putArena(t.arena)
	t.arena, t.slots = nil, nil
}

func (s *Shard) getArena(n int) []float32 {
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	for i, a := range s.arenas {
		if cap(a) >= n {
			s.arenas = append(s.arenas[:i], s.arenas[i+1:]...)
			return a[:n]
		}
	}
	return make([]float32, n)
}

func (s *Shard) putArena(a []float32) {
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	if len(s.arenas) < 4 {
		s.arenas = append(s.arenas, a)
	}
}

// Index is the shard's position in the run.
func (s *Shard) Index() int { return s.index }

// Layout is the shard's parameter tensor list.
func (s *Shard) Layout() []run.Tensor { return s.layout }

// Forward runs the shard on a micro-batch; see engine.Shard. On the last
// shard an evaluation Forward may leave b.Targets nil: it then returns loss 0
// and only records the logits.
func (s *Shard) Forward(b *engine.Batch, in []float32, train bool) ([]float32, float32, engine.Tape, error) {
	if b == nil || b.N <= 0 {
		return nil, 0, nil, fmt.Errorf("%w: batch is missing or has no samples", engine.ErrShape)
	}
	n := b.N
	if s.first {
		if in != nil {
			return nil, 0, nil, fmt.Errorf("%w: shard 0 takes no input activations", engine.ErrShape)
		}
	} else {
		if len(in) != n*s.inSize {
			return nil, 0, nil, fmt.Errorf("%w: shard %d input has %d values, want %d×%d", engine.ErrShape, s.index, len(in), n, s.inSize)
		}
		if i := fvec.FirstNonFinite(in); i >= 0 {
			return nil, 0, nil, fmt.Errorf("%w: shard %d input %d is %g", engine.ErrNonFinite, s.index, i, in[i])
		}
	}
	if err := s.model.checkBatch(b, s.last && train); err != nil {
		return nil, 0, nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	t := &tape{owner: s, n: n, arena: s.getArena(s.cut.arenaSize(n) + s.model.arenaSize(n))}
	if s.first && b.Tokens != nil {
		t.tokens = append([]int32(nil), b.Tokens...)
	}
	if s.last && b.Targets != nil {
		t.targets = append([]int32(nil), b.Targets...)
	}
	if s.first && in == nil {
		in = b.X // the MLP's first shard reads X; the GPT's reads tokens
	}
	if c := &s.cut; c.up != nil {
		rows := n * c.rows
		t.cutIn = t.alloc(rows * c.rank)
		copy(t.cutIn, in)
		wide := t.alloc(rows * c.upW)
		linearForward(s.threads, wide, t.cutIn, c.up, nil, rows, c.rank, c.upW)
		in = wide
	}
	out, loss := s.model.forward(t, in)
	if c := &s.cut; c.down != nil {
		rows := n * c.rows
		t.cutOut = out
		out = make([]float32, rows*c.rank)
		linearForward(s.threads, out, t.cutOut, c.down, nil, rows, c.downW, c.rank)
	}
	if !train {
		if s.last {
			out = append([]float32(nil), s.model.logits(t)...) // the arena goes back below
			s.logitsMu.Lock()
			s.lastLogits = append(s.lastLogits[:0], out...)
			s.logitsMu.Unlock()
		}
		t.Release()
		return out, loss, nil, nil
	}
	return out, loss, t, nil
}

// Backward consumes the tape of a training Forward; see engine.Shard.
func (s *Shard) Backward(tp engine.Tape, gradOut []float32) ([]float32, error) {
	t, ok := tp.(*tape)
	if !ok || t == nil || t.owner != s {
		return nil, fmt.Errorf("%w: tape is not from shard %d", engine.ErrTape, s.index)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return nil, fmt.Errorf("%w: tape already used or released", engine.ErrTape)
	}
	if s.last {
		if gradOut != nil {
			return nil, fmt.Errorf("%w: the last shard takes no output gradient", engine.ErrShape)
		}
	} else {
		if len(gradOut) != t.n*s.outSize {
			return nil, fmt.Errorf("%w: shard %d output gradient has %d values, want %d×%d", engine.ErrShape, s.index, len(gradOut), t.n, s.outSize)
		}
		if i := fvec.FirstNonFinite(gradOut); i >= 0 {
			return nil, fmt.Errorf("%w: shard %d output gradient %d is %g", engine.ErrNonFinite, s.index, i, gradOut[i])
		}
	}
	s.mu.Lock()
	c := &s.cut
	if c.down != nil {
		rows := t.n * c.rows
		wide := t.alloc(rows * c.downW)
		linearBackward(s.threads, wide, c.ddown, nil, gradOut, t.cutOut, c.down, rows, c.downW, c.rank)
		gradOut = wide
	}
	gradIn := s.model.backward(t, gradOut)
	if c.up != nil {
		rows := t.n * c.rows
		narrow := make([]float32, rows*c.rank)
		linearBackward(s.threads, narrow, c.dup, nil, gradIn, t.cutIn, c.up, rows, c.rank, c.upW)
		gradIn = narrow
	}
	s.mu.Unlock()
	t.done = true
	s.putArena(t.arena)
	t.arena, t.slots, t.cutIn, t.cutOut = nil, nil, nil, nil
	return gradIn, nil
}

// Logits returns a copy of the last shard's logits from the most recent
// evaluation Forward, nil elsewhere or before one.
func (s *Shard) Logits() []float32 {
	s.logitsMu.Lock()
	defer s.logitsMu.Unlock()
	if s.lastLogits == nil {
		return nil
	}
	return append([]float32(nil), s.lastLogits...)
}

// Params is the live flat parameter buffer.
func (s *Shard) Params() []float32 { return s.params }

// Grads is the live flat gradient buffer.
func (s *Shard) Grads() []float32 { return s.grads }

// OptState is the live optimizer state: AdamW's m then v, or SGD's momentum.
func (s *Shard) OptState() []float32 { return s.state }

// ZeroGrad clears the gradients.
func (s *Shard) ZeroGrad() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.grads)
}

// GradNormSq is the squared L2 norm of the gradients, summed in float64 in a
// fixed order.
func (s *Shard) GradNormSq() float64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	const chunk = 1 << 15
	parts := make([]float64, (len(s.grads)+chunk-1)/chunk)
	forRange(s.threads, len(parts), 1, func(lo, hi int) {
		for p := lo; p < hi; p++ {
			parts[p] = fvec.SumSquares(s.grads[p*chunk : min((p+1)*chunk, len(s.grads))])
		}
	})
	var sum float64
	for _, v := range parts {
		sum += v
	}
	return sum
}

// StepCount is the number of optimizer steps taken.
func (s *Shard) StepCount() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.step
}

// SetStepCount restores the step count (bias correction uses it).
func (s *Shard) SetStepCount(n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.step = n
}

// Sync does nothing: the live buffers are the ones computed on.
func (s *Shard) Sync() error { return nil }

// Close drops the pooled tape memory.
func (s *Shard) Close() error {
	s.poolMu.Lock()
	s.arenas = nil
	s.poolMu.Unlock()
	return nil
}

// checkTokenBatch checks a language model's batch: on the first shard its
// tokens, on the last its targets (when given or needed), T a sample, each
// below the vocabulary V.
func (s *Shard) checkTokenBatch(b *engine.Batch, T, V int, needTargets bool) error {
	if s.first {
		if err := checkIDs("batch tokens", b.Tokens, b.N*T, V); err != nil {
			return err
		}
	}
	if s.last && (needTargets || b.Targets != nil) {
		return checkIDs("batch targets", b.Targets, b.N*T, V)
	}
	return nil
}

// checkIDs verifies ids has want entries, each in [0, limit).
func checkIDs(what string, ids []int32, want, limit int) error {
	if len(ids) != want {
		return fmt.Errorf("%w: %s has %d entries, want %d", engine.ErrShape, what, len(ids), want)
	}
	for i, v := range ids {
		if v < 0 || int(v) >= limit {
			return fmt.Errorf("%w: %s[%d] = %d not in [0, %d)", engine.ErrRange, what, i, v, limit)
		}
	}
	return nil
}
