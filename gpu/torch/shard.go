package torch

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/swarm-train/swarm/gpu/engine"
	"github.com/swarm-train/swarm/swarm/run"
)

// ErrClosed: the shard was closed.
var ErrClosed = errors.New("torch: shard closed")

// ErrLostTape: a tape whose forward ran before the last Step or Sync could
// not be rebuilt after a worker restart; run the micro-batch again.
var ErrLostTape = errors.New("torch: tape lost in a worker restart")

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

	mu        sync.Mutex
	p         *proc
	device    string
	restarts  int
	closed    bool
	params    []float32
	grads     []float32
	opt       []float32
	gradsHost bool // host grads equal the worker's (no Backward since they were fetched or set)
	step      int64
	logits    []float32

	// The last consistent state, and what happened since: replayed into a
	// restarted worker.
	snapParams, snapGrads, snapOpt []float32
	snapStep                       int64
	epoch                          int64 // bumped when the snapshot's parameters change
	nextTape                       uint64
	nextSeq                        uint64
	log                            map[uint64]*entry
}

// entry is one training forward since the snapshot, with its backward once done.
type entry struct {
	tape    uint64
	epoch   int64
	n       int
	inputs  []tensor // as sent to the worker
	done    bool
	seq     uint64 // order of the backward
	gradOut []float32
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
		first: index == 0, last: index == len(m.Shards)-1, log: map[uint64]*entry{}}
	if !s.first {
		s.inSize = m.ActivationSize(index - 1)
	}
	s.outSz = m.ActivationSize(index)
	nState := 2
	if m.Optimizer.Name == "sgd" {
		nState = 1
	}
	s.nOpt = nState * s.nParam
	s.params, s.grads, s.opt = params, make([]float32, s.nParam), make([]float32, s.nOpt)
	s.gradsHost = true
	s.snapshotLocked()
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

// startLocked starts a worker, loads the snapshot and replays the log.
func (s *Shard) startLocked() error {
	p, err := startProc(s.e.opts.Python, s.e.script, s.e.opts.Env, s.e.opts.Logger)
	if err != nil {
		return err
	}
	meta := map[string]any{"what": []string{"params", "grads", "opt"}, "step": s.snapStep}
	for k, v := range s.init {
		meta[k] = v
	}
	rep, err := p.roundTrip(msgInit, meta, []tensor{f32(s.snapParams), f32(s.snapGrads), f32(s.snapOpt)}, s.e.opts.StartTimeout)
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
	s.p = p
	// Replay: finished micro-batches in the order of their backward, then
	// the forwards still waiting for one.
	var done, pending []*entry
	for _, en := range s.log {
		switch {
		case en.epoch != s.epoch:
			delete(s.log, en.tape) // ran on other parameters: cannot be rebuilt
		case en.done:
			done = append(done, en)
		default:
			pending = append(pending, en)
		}
	}
	sort.Slice(done, func(i, j int) bool { return done[i].seq < done[j].seq })
	sort.Slice(pending, func(i, j int) bool { return pending[i].tape < pending[j].tape })
	for _, en := range append(done, pending...) {
		if _, err := s.p.roundTrip(msgForward, map[string]any{"n": en.n, "train": true, "tape": en.tape}, en.inputs, s.e.opts.RequestTimeout); err != nil {
			return s.replayFailed(err)
		}
		if en.done {
			var t []tensor
			if !s.last {
				t = []tensor{f32(en.gradOut)}
			}
			if _, err := s.p.roundTrip(msgBackward, map[string]any{"tape": en.tape}, t, s.e.opts.RequestTimeout); err != nil {
				return s.replayFailed(err)
			}
		}
	}
	return nil
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
			s.e.opts.Logger.Warn("restarting torch worker", "shard", s.index, "restart", s.restarts)
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

// snapshotLocked records the host buffers as the state a restarted worker starts from.
func (s *Shard) snapshotLocked() {
	s.snapParams = append(s.snapParams[:0], s.params...)
	s.snapGrads = append(s.snapGrads[:0], s.grads...)
	s.snapOpt = append(s.snapOpt[:0], s.opt...)
	s.snapStep = s.step
	s.epoch++
	for id, en := range s.log {
		if en.done {
			delete(s.log, id)
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
	inputs, err := s.inputs(b, in)
	if err != nil {
		return nil, 0, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var id uint64
	if train {
		s.nextTape++
		id = s.nextTape
	}
	rep, err := s.call(msgForward, map[string]any{"n": b.N, "train": train, "tape": id}, inputs)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("torch: forward shard %d: %w", s.index, err)
	}
	var out []float32
	var loss float32
	if s.last {
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
	s.log[id] = &entry{tape: id, epoch: s.epoch, n: b.N, inputs: inputs}
	return out, loss, &tape{s: s, id: id}, nil
}

// inputs validates a batch and copies it into the buffers a forward sends.
func (s *Shard) inputs(b *engine.Batch, in []float32) ([]tensor, error) {
	md := s.m.Model
	var ts []tensor
	if s.first {
		if md.Arch == run.ArchMLPMNIST {
			if len(b.X) != b.N*md.Input {
				return nil, fmt.Errorf("%w: X has %d values, want %d×%d", engine.ErrShape, len(b.X), b.N, md.Input)
			}
			if !finite(b.X) {
				return nil, fmt.Errorf("%w in X", engine.ErrNonFinite)
			}
			ts = append(ts, f32(append([]float32(nil), b.X...)))
		} else {
			if len(b.Tokens) != b.N*md.BlockSize {
				return nil, fmt.Errorf("%w: Tokens has %d values, want %d×%d", engine.ErrShape, len(b.Tokens), b.N, md.BlockSize)
			}
			for _, t := range b.Tokens {
				if t < 0 || int(t) >= md.Vocab {
					return nil, fmt.Errorf("%w: token %d outside the vocabulary of %d", engine.ErrShape, t, md.Vocab)
				}
			}
			ts = append(ts, i32(append([]int32{}, b.Tokens...)))
		}
	} else {
		if len(in) != b.N*s.inSize {
			return nil, fmt.Errorf("%w: input activations have %d values, want %d×%d", engine.ErrShape, len(in), b.N, s.inSize)
		}
		if !finite(in) {
			return nil, fmt.Errorf("%w in input activations", engine.ErrNonFinite)
		}
		ts = append(ts, f32(append([]float32(nil), in...)))
	}
	if s.last {
		want, classes := b.N, md.Classes
		if md.Arch == run.ArchGPTChar {
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
		ts = append(ts, i32(append([]int32{}, b.Targets...)))
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
	en := s.log[t.id]
	if en == nil {
		t.used = true
		return nil, fmt.Errorf("torch: shard %d: %w", s.index, ErrLostTape)
	}
	var ts []tensor
	if !s.last {
		if len(gradOut) != en.n*s.outSz {
			return nil, fmt.Errorf("%w: output gradient has %d values, want %d×%d", engine.ErrShape, len(gradOut), en.n, s.outSz)
		}
		if !finite(gradOut) {
			return nil, fmt.Errorf("%w in output gradient", engine.ErrNonFinite)
		}
		ts = []tensor{f32(append([]float32(nil), gradOut...))}
	}
	t.used = true
	rep, err := s.call(msgBackward, map[string]any{"tape": t.id}, ts)
	if err != nil {
		delete(s.log, t.id)
		return nil, fmt.Errorf("torch: backward shard %d: %w", s.index, err)
	}
	s.nextSeq++
	en.done, en.seq = true, s.nextSeq
	if !s.last {
		en.gradOut = ts[0].F
	}
	s.gradsHost = false
	if s.first {
		return nil, nil
	}
	if len(rep.Tensors) != 1 || len(rep.Tensors[0].F) != en.n*s.inSize {
		return nil, fmt.Errorf("%w: backward returned the wrong input gradient", ErrProtocol)
	}
	return rep.Tensors[0].F, nil
}

func (s *Shard) release(id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	en := s.log[id]
	if en == nil || en.done {
		return
	}
	delete(s.log, id)
	if s.p != nil {
		_, _ = s.call(msgRelease, map[string]any{"tape": id}, nil)
	}
}

func (s *Shard) Logits() []float32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logits
}

// Params returns the host copy of the parameters (current after every Step and Sync).
func (s *Shard) Params() []float32 { return s.params }

// OptState returns the host copy of the optimizer state (current after every Step and Sync).
func (s *Shard) OptState() []float32 { return s.opt }

// Grads fetches the worker's gradients into the host buffer and returns it.
func (s *Shard) Grads() []float32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.gradsHost && !s.closed {
		if err := s.fetchGradsLocked(); err != nil {
			s.e.opts.Logger.Error("torch: fetch gradients", "shard", s.index, "err", err)
		}
	}
	return s.grads
}

func (s *Shard) fetchGradsLocked() error {
	rep, err := s.call(msgGetState, map[string]any{"what": []string{"grads"}}, nil)
	if err != nil {
		return err
	}
	if len(rep.Tensors) != 1 || len(rep.Tensors[0].F) != s.nParam {
		return fmt.Errorf("%w: gradient buffer of the wrong size", ErrProtocol)
	}
	copy(s.grads, rep.Tensors[0].F)
	s.gradsHost = true
	return nil
}

func (s *Shard) ZeroGrad() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.grads)
	s.gradsHost = true
	if _, err := s.call(msgZeroGrad, nil, nil); err != nil {
		s.e.opts.Logger.Error("torch: zero gradients", "shard", s.index, "err", err)
	}
	// The worker's gradients are now zero: drop finished micro-batches from
	// the log without touching the snapshot's parameters.
	clear(s.snapGrads)
	for id, en := range s.log {
		if en.done {
			delete(s.log, id)
		}
	}
}

func (s *Shard) GradNormSq() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gradsHost {
		var sum float64
		for _, g := range s.grads {
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
	rep, err := s.call(msgStep, map[string]any{"lr": lr, "scale": scale, "what": []string{"params", "grads", "opt"}}, nil)
	if err != nil {
		return fmt.Errorf("torch: step shard %d: %w", s.index, err)
	}
	if len(rep.Tensors) != 3 || len(rep.Tensors[0].F) != s.nParam || len(rep.Tensors[1].F) != s.nParam || len(rep.Tensors[2].F) != s.nOpt {
		return fmt.Errorf("%w: step returned the wrong state", ErrProtocol)
	}
	copy(s.params, rep.Tensors[0].F)
	copy(s.grads, rep.Tensors[1].F)
	copy(s.opt, rep.Tensors[2].F)
	s.gradsHost = true
	st, err := rep.metaFloat("step")
	if err != nil {
		return err
	}
	s.step = int64(st)
	s.snapshotLocked()
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
	s.step, s.snapStep = n, n
	if _, err := s.call(msgSetState, map[string]any{"what": []string{}, "step": n}, nil); err != nil {
		s.e.opts.Logger.Error("torch: set step count", "shard", s.index, "err", err)
	}
}

// Sync sends the host parameters, optimizer state and gradients to the
// worker. Gradients from Backward calls since the last Grads are fetched
// first, so only values written into buffers returned by Params, OptState
// and Grads are changed.
func (s *Shard) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.params) != s.nParam || len(s.grads) != s.nParam || len(s.opt) != s.nOpt {
		return engine.ErrShape
	}
	if !s.gradsHost {
		if err := s.fetchGradsLocked(); err != nil {
			return fmt.Errorf("torch: sync shard %d: %w", s.index, err)
		}
	}
	ts := []tensor{f32(s.params), f32(s.grads), f32(s.opt)}
	if _, err := s.call(msgSetState, map[string]any{"what": []string{"params", "grads", "opt"}, "step": s.step}, ts); err != nil {
		return fmt.Errorf("torch: sync shard %d: %w", s.index, err)
	}
	s.snapshotLocked()
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

func finite(v []float32) bool {
	for _, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return false
		}
	}
	return true
}

func jsonUnmarshalLastLine(out []byte, v any) error {
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	return json.Unmarshal(lines[len(lines)-1], v)
}
