package trainer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/internal/fvec"
	"github.com/swarm-train/swarm/internal/guard"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/credit"
	"github.com/swarm-train/swarm/swarm/pipeline"
	"github.com/swarm-train/swarm/swarm/progress"
)

// stageServer is this node's stage of the pipeline. It serves the previous
// stage's requests (handle: admission, bounded reads, validation, busy and
// excluded answers), runs a micro-batch through this stage and the ones
// after it (process), and forwards activations to a holder of the next
// stage, retrying other holders and banning peers that fail or send bad
// data (forwardNext); training answers carry receipts both ways (credit.go).
// It owns the next-stage balancer, the request slots, the micro-batch
// numbering and the bytes it sent; the epoch gate and the shard's engine
// state are the trainer's, reached through stageGate. It has no lock of its
// own: the balancer, the slots and the credit service lock themselves.
type stageServer struct {
	m        *run.Manifest
	h        host.Host
	clk      clock.Clock
	log      *slog.Logger
	refusals *guard.Refusals
	hop      time.Duration // one micro-batch's trip to the end of the pipeline and back
	faultNaN bool          // Config.FaultNaN
	gate     stageGate

	bal   *pipeline.Balancer // the next stage's holders: speed, queue, bans
	slots *guard.Slots       // requests served at once, per peer and in all
	idle  *guard.Slots       // streams open between two requests, per peer and in all
	pool  streamPool         // this node's idle streams to next-stage holders
	// readTimeout bounds reading one request (pipeReadTimeout; tests
	// shorten it).
	readTimeout time.Duration
	// idleTimeout is how long a stream waits for its sender's next request
	// (pipeIdle; tests shorten it).
	idleTimeout time.Duration
	nextID      atomic.Uint64 // the last micro-batch ID sent
	sent        atomic.Uint64 // bytes of training requests and responses written
	// credit signs and keeps the receipts of training micro-batches
	// (credit.go; nil without a host key).
	credit *credit.Service
	// actWatch and gradWatch find senders of activations and gradients far
	// above the recent senders' (trust.go).
	actWatch, gradWatch *pipeline.NormWatch
	// gradFlip: FaultGradFlip.
	gradFlip bool
	// kept are the latest training micro-batches this stage served: a
	// later shard's held-out data (heldout.go).
	keptMu sync.Mutex
	kept   []keptInput
}

// stageGate is what the stage server needs of the trainer.
type stageGate interface {
	// admit registers a micro-batch of kind and epoch on shard index (a
	// training one may wait up to wait for the node to reach its epoch);
	// it returns the shard, the node's epoch and an answer code. release
	// ends an admitted micro-batch.
	admit(index int, kind uint8, epoch uint64, wait time.Duration) (engine.Shard, uint64, uint8, error)
	release()
	// position is the node's epoch and whether it holds a shard.
	position() (epoch uint64, holding bool)
	// forward and backward run sh's engine under the trainer's engine
	// lock, as busy time; backward fails with errStale once sh or (sync
	// mode) epoch is no longer the node's.
	forward(sh engine.Shard, b *engine.Batch, in []float32, train bool) ([]float32, float32, engine.Tape, error)
	backward(sh engine.Shard, epoch uint64, tape engine.Tape, grad []float32) ([]float32, error)
	// completed accounts a finished training micro-batch of n samples
	// (local mode: after the inner step it takes).
	completed(sh engine.Shard, n int, loss float32, last bool)
	// holders are the live holders of shard index other than this node.
	holders(index int, withJoining bool) []peer.ID
	// waitOpen waits up to d while a micro-batch of kind and epoch may go
	// on; false, at once, when it may not (ctx ended, or in sync mode the
	// epoch closed or moved on).
	waitOpen(ctx context.Context, kind uint8, epoch uint64, d time.Duration) bool
	// pausedNow reports whether the volunteer's limits pause training.
	pausedNow() bool
	// offend reports evidence against p to the decision core, which bans
	// a peer that keeps offending (trust.go); peerRecord is p's live
	// progress record.
	offend(p peer.ID, rule, evidence string)
	peerRecord(p peer.ID) (progress.Record, bool)
}

// Ban durations.
const (
	banFailed  = 15 * time.Second // no answer, broken stream, bad answer
	banBusy    = 300 * time.Millisecond
	banPoison  = 10 * time.Minute // sent non-finite values
	maxRetries = 4
)

var errStale = errors.New("epoch moved on")

// evalBatch is the micro-batch size of evaluation requests, fewer samples
// for a language model whose logits would pass run.MaxEvalLogits
// (run.Manifest.EvalBatch).
const evalBatch = 250

// Limits on serving pipeline requests.
const (
	// pipeReadTimeout bounds reading one request: a sender that stalls is
	// dropped then.
	pipeReadTimeout = 10 * time.Second
	// pipePerPeer requests of one peer are served at once (a first-shard
	// peer keeps at most autoMaxInFlight in the pipeline; a middle stage
	// relays several of them), pipeTotal of all peers.
	pipePerPeer = 4 * autoMaxInFlight
	pipeTotal   = 8 * pipePerPeer
	// maxEpochLead is how far ahead of this node's epoch a request's epoch
	// may be; further is a lie (or a node that cannot share this one's work).
	maxEpochLead = 16
	// answerTimeout bounds writing an answer.
	answerTimeout = 10 * time.Second
	// pipeIdle is how long a stream stays open for the sender's next
	// request (handle); a sender keeps an idle one for pipeKeep, less, so
	// that it seldom sends on a stream being closed.
	pipeIdle = 30 * time.Second
	pipeKeep = 20 * time.Second
)

// Reasons for refused pipeline input (guard).
const (
	protoPipeline = "pipeline"
	whyOversize   = "oversize"
	whyStall      = "stall"
	whyFlood      = "flood"
	whyEpoch      = "epoch"
	whyMalformed  = "malformed"
	whyInvalid    = "invalid"
)

var errFarEpoch = errors.New("epoch far ahead of this node's")

func newStageServer(cfg *Config, clk clock.Clock, log *slog.Logger, bal *pipeline.Balancer, gate stageGate) *stageServer {
	return &stageServer{m: cfg.Manifest, h: cfg.Host, clk: clk, log: log, refusals: cfg.Refusals, hop: cfg.HopTimeout,
		faultNaN: cfg.FaultNaN, gate: gate, bal: bal, slots: guard.NewSlots(pipePerPeer, pipeTotal),
		idle: guard.NewSlots(pipePerPeer, pipeTotal), readTimeout: pipeReadTimeout, idleTimeout: pipeIdle, actWatch: pipeline.NewNormWatch(cfg.Manifest.Averaging.NormK),
		gradWatch: pipeline.NewNormWatch(cfg.Manifest.Averaging.NormK)}
}

// syncMode reports whether m averages gradients every epoch (sync), not
// parameter deltas every local_steps (local).
func syncMode(m *run.Manifest) bool { return m.Averaging.Mode != run.ModeLocal }

// shape is what shard index expects of incoming requests.
func (s *stageServer) shape(index int) pipeline.Shape {
	m := s.m
	sh := pipeline.Shape{MaxN: max(4*m.Training.BatchSize, m.EvalBatch(evalBatch))}
	if index > 0 {
		sh.ActPerSample = m.ActivationSize(index - 1)
	}
	if index == len(m.Shards)-1 {
		sh.TargetsPerSample, sh.Classes = 1, m.Model.Classes
		if m.Model.LanguageModel() {
			sh.TargetsPerSample, sh.Classes = m.Model.BlockSize, m.Model.Vocab
		}
	}
	return sh
}

func (s *stageServer) last(index int) bool { return index == len(s.m.Shards)-1 }

// wirePrecision is the precision of activations and gradients this node
// sends between shards (the run's training.activations).
func (s *stageServer) wirePrecision() uint8 {
	switch s.m.Training.Activations {
	case run.ActivationsBF16:
		return pipeline.BF16
	case run.ActivationsInt8:
		return pipeline.INT8
	case run.ActivationsTopK:
		return pipeline.TOPK
	}
	return pipeline.FP32
}

// requestLimits is what a request's body may declare, from the run's layout:
// the micro-batch the stage accepts times the width of its input boundary.
// It refuses before the body is read a request whose header already fails,
// and one far ahead of this node's epoch (farEpoch).
func (s *stageServer) requestLimits(from peer.ID, q *pipeline.Request) (pipeline.Limits, error) {
	index := int(q.Shard)
	if index <= 0 || index >= len(s.m.Shards) {
		return pipeline.Limits{}, fmt.Errorf("shard %d does not take requests: %w", index, pipeline.ErrOversize)
	}
	sh := s.shape(index)
	if int64(q.N) > int64(sh.MaxN) {
		return pipeline.Limits{}, fmt.Errorf("micro-batch of %d samples, limit %d: %w", q.N, sh.MaxN, pipeline.ErrOversize)
	}
	if q.Kind == pipeline.KindTrain && syncMode(s.m) {
		own, holding := s.gate.position()
		if holding && q.Epoch > own+maxEpochLead {
			return pipeline.Limits{}, s.farEpoch(from, q.Epoch, own)
		}
	}
	row := s.m.ActivationRow(index - 1)
	return pipeline.Limits{Act: int(q.N) * sh.ActPerSample, Targets: int(q.N) * sh.TargetsPerSample,
		Kept: int(q.N) * sh.ActPerSample / row * s.m.Training.ActivationsKept(row)}, nil
}

// readReason names why a request could not be read; "" for a stream the
// sender reset (it gave up: nothing to hold against it).
func readReason(err error) string {
	var ne interface{ Timeout() bool }
	switch {
	case errors.Is(err, pipeline.ErrOversize):
		return whyOversize
	case errors.Is(err, errFarEpoch), errors.Is(err, errEpochLie):
		return whyEpoch
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return whyStall
	case errors.Is(err, network.ErrReset):
		return ""
	}
	return whyMalformed
}

// handle serves the previous stage's requests on one stream, one after
// another: a sender keeps its streams to a next-stage holder and sends its
// next micro-batch on one that is idle (streamPool), which saves opening a
// stream and, once the stream's flow-control window has grown, the wait
// for a window update in the middle of a request larger than a new
// stream's 256 KiB. Between requests the stream holds an idle place
// (pipePerPeer of one peer, pipeTotal in all; without one it is closed) and
// is closed after pipeIdle without a request.
func (s *stageServer) handle(st network.Stream) {
	defer st.Close()
	from := st.Conn().RemotePeer()
	wait := s.readTimeout // the first request comes with the stream
	for first := true; ; first = false {
		if !first && !s.idle.Acquire(from) {
			return
		}
		var b0 [1]byte
		_ = st.SetReadDeadline(clock.WallDeadline(wait))
		_, err := io.ReadFull(st, b0[:])
		if !first {
			s.idle.Release(from)
		}
		if err != nil {
			return // the sender closed the stream, or left it idle
		}
		if !s.serveOne(st, from, b0[0]) {
			return
		}
		wait = s.idleTimeout
	}
}

// serveOne serves one request, whose first byte b0 was read, from the
// previous stage; it reports whether st is in step for another (the
// request read whole, the answer written and, for one with a receipt,
// acknowledged).
func (s *stageServer) serveOne(st network.Stream, from peer.ID, b0 byte) bool {
	if s.refusals.Banned(from) {
		st.Reset()
		return false
	}
	if banned, why := s.bal.Banned(from); banned {
		s.answer(st, &pipeline.Response{Code: pipeline.CodeBadInput, Msg: "excluded: " + why}, false)
		return false
	}
	if !s.slots.Acquire(from) {
		s.refusals.Refuse(from, protoPipeline, whyFlood, fmt.Errorf("more than %d requests at once", pipePerPeer))
		s.answer(st, &pipeline.Response{Code: pipeline.CodeBusy, Msg: "too many requests at once"}, false)
		return false
	}
	defer s.slots.Release(from)
	_ = st.SetReadDeadline(clock.WallDeadline(s.readTimeout))
	hash := sha256.New() // of the request as received: what its receipt credits
	hash.Write([]byte{b0})
	in := io.MultiReader(bytes.NewReader([]byte{b0}), io.TeeReader(st, hash))
	q, err := pipeline.ReadRequest(in, func(q *pipeline.Request) (pipeline.Limits, error) { return s.requestLimits(from, q) })
	if err != nil {
		st.Reset()
		switch why := readReason(err); {
		case errors.Is(err, errEpochLie):
			s.refusals.Count(from, protoPipeline, why, err) // judged by the core (farEpoch)
		case errors.Is(err, errEpochAhead):
		case why != "":
			s.refusals.Refuse(from, protoPipeline, why, err)
			s.bal.Ban(from, banFailed, why)
		}
		return false
	}
	train := q.Kind == pipeline.KindTrain
	resp := s.serve(from, q)
	resp.Mask = q.Mask // a TOPK request's gradient goes back at its places
	if train && resp.Code == pipeline.CodeOK {
		resp.Receipt = s.stamp(from, q.Epoch, int(q.N), [32]byte(hash.Sum(nil)))
	}
	out := s.answer(st, resp, train)
	if out == nil {
		return false
	}
	if len(resp.Receipt) > 0 {
		return s.awaitAck(st, from, int(q.N), out)
	}
	return true
}

// answer writes a response to a pipeline request and returns the bytes
// written (nil when the write failed).
func (s *stageServer) answer(st network.Stream, resp *pipeline.Response, train bool) []byte {
	resp.Precision = s.wirePrecision()
	_ = st.SetWriteDeadline(clock.WallDeadline(answerTimeout))
	out := resp.Encode()
	if _, err := st.Write(out); err != nil {
		st.Reset()
		return nil
	}
	if train {
		s.sent.Add(uint64(len(out)))
	}
	return out
}

func (s *stageServer) serve(from peer.ID, q *pipeline.Request) *pipeline.Response {
	if banned, why := s.bal.Banned(from); banned {
		return &pipeline.Response{Code: pipeline.CodeBadInput, Msg: "excluded: " + why}
	}
	index := int(q.Shard)
	if index <= 0 || index >= len(s.m.Shards) {
		return &pipeline.Response{Code: pipeline.CodeWrongRun, Msg: fmt.Sprintf("shard %d does not take requests", index)}
	}
	if err := s.shape(index).Validate(q); err != nil {
		// A peer that sends garbage or NaN is excluded for a long while.
		s.bal.Ban(from, banPoison, err.Error())
		s.refusals.Refuse(from, protoPipeline, whyInvalid, err)
		return &pipeline.Response{Code: pipeline.CodeBadInput, Msg: err.Error()}
	}
	if q.Kind == pipeline.KindTrain {
		if err := s.checkScale(s.actWatch, from, "activations", q.Act, 0); err != nil {
			return &pipeline.Response{Code: pipeline.CodeBadInput, Msg: err.Error()}
		}
	}
	if s.gate.pausedNow() {
		return &pipeline.Response{Code: pipeline.CodeBusy, Msg: "paused by the volunteer's limits"}
	}
	sh, epoch, code, err := s.gate.admit(index, q.Kind, q.Epoch, 2*time.Second)
	if err != nil {
		return &pipeline.Response{Code: code, Msg: err.Error()}
	}
	defer s.gate.release()
	if q.Kind == pipeline.KindTrain {
		s.keepInput(q)
	}
	b := &engine.Batch{N: int(q.N)}
	if s.last(index) {
		b.Targets = q.Targets
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.hop)
	defer cancel()
	res, err := s.process(ctx, sh, index, epoch, q.Kind, b, q.Act, q.Targets)
	if err != nil {
		code := uint8(pipeline.CodeDownstream)
		if errors.Is(err, errStale) {
			code = pipeline.CodeStale
		}
		return &pipeline.Response{Code: code, Msg: err.Error()}
	}
	if s.faultNaN {
		for i := range res.Grad {
			res.Grad[i] = float32(math.NaN())
		}
	}
	if s.gradFlip {
		flip(res.Grad)
	}
	return res
}

// process runs a micro-batch through this stage and the ones after it.
// On the first shard b carries the inputs; targets travel to the last one.
func (s *stageServer) process(ctx context.Context, sh engine.Shard, index int, epoch uint64, kind uint8, b *engine.Batch, in []float32, targets []int32) (*pipeline.Response, error) {
	train := kind == pipeline.KindTrain
	// On the last shard an evaluation returns its own logits: evaluations
	// from several first-shard nodes run here at once.
	out, loss, tape, err := s.gate.forward(sh, b, in, train)
	if err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	res := &pipeline.Response{Code: pipeline.CodeOK}
	var gradOut []float32
	if s.last(index) {
		res.Loss = loss
		if !train {
			res.Correct = countCorrect(out, targets, s.m)
			return res, nil
		}
	} else {
		if s.faultNaN {
			for i := range out {
				out[i] = float32(math.NaN())
			}
		}
		next, err := s.forwardNext(ctx, index+1, epoch, kind, b.N, out, targets)
		if err != nil {
			if tape != nil {
				tape.Release()
			}
			return nil, err
		}
		res.Loss, res.Correct = next.Loss, next.Correct
		if !train {
			return res, nil
		}
		gradOut = next.Grad
	}
	gradIn, err := s.gate.backward(sh, epoch, tape, gradOut)
	if err != nil {
		return nil, err
	}
	res.Grad = gradIn
	s.gate.completed(sh, b.N, res.Loss, s.last(index))
	return res, nil
}

func countCorrect(logits []float32, targets []int32, m *run.Manifest) uint32 {
	c := m.Model.Classes
	if m.Model.Arch != run.ArchMLPMNIST || c == 0 || len(logits) != len(targets)*c {
		return 0
	}
	var n uint32
	for i, y := range targets {
		row := logits[i*c : (i+1)*c]
		best := 0
		for j := range row {
			if row[j] > row[best] {
				best = j
			}
		}
		if best == int(y) {
			n++
		}
	}
	return n
}

// request is the pipeline request carrying act (n samples) to shard index,
// in the run's precision.
func (s *stageServer) request(kind uint8, index int, epoch uint64, n int, act []float32, targets []int32) *pipeline.Request {
	q := &pipeline.Request{Kind: kind, Shard: uint32(index), Epoch: epoch, N: uint32(n), Act: act,
		Targets:   targets, // the last stage needs them; middle stages pass them on
		Precision: s.wirePrecision(), ID: s.nextID.Add(1)}
	if q.Precision == pipeline.TOPK {
		// Each row's largest values go (a sample's, or a token's in a
		// language model); the next stage computes with the rest zeroed,
		// and the gradient comes back at the same places.
		w := s.m.ActivationRow(index - 1)
		q.Mask = pipeline.TopMask(act, w, s.m.Training.ActivationsKept(w))
	}
	return q
}

// forwardNext sends activations to a holder of stage index, retrying with
// other holders, and checks the answer.
func (s *stageServer) forwardNext(ctx context.Context, index int, epoch uint64, kind uint8, n int, act []float32, targets []int32) (*pipeline.Response, error) {
	q := s.request(kind, index, epoch, n, act, targets)
	payload := q.Encode()
	tried := map[peer.ID]bool{}
	var lastErr error
	for attempt := 0; attempt < maxRetries; attempt++ {
		cands := s.gate.holders(index, false)
		p, ok := s.bal.Pick(cands, tried)
		if !ok {
			if lastErr == nil {
				lastErr = fmt.Errorf("no reachable holder of shard %d", index)
			}
			// Wait a moment for a holder to appear or a ban to lapse,
			// unless the epoch closes meanwhile: its end waits for this
			// micro-batch, and so would the shard's other holders.
			if !s.gate.waitOpen(ctx, kind, epoch, 100*time.Millisecond) {
				return nil, fmt.Errorf("%w: %v", errStale, lastErr)
			}
			tried = map[peer.ID]bool{}
			continue
		}
		tried[p] = true
		start := s.clk.Now()
		s.bal.Begin(p)
		res, err := s.call(ctx, p, q, payload)
		if err == nil {
			switch {
			case res.Code == pipeline.CodeStale:
				s.bal.End(p, 0, 0, false, 0, "")
				return nil, fmt.Errorf("%w: %s", errStale, res.Msg)
			case res.Code != pipeline.CodeOK:
				err = fmt.Errorf("peer %s: code %d: %s", p, res.Code, res.Msg)
			case kind == pipeline.KindTrain && misfit(q, res) != nil:
				err = fmt.Errorf("peer %s: %w", p, misfit(q, res))
			case !fvec.AllFinite(res.Grad) || math.IsNaN(float64(res.Loss)) || math.IsInf(float64(res.Loss), 0):
				s.bal.End(p, 0, 0, true, banPoison, "sent non-finite gradients")
				s.log.Warn("excluding a peer that sent non-finite gradients", "peer", p, "shard", index)
				lastErr = fmt.Errorf("peer %s: %w", p, pipeline.ErrNonFinite)
				continue
			}
		}
		if err != nil {
			ban := banFailed
			switch {
			case res != nil && res.Code == pipeline.CodeBusy:
				ban = banBusy
			case errors.Is(err, errOutlier):
				ban = banNorm
			}
			s.bal.End(p, 0, 0, true, ban, err.Error())
			lastErr = err
			continue
		}
		s.bal.End(p, n, s.clk.Since(start), false, 0, "")
		return res, nil
	}
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	return nil, lastErr
}

// misfit says what is wrong with the shape of a training answer's gradient
// for q: its length, or, for a TOPK request, a gradient not sent at the
// places q sent (only those have one in the network this node computed).
func misfit(q *pipeline.Request, res *pipeline.Response) error {
	if len(res.Grad) != len(q.Act) {
		return fmt.Errorf("gradient of %d values, want %d", len(res.Grad), len(q.Act))
	}
	if q.Precision == pipeline.TOPK && len(q.Act) > 0 && res.Precision != pipeline.MASKED {
		return fmt.Errorf("gradient sent in precision %d, not at the request's places (masked)", res.Precision)
	}
	return nil
}

// call sends q, encoded as payload, to p and reads the answer, whose
// gradient holds at most as many values as q's activations (at the places
// q's mask marks, for a TOPK request). A training answer's receipt is kept
// and acknowledged with this node's receipt for the answer.
func (s *stageServer) call(ctx context.Context, p peer.ID, q *pipeline.Request, payload []byte) (*pipeline.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, s.hop)
	defer cancel()
	if st := s.pool.get(p); st != nil {
		res, fresh, err := s.callOn(ctx, st, p, q, payload)
		if !fresh {
			return res, err
		}
		// The other end closed the idle stream before reading this
		// request (its idle time ran out, or it serves one request a
		// stream): the request goes on a new one.
	}
	st, err := s.h.NewStream(ctx, p, pipeline.Protocol)
	if err != nil {
		return nil, err
	}
	res, _, err := s.callOn(ctx, st, p, q, payload)
	return res, err
}

// callOn is call on the stream st; it keeps st for p's next request when
// the exchange left it in step, and drops it otherwise. retry says that st
// failed before any byte of an answer came: a stream taken from the pool
// may have been closed by the other end meanwhile.
func (s *stageServer) callOn(ctx context.Context, st network.Stream, p peer.ID, q *pipeline.Request, payload []byte) (res *pipeline.Response, retry bool, err error) {
	kind, maxGrad, epoch, n := q.Kind, len(q.Act), q.Epoch, int(q.N)
	if d, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(d)
	}
	if _, err := st.Write(payload); err != nil {
		st.Reset()
		return nil, true, err
	}
	if kind == pipeline.KindTrain {
		s.sent.Add(uint64(len(payload)))
	}
	hash := sha256.New() // of the answer as received: what the acknowledgement credits
	cr := &countReader{r: st}
	var mask pipeline.Mask
	if q.Precision == pipeline.TOPK {
		mask = q.Mask
	}
	res, err = pipeline.ReadMaskedResponse(io.TeeReader(cr, hash), maxGrad, mask)
	if err != nil {
		st.Reset()
		return nil, cr.n == 0 && ctx.Err() == nil, err
	}
	good := kind == pipeline.KindTrain && res.Code == pipeline.CodeOK && len(res.Grad) == maxGrad && fvec.AllFinite(res.Grad)
	var outlier error
	if good {
		// A gradient far above the other holders' is refused before it is
		// acknowledged: no receipt credits it.
		outlier = s.checkScale(s.gradWatch, p, "gradient", res.Grad, n)
	}
	inStep := true
	if len(res.Receipt) > 0 {
		var ack []byte
		if good && outlier == nil {
			s.earn(p, res.Receipt, n, sha256.Sum256(payload))
			ack = s.stamp(p, epoch, n, [32]byte(hash.Sum(nil)))
		}
		_, err := st.Write(pipeline.AppendAck(nil, ack))
		inStep = err == nil
	}
	if inStep {
		_ = st.SetDeadline(time.Time{})
		s.pool.put(p, st)
	} else {
		st.Reset()
	}
	if outlier != nil {
		return nil, false, fmt.Errorf("peer %s: %w", p, outlier)
	}
	return res, false, nil
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// streamPool keeps this node's idle pipeline streams, by next-stage
// holder, for their next requests (stageServer.handle): pipePerPeer of a
// peer at most, each for pipeKeep; the newest is reused first.
type streamPool struct {
	mu    sync.Mutex
	idle  map[peer.ID][]idleStream
	swept time.Time // the last sweep of every peer's streams (put)
}

type idleStream struct {
	st network.Stream
	at time.Time
}

// get takes an idle stream to p, or nil; streams idle too long are closed.
func (sp *streamPool) get(p peer.ID) network.Stream {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	l := sp.idle[p]
	var st network.Stream
	for len(l) > 0 && st == nil {
		last := l[len(l)-1]
		l = l[:len(l)-1]
		if time.Since(last.at) < pipeKeep {
			st = last.st
		} else {
			_ = last.st.Close()
		}
	}
	if len(l) == 0 {
		delete(sp.idle, p)
	} else {
		sp.idle[p] = l
	}
	return st
}

// put keeps st, idle, for p's next request; beyond pipePerPeer it closes
// the oldest, and any whose idle time ran out.
func (sp *streamPool) put(p peer.ID, st network.Stream) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.idle == nil {
		sp.idle = map[peer.ID][]idleStream{}
	}
	now := time.Now()
	if now.Sub(sp.swept) > pipeKeep { // peers no longer called keep none
		sp.swept = now
		for q := range sp.idle {
			sp.idle[q] = sp.fresh(sp.idle[q], now)
			if len(sp.idle[q]) == 0 {
				delete(sp.idle, q)
			}
		}
	}
	l := append(sp.fresh(sp.idle[p], now), idleStream{st, now})
	if len(l) > pipePerPeer {
		_ = l[0].st.Close()
		l = l[1:]
	}
	sp.idle[p] = l
}

// fresh are the streams of l idle for less than pipeKeep; it closes the
// others.
func (sp *streamPool) fresh(l []idleStream, now time.Time) []idleStream {
	out := l[:0]
	for _, is := range l {
		if now.Sub(is.at) < pipeKeep {
			out = append(out, is)
		} else {
			_ = is.st.Close()
		}
	}
	return out
}

// closeAll closes every idle stream.
func (sp *streamPool) closeAll() {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	for p, l := range sp.idle {
		for _, is := range l {
			_ = is.st.Close()
		}
		delete(sp.idle, p)
	}
}
