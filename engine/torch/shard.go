package torch

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/internal/fvec"
	"github.com/swarm-train/swarm/spec/run"
)

// ErrClosed: the shard was closed.
var ErrClosed = errors.New("torch: shard closed")

// ErrLostTape: a tape whose forward ran on parameters older than the last
// snapshot could not be rebuilt after a worker restart; run the micro-batch
// again.
var ErrLostTape = errors.New("torch: tape lost in a worker restart")

// The worker's three flat buffers, in the order of the shared layout.
const (
	bufParams = iota
	bufGrads
	bufOpt
	nBufs
)

var bufNames = [nBufs]string{"params", "grads", "opt"}

// hostBuf is the node's copy of one of the worker's buffers.
type hostBuf struct {
	v     []float32
	ver   uint64 // the worker version v holds; stale when it is behind Shard.wver
	sum   uint64 // hash of v when it last equalled the worker's buffer
	sumOK bool   // sum is set (hashed when first lent after a fetch)
	lent  bool   // returned to a caller since the last call into the worker
}

// Shard is one shard computed by one worker process.
type Shard struct {
	e      *Engine
	m      *run.Manifest
	index  int
	layout []run.Tensor
	nParam int
	nOpt   int
	first  bool
	last   bool
	inSize int // activations per sample in (0 on the first shard)
	outSz  int // activations per sample out (0 on the last shard)
	init   map[string]any
	seed   maphash.Seed

	mu        sync.Mutex
	p         *proc
	device    string
	precision string // the worker's: fp32 or bf16
	sdpa      bool   // the worker uses scaled_dot_product_attention
	ckptActs  bool   // the worker recomputes blocks in the backward
	restarts  int
	closed    bool
	host      [nBufs]hostBuf
	wver      [nBufs]uint64 // bumped by every request that changes the worker's buffer
	zeroSum   uint64        // hash of an all-zero gradient buffer
	step      int64
	logits    []float32
	nextTape  uint64
	tapes     map[uint64]*fwd // training forwards whose tape the worker holds

	// Crash recovery: the state a restarted worker starts from, the
	// forwards from before it still to be rebuilt, and the requests since,
	// replayed in order.
	snap      [nBufs][]float32
	snapStep  int64
	snapEpoch uint64 // parameter epoch of the snapshot
	snapAt    time.Time
	snapSteps int // steps since the snapshot
	snapshots int // snapshots taken
	epoch     uint64
	carried   map[uint64]*fwd
	log       []*logOp
	logBytes  int64
}

// fwd is one training forward whose tape the worker holds (or held).
type fwd struct {
	id      uint64
	n       int
	inputs  []tensor // as sent to the worker
	epoch   uint64   // parameters it ran on
	op      *logOp   // its log entry, while the log holds it
	carried bool     // ran before the snapshot, on its parameters: rebuilt first
}

// logOp is one request since the snapshot that changed the worker's state.
type logOp struct {
	typ     uint16
	meta    any
	tensors []tensor
	skip    bool // a forward whose tape was released unused
}

type tape struct {
	s    *Shard
	id   uint64
	used bool
}

func (t *tape) Release() {
	if t == nil || t.used {
		return
	}
	t.used = true
	t.s.release(t.id)
}

var _ engine.Shard = (*Shard)(nil)

func newShard(e *Engine, m *run.Manifest, index int) (*Shard, error) {
	layout, err := m.Layout(index)
	if err != nil {
		return nil, err
	}
	params, err := m.InitParams(index)
	if err != nil {
		return nil, err
	}
	s := &Shard{e: e, m: m, index: index, layout: layout, nParam: len(params),
		first: index == 0, last: index == len(m.Shards)-1, seed: maphash.MakeSeed(),
		tapes: map[uint64]*fwd{}, carried: map[uint64]*fwd{}}
	if !s.first {
		s.inSize = m.ActivationSize(index - 1)
	}
	s.outSz = m.ActivationSize(index)
	nState := 2
	if m.Optimizer.Name == "sgd" {
		nState = 1
	}
	s.nOpt = nState * s.nParam
	s.host[bufParams].v, s.host[bufGrads].v, s.host[bufOpt].v = params, make([]float32, s.nParam), make([]float32, s.nOpt)
	s.zeroSum = s.hash(s.host[bufGrads].v)
	s.snapshotFromHostLocked()
	names := make([]string, len(layout))
	shapes := make([][]int, len(layout))
	decay := make([]bool, len(layout))
	for i, t := range layout {
		names[i], shapes[i], decay[i] = t.Name, t.Shape, Decays(t)
	}
	sp := m.Shards[index]
	s.init = map[string]any{
		"model": m.Model, "start": sp.Start, "end": sp.End, "first": s.first, "last": s.last,
		"optimizer": m.Optimizer, "names": names, "shapes": shapes, "decay": decay,
		"device": e.opts.Device, "threads": e.opts.Threads, "tf32": e.opts.TF32, "max_memory_mib": e.opts.MaxMemoryMiB,
		"precision": e.opts.Precision, "compile": e.opts.Compile, "sdpa": !e.opts.ManualAttention,
		"checkpoint_activations": e.opts.CheckpointActivations,
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.startLocked(); err != nil {
		return nil, err
	}
	return s, nil
}

// Decays reports whether weight decay applies to a tensor: matrices except the embeddings.
func Decays(t run.Tensor) bool {
	return len(t.Shape) == 2 && t.Name != "wte" && t.Name != "wpe"
}

// startLocked starts a worker, loads the snapshot and replays what happened
// since: the forwards carried over from before the snapshot, then the log.
func (s *Shard) startLocked() error {
	p, err := startProc(s.e.opts.Python, s.e.script, s.e.opts.Env, s.e.opts.Logger)
	if err != nil {
		return err
	}
	meta := map[string]any{"what": bufNames[:], "step": s.snapStep}
	for k, v := range s.init {
		meta[k] = v
	}
	rep, err := p.roundTrip(msgInit, meta, []tensor{f32(s.snap[bufParams]), f32(s.snap[bufGrads]), f32(s.snap[bufOpt])}, s.e.opts.StartTimeout)
	if err != nil {
		p.kill()
		var we *WorkerError
		if errors.As(err, &we) {
			return fmt.Errorf("torch: initialise shard %d: %w", s.index, err)
		}
		if strings.Contains(err.Error(), "cannot import torch") {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		return fmt.Errorf("torch: start worker for shard %d: %w", s.index, err)
	}
	s.device = rep.metaString("device")
	s.precision = rep.metaString("precision")
	s.sdpa, _ = rep.Meta["sdpa"].(bool)
	s.ckptActs, _ = rep.Meta["checkpoint_activations"].(bool)
	s.p = p
	ids := make([]uint64, 0, len(s.carried))
	for id := range s.carried {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		f := s.carried[id]
		if _, err := s.p.roundTrip(msgForward, fwdMeta(f.id, f.n, true), f.inputs, s.e.opts.RequestTimeout); err != nil {
			return s.replayFailed(err)
		}
	}
	for _, op := range s.log {
		if op.skip {
			continue
		}
		if _, err := s.p.roundTrip(op.typ, op.meta, op.tensors, s.e.opts.RequestTimeout); err != nil {
			return s.replayFailed(err)
		}
	}
	// Forwards that ran before the snapshot on other parameters are gone.
	for id, f := range s.tapes {
		if f.op == nil && !f.carried {
			delete(s.tapes, id)
		}
	}
	return nil
}

func fwdMeta(id uint64, n int, train bool) map[string]any {
	return map[string]any{"n": n, "train": train, "tape": id}
}

func (s *Shard) replayFailed(err error) error {
	s.p.kill()
	s.p = nil
	return fmt.Errorf("torch: replay into restarted worker of shard %d: %w", s.index, err)
}

// call sends one request; a dead or hung worker is killed, restarted,
// restored, and the request retried once.
func (s *Shard) call(typ uint16, meta any, tensors []tensor) (*frame, error) {
	if s.closed {
		return nil, ErrClosed
	}
	for attempt := 0; ; attempt++ {
		if s.p == nil {
			if s.restarts >= s.e.opts.MaxRestarts {
				return nil, fmt.Errorf("%w: shard %d: worker restarted %d times, giving up", ErrWorkerDied, s.index, s.restarts)
			}
			s.restarts++
			s.e.opts.Logger.Warn("restarting torch worker", "shard", s.index, "restart", s.restarts, "replay", len(s.log)+len(s.carried))
			if err := s.startLocked(); err != nil {
				return nil, err
			}
		}
		rep, err := s.p.roundTrip(typ, meta, tensors, s.e.opts.RequestTimeout)
		if err == nil || !errors.Is(err, ErrWorkerDied) {
			return rep, err
		}
		s.e.opts.Logger.Warn("torch worker failed", "shard", s.index, "err", err)
		s.p.kill()
		s.p = nil
		if attempt >= 1 {
			return nil, err
		}
	}
}

func (s *Shard) hash(v []float32) uint64 { return maphash.Bytes(s.seed, memBytes(v)) }

func (s *Shard) current(i int) bool { return s.host[i].ver == s.wver[i] }

// fetchLocked copies the worker's buffers named by idx into the host copies.
func (s *Shard) fetchLocked(idx ...int) error {
	what := make([]string, len(idx))
	for k, i := range idx {
		what[k] = bufNames[i]
	}
	rep, err := s.call(msgGetState, map[string]any{"what": what}, nil)
	if err != nil {
		return err
	}
	if len(rep.Tensors) != len(idx) {
		return fmt.Errorf("%w: %d buffers fetched, want %d", ErrProtocol, len(rep.Tensors), len(idx))
	}
	for k, i := range idx {
		h := &s.host[i]
		if len(rep.Tensors[k].F) != len(h.v) {
			return fmt.Errorf("%w: %s buffer of %d values, want %d", ErrProtocol, what[k], len(rep.Tensors[k].F), len(h.v))
		}
		copy(h.v, rep.Tensors[k].F)
		h.ver, h.sumOK = s.wver[i], false
	}
	return nil
}

// flushLocked sends the worker what callers wrote into the host buffers lent
// to them; skip (or -1) names a buffer whose writes are dropped. Every
// request starts with it.
func (s *Shard) flushLocked(skip int) error {
	var idx []int
	var sums []uint64
	for i := range s.host {
		h := &s.host[i]
		if !h.lent || i == skip {
			continue
		}
		if sum := s.hash(h.v); sum != h.sum {
			idx, sums = append(idx, i), append(sums, sum)
		}
	}
	if len(idx) > 0 {
		what := make([]string, len(idx))
		ts := make([]tensor, len(idx))
		for k, i := range idx {
			what[k], ts[k] = bufNames[i], f32(s.host[i].v)
		}
		meta := map[string]any{"what": what}
		if _, err := s.call(msgSetState, meta, ts); err != nil {
			return err
		}
		for k, i := range idx {
			s.wver[i]++
			s.host[i].ver, s.host[i].sum, s.host[i].sumOK = s.wver[i], sums[k], true
			if i == bufParams {
				s.epoch++
			}
		}
		if s.current(bufParams) && s.current(bufGrads) && s.current(bufOpt) {
			s.snapshotFromHostLocked() // the host holds the whole state: no need to log
		} else {
			for k := range ts {
				ts[k] = f32(slices.Clone(ts[k].F))
			}
			s.appendLog(&logOp{typ: msgSetState, meta: meta, tensors: ts})
		}
	}
	for i := range s.host {
		s.host[i].lent = false
	}
	return nil
}

func tensorBytes(ts []tensor) int64 {
	var n int64
	for _, t := range ts {
		n += 4 * int64(t.len())
	}
	return n
}

// appendLog records a request for replay; a log past MaxLogBytes is cut by
// a snapshot.
func (s *Shard) appendLog(op *logOp) {
	s.log = append(s.log, op)
	s.logBytes += tensorBytes(op.tensors)
	if s.logBytes > s.e.opts.MaxLogBytes {
		s.snapshotNowLocked("log size")
	}
}

func (s *Shard) snapshotNowLocked(why string) {
	if err := s.snapshotLocked(); err != nil {
		s.e.opts.Logger.Error("torch: snapshot", "shard", s.index, "reason", why, "err", err)
	}
}

// snapshotLocked fetches the buffers the host does not have and makes the
// host state the new snapshot.
func (s *Shard) snapshotLocked() error {
	var stale []int
	for i := range s.host {
		if !s.current(i) {
			stale = append(stale, i)
		}
	}
	if len(stale) > 0 {
		if err := s.fetchLocked(stale...); err != nil {
			return err
		}
	}
	s.snapshotFromHostLocked()
	return nil
}

// snapshotFromHostLocked records the host buffers, which must equal the
// worker's, as the state a restarted worker starts from, and empties the log.
func (s *Shard) snapshotFromHostLocked() {
	for i := range s.host {
		s.snap[i] = append(s.snap[i][:0], s.host[i].v...)
	}
	s.snapStep, s.snapEpoch = s.step, s.epoch
	s.snapAt, s.snapSteps = time.Now(), 0
	s.snapshots++
	clear(s.log)
	s.log, s.logBytes = s.log[:0], 0
	// Tapes still open are rebuilt first after a restart if they ran on the
	// snapshot's parameters; the others cannot be.
	clear(s.carried)
	for id, f := range s.tapes {
		f.op = nil
		f.carried = f.epoch == s.epoch
		if f.carried {
			s.carried[id] = f
		}
	}
}

func (s *Shard) Index() int { return s.index }

// PID is the worker's process id (0 when none runs).
func (s *Shard) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p == nil {
		return 0
	}
	return s.p.pid()
}

// Device is where the worker computes: "cuda" or "cpu".
func (s *Shard) Device() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.device
}

// Precision is how the worker computes: "fp32", or "bf16" (autocast over
// float32 master weights, on CUDA).
func (s *Shard) Precision() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.precision
}

// CheckpointsActivations says whether the worker recomputes each block in
// the backward (Options.CheckpointActivations).
func (s *Shard) CheckpointsActivations() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ckptActs
}

// SDPA says whether the worker's attention is torch's
// scaled_dot_product_attention (else the explicit softmax attention).
func (s *Shard) SDPA() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sdpa
}

// DefersLoss: on CUDA (or with Options.DeferLoss) the last shard keeps
// training losses on the device (engine.LossTaker).
func (s *Shard) DefersLoss() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.defersLoss()
}

func (s *Shard) defersLoss() bool { return s.last && (s.device == "cuda" || s.e.opts.DeferLoss) }

// TakeLoss reads and clears the worker's sum of the deferred losses (one
// device sync). The request is logged, so a restarted worker replaying the
// log sums from the same point; losses of forwards before the last snapshot
// are lost with the old worker, and the samples returned say so.
func (s *Shard) TakeLoss() (float64, int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.last {
		return 0, 0, fmt.Errorf("torch: shard %d is not the last: it has no loss", s.index)
	}
	meta := map[string]any{}
	rep, err := s.call(msgTakeLoss, meta, nil)
	if err != nil {
		return 0, 0, fmt.Errorf("torch: take loss of shard %d: %w", s.index, err)
	}
	sum, err := rep.metaFloat("sum")
	if err != nil {
		return 0, 0, err
	}
	n, err := rep.metaFloat("n")
	if err != nil {
		return 0, 0, err
	}
	if n < 0 || n != math.Trunc(n) || n > 1<<40 {
		return 0, 0, fmt.Errorf("%w: take loss: %v samples", ErrProtocol, n)
	}
	s.appendLog(&logOp{typ: msgTakeLoss, meta: meta})
	return sum, int(n), nil
}

// Restarts is how many times the worker was restarted.
func (s *Shard) Restarts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restarts
}

func (s *Shard) Forward(b *engine.Batch, in []float32, train bool) ([]float32, float32, engine.Tape, error) {
	if b == nil || b.N <= 0 {
		return nil, 0, nil, fmt.Errorf("%w: batch needs N > 0", engine.ErrShape)
	}
	inputs, err := s.inputs(b, in, train)
	if err != nil {
		return nil, 0, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.flushLocked(-1); err != nil {
		return nil, 0, nil, fmt.Errorf("torch: forward shard %d: %w", s.index, err)
	}
	var id uint64
	if train {
		s.nextTape++
		id = s.nextTape
	}
	meta := fwdMeta(id, b.N, train)
	deferred := s.last && train && b.DeferLoss && s.defersLoss()
	if deferred {
		meta["defer_loss"] = true
	}
	rep, err := s.call(msgForward, meta, inputs)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("torch: forward shard %d: %w", s.index, err)
	}
	var out []float32
	var loss float32
	if s.last && deferred {
		if d, _ := rep.Meta["deferred"].(bool); !d {
			return nil, 0, nil, fmt.Errorf("%w: forward did not defer its loss", ErrProtocol)
		}
	} else if s.last {
		l, err := rep.metaFloat("loss")
		if err != nil {
			return nil, 0, nil, err
		}
		loss = float32(l)
		if !train {
			if len(rep.Tensors) != 1 {
				return nil, 0, nil, fmt.Errorf("%w: eval forward returned %d buffers", ErrProtocol, len(rep.Tensors))
			}
			s.logits = rep.Tensors[0].F
			out = s.logits
		}
	} else {
		if len(rep.Tensors) != 1 || len(rep.Tensors[0].F) != b.N*s.outSz {
			return nil, 0, nil, fmt.Errorf("%w: forward returned the wrong activations", ErrProtocol)
		}
		out = rep.Tensors[0].F
	}
	if !train {
		return out, loss, nil, nil
	}
	f := &fwd{id: id, n: b.N, inputs: inputs, epoch: s.epoch}
	f.op = &logOp{typ: msgForward, meta: meta, tensors: inputs}
	s.tapes[id] = f
	s.appendLog(f.op)
	return out, loss, &tape{s: s, id: id}, nil
}

// inputs validates a batch and lists the buffers a forward sends: copies
// for a training forward, which the log keeps.
func (s *Shard) inputs(b *engine.Batch, in []float32, train bool) ([]tensor, error) {
	cf := func(v []float32) []float32 { return v }
	ci := func(v []int32) []int32 { return v }
	if train {
		cf, ci = slices.Clone[[]float32], slices.Clone[[]int32]
	}
	md := s.m.Model
	var ts []tensor
	if s.first {
		if md.Arch == run.ArchMLPMNIST {
			if len(b.X) != b.N*md.Input {
				return nil, fmt.Errorf("%w: X has %d values, want %d×%d", engine.ErrShape, len(b.X), b.N, md.Input)
			}
			if !fvec.AllFinite(b.X) {
				return nil, fmt.Errorf("%w in X", engine.ErrNonFinite)
			}
			ts = append(ts, f32(cf(b.X)))
		} else {
			if len(b.Tokens) != b.N*md.BlockSize {
				return nil, fmt.Errorf("%w: Tokens has %d values, want %d×%d", engine.ErrShape, len(b.Tokens), b.N, md.BlockSize)
			}
			for _, t := range b.Tokens {
				if t < 0 || int(t) >= md.Vocab {
					return nil, fmt.Errorf("%w: token %d outside the vocabulary of %d", engine.ErrShape, t, md.Vocab)
				}
			}
			ts = append(ts, i32(ci(b.Tokens)))
		}
	} else {
		if len(in) != b.N*s.inSize {
			return nil, fmt.Errorf("%w: input activations have %d values, want %d×%d", engine.ErrShape, len(in), b.N, s.inSize)
		}
		if !fvec.AllFinite(in) {
			return nil, fmt.Errorf("%w in input activations", engine.ErrNonFinite)
		}
		ts = append(ts, f32(cf(in)))
	}
	if s.last {
		want, classes := b.N, md.Classes
		if md.LanguageModel() {
			want, classes = b.N*md.BlockSize, md.Vocab
		}
		if len(b.Targets) != want {
			return nil, fmt.Errorf("%w: Targets has %d values, want %d", engine.ErrShape, len(b.Targets), want)
		}
		for _, t := range b.Targets {
			if t < 0 || int(t) >= classes {
				return nil, fmt.Errorf("%w: target %d outside [0, %d)", engine.ErrShape, t, classes)
			}
		}
		ts = append(ts, i32(ci(b.Targets)))
	}
	return ts, nil
}

func (s *Shard) Backward(tp engine.Tape, gradOut []float32) ([]float32, error) {
	t, ok := tp.(*tape)
	if !ok || t == nil || t.s != s || t.used {
		return nil, engine.ErrTape
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.tapes[t.id]
	if f == nil {
		t.used = true
		return nil, fmt.Errorf("torch: shard %d: %w", s.index, ErrLostTape)
	}
	var ts []tensor
	if !s.last {
		if len(gradOut) != f.n*s.outSz {
			return nil, fmt.Errorf("%w: output gradient has %d values, want %d×%d", engine.ErrShape, len(gradOut), f.n, s.outSz)
		}
		if !fvec.AllFinite(gradOut) {
			return nil, fmt.Errorf("%w in output gradient", engine.ErrNonFinite)
		}
		ts = []tensor{f32(slices.Clone(gradOut))}
	}
	t.used = true
	if err := s.flushLocked(-1); err != nil {
		s.dropTape(f)
		return nil, fmt.Errorf("torch: backward shard %d: %w", s.index, err)
	}
	meta := map[string]any{"tape": t.id}
	rep, err := s.call(msgBackward, meta, ts)
	delete(s.tapes, t.id)
	if err != nil {
		s.dropTape(f)
		return nil, fmt.Errorf("torch: backward shard %d: %w", s.index, err)
	}
	s.wver[bufGrads]++
	if f.op == nil && !f.carried {
		// Its forward ran before the snapshot on other parameters: a
		// replay could not redo this backward, so the state is kept now.
		s.snapshotNowLocked("backward of an old forward")
	} else {
		s.appendLog(&logOp{typ: msgBackward, meta: meta, tensors: ts})
	}
	if s.first {
		return nil, nil
	}
	if len(rep.Tensors) != 1 || len(rep.Tensors[0].F) != f.n*s.inSize {
		return nil, fmt.Errorf("%w: backward returned the wrong input gradient", ErrProtocol)
	}
	return rep.Tensors[0].F, nil
}

// dropTape forgets a forward whose tape the worker no longer holds without
// a logged backward: it is left out of any replay.
func (s *Shard) dropTape(f *fwd) {
	delete(s.tapes, f.id)
	if f.op != nil && !f.op.skip {
		f.op.skip = true
		s.logBytes -= tensorBytes(f.op.tensors)
		f.op.tensors = nil
	}
	if f.carried {
		delete(s.carried, f.id)
		f.carried = false
	}
}

func (s *Shard) release(id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.tapes[id]
	if f == nil {
		return
	}
	s.dropTape(f)
	if s.p != nil {
		_, _ = s.call(msgRelease, map[string]any{"tape": id}, nil)
	}
}

func (s *Shard) Logits() []float32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logits
}

// lend returns host buffer i, fetched from the worker first if the worker
// changed it since. Writes into it reach the worker at the next call into
// the shard (Sync, or any other); after that call, get the buffer again.
func (s *Shard) lend(i int) []float32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := &s.host[i]
	if !s.closed && !s.current(i) {
		if err := s.fetchLocked(i); err != nil {
			s.e.opts.Logger.Error("torch: fetch "+bufNames[i], "shard", s.index, "err", err)
		}
	}
	if !h.lent && !h.sumOK {
		h.sum, h.sumOK = s.hash(h.v), true
	}
	h.lent = true
	return h.v
}

// Params returns the host copy of the parameters, current as of this call
// (fetched from the worker when a Step changed them). Values written into
// it reach the worker at the next call into the shard, Sync or another.
func (s *Shard) Params() []float32 { return s.lend(bufParams) }

// OptState returns the host copy of the optimizer state, like Params.
func (s *Shard) OptState() []float32 { return s.lend(bufOpt) }

// Grads returns the host copy of the gradients, like Params (fetched when a
// Backward changed them).
func (s *Shard) Grads() []float32 { return s.lend(bufGrads) }

func (s *Shard) ZeroGrad() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.flushLocked(bufGrads); err != nil {
		s.e.opts.Logger.Error("torch: zero gradients", "shard", s.index, "err", err)
	}
	if _, err := s.call(msgZeroGrad, nil, nil); err != nil {
		s.e.opts.Logger.Error("torch: zero gradients", "shard", s.index, "err", err)
		return
	}
	s.wver[bufGrads]++
	h := &s.host[bufGrads]
	clear(h.v)
	h.ver, h.sum, h.sumOK = s.wver[bufGrads], s.zeroSum, true
	s.appendLog(&logOp{typ: msgZeroGrad})
}

func (s *Shard) GradNormSq() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.flushLocked(-1); err != nil {
		s.e.opts.Logger.Error("torch: gradient norm", "shard", s.index, "err", err)
		return math.NaN()
	}
	if s.current(bufGrads) {
		var sum float64
		for _, g := range s.host[bufGrads].v {
			sum += float64(g) * float64(g)
		}
		return sum
	}
	rep, err := s.call(msgGradNorm, nil, nil)
	if err != nil {
		s.e.opts.Logger.Error("torch: gradient norm", "shard", s.index, "err", err)
		return math.NaN()
	}
	v, err := rep.metaFloat("normsq")
	if err != nil {
		return math.NaN()
	}
	return v
}

func (s *Shard) Step(lr float64, scale float32) error {
	if math.IsNaN(lr) || math.IsInf(lr, 0) || lr < 0 || math.IsNaN(float64(scale)) || math.IsInf(float64(scale), 0) {
		return fmt.Errorf("%w: step lr %g scale %g", engine.ErrNonFinite, lr, scale)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.flushLocked(-1); err != nil {
		return fmt.Errorf("torch: step shard %d: %w", s.index, err)
	}
	meta := map[string]any{"lr": lr, "scale": scale}
	rep, err := s.call(msgStep, meta, nil)
	if err != nil {
		return fmt.Errorf("torch: step shard %d: %w", s.index, err)
	}
	st, err := rep.metaFloat("step")
	if err != nil {
		return err
	}
	s.wver[bufParams]++
	s.wver[bufOpt]++
	s.epoch++
	s.step = int64(st)
	s.snapSteps++
	s.appendLog(&logOp{typ: msgStep, meta: meta})
	if s.snapSteps >= s.e.opts.SnapshotEvery || time.Since(s.snapAt) >= s.e.opts.SnapshotInterval {
		s.snapshotNowLocked("schedule")
	}
	return nil
}

func (s *Shard) StepCount() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.step
}

func (s *Shard) SetStepCount(n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.flushLocked(-1); err != nil {
		s.e.opts.Logger.Error("torch: set step count", "shard", s.index, "err", err)
	}
	meta := map[string]any{"what": []string{}, "step": n}
	if _, err := s.call(msgSetState, meta, nil); err != nil {
		s.e.opts.Logger.Error("torch: set step count", "shard", s.index, "err", err)
		return
	}
	s.step = n
	s.appendLog(&logOp{typ: msgSetState, meta: meta})
}

// Sync sends the worker what was written into the buffers returned by
// Params, OptState and Grads since they were returned (only the buffers
// whose contents changed cross the pipe).
func (s *Shard) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.host[bufParams].v) != s.nParam || len(s.host[bufGrads].v) != s.nParam || len(s.host[bufOpt].v) != s.nOpt {
		return engine.ErrShape
	}
	if err := s.flushLocked(-1); err != nil {
		return fmt.Errorf("torch: sync shard %d: %w", s.index, err)
	}
	return nil
}

// Close stops the worker. It is idempotent.
func (s *Shard) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	p := s.p
	s.p = nil
	s.mu.Unlock()
	if p != nil {
		p.shutdown(2 * time.Second)
	}
	s.e.forget(s)
	return nil
}

// killWorker SIGKILLs the worker (tests of the restart path).
func (s *Shard) killWorker() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p == nil {
		return errors.New("no worker")
	}
	return s.p.cmd.Process.Kill()
}

// recovery reports the snapshots taken and the requests in the replay log (tests).
func (s *Shard) recovery() (snapshots, logged int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapshots, len(s.log)
}

func jsonUnmarshalLastLine(out []byte, v any) error {
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	return json.Unmarshal(lines[len(lines)-1], v)
}
