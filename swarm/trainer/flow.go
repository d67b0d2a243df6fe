package trainer

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/pipeline"
	"github.com/swarm-train/swarm/swarm/progress"
)

// Ban durations.
const (
	banFailed  = 15 * time.Second // no answer, broken stream, bad answer
	banBusy    = 300 * time.Millisecond
	banPoison  = 10 * time.Minute // sent non-finite values
	maxRetries = 4
)

var errStale = errors.New("epoch moved on")

// evalBatch is the micro-batch size of evaluation requests.
const evalBatch = 250

// shape is what shard index expects of incoming requests.
func (t *Trainer) shape(index int) pipeline.Shape {
	s := pipeline.Shape{MaxN: max(4*t.m.Training.BatchSize, evalBatch)}
	if index > 0 {
		s.ActPerSample = t.m.ActivationSize(index - 1)
	}
	if index == len(t.m.Shards)-1 {
		s.TargetsPerSample, s.Classes = 1, t.m.Model.Classes
		if t.m.Model.Arch == run.ArchGPTChar {
			s.TargetsPerSample, s.Classes = t.m.Model.BlockSize, t.m.Model.Vocab
		}
	}
	return s
}

func (t *Trainer) last(index int) bool { return index == len(t.m.Shards)-1 }

// admit registers a micro-batch of epoch (train) on the current shard; it
// fails if the node is not online on index, or the epoch is closing.
func (t *Trainer) admit(index int, kind uint8, epoch uint64, wait time.Duration) (engine.Shard, uint64, uint8, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.shard == nil || t.index != index || t.state == progress.StateJoining {
		return nil, 0, pipeline.CodeWrongRun, fmt.Errorf("not holding shard %d", index)
	}
	if kind == pipeline.KindTrain && t.sync() {
		if epoch > t.epoch {
			t.ahead = max(t.ahead, epoch)
			t.kickEpoch()
			deadline := t.clk.Now().Add(wait)
			for epoch > t.epoch && t.clk.Now().Before(deadline) && t.shard != nil {
				t.waitTimeout(deadline)
			}
		}
		switch {
		case t.shard == nil || t.index != index:
			return nil, 0, pipeline.CodeWrongRun, fmt.Errorf("not holding shard %d", index)
		case epoch < t.epoch:
			return nil, 0, pipeline.CodeStale, fmt.Errorf("epoch %d is over (now %d)", epoch, t.epoch)
		case epoch > t.epoch:
			return nil, 0, pipeline.CodeBusy, fmt.Errorf("still finishing epoch %d", t.epoch)
		case t.closing:
			return nil, 0, pipeline.CodeBusy, fmt.Errorf("epoch %d is closing", t.epoch)
		}
	}
	// Local mode: holders of other shards may still be finishing their
	// rounds through this one, which then serves without stepping.
	if kind == pipeline.KindTrain && t.done && t.sync() {
		return nil, 0, pipeline.CodeStale, errors.New("the run is finished")
	}
	t.inflight++
	return t.shard, t.epoch, pipeline.CodeOK, nil
}

func (t *Trainer) release() {
	t.mu.Lock()
	t.inflight--
	t.cond.Broadcast()
	t.mu.Unlock()
}

// waitTimeout waits on cond until signalled or deadline (t.mu held).
func (t *Trainer) waitTimeout(deadline time.Time) {
	stop := t.clk.AfterFunc(t.clk.Until(deadline), func() {
		t.mu.Lock()
		t.cond.Broadcast()
		t.mu.Unlock()
	})
	t.cond.Wait()
	stop.Stop()
}

func (t *Trainer) sync() bool { return t.m.Averaging.Mode != run.ModeLocal }

// wirePrecision is the precision of activations and gradients this node
// sends between shards (the run's training.activations).
func (t *Trainer) wirePrecision() uint8 {
	if t.m.Training.Activations == run.ActivationsBF16 {
		return pipeline.BF16
	}
	return pipeline.FP32
}

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

// requestLimits is what a request's body may declare, from the run's layout:
// the micro-batch the stage accepts times the width of its input boundary.
// It refuses before the body is read a request whose header already fails.
func (t *Trainer) requestLimits(q *pipeline.Request) (pipeline.Limits, error) {
	index := int(q.Shard)
	if index <= 0 || index >= len(t.m.Shards) {
		return pipeline.Limits{}, fmt.Errorf("shard %d does not take requests: %w", index, pipeline.ErrOversize)
	}
	s := t.shape(index)
	if int64(q.N) > int64(s.MaxN) {
		return pipeline.Limits{}, fmt.Errorf("micro-batch of %d samples, limit %d: %w", q.N, s.MaxN, pipeline.ErrOversize)
	}
	if q.Kind == pipeline.KindTrain && t.sync() {
		t.mu.Lock()
		own, holding := t.epoch, t.shard != nil
		t.mu.Unlock()
		if holding && q.Epoch > own+maxEpochLead {
			return pipeline.Limits{}, fmt.Errorf("epoch %d, this node is in %d: %w", q.Epoch, own, errFarEpoch)
		}
	}
	return pipeline.Limits{Act: int(q.N) * s.ActPerSample, Targets: int(q.N) * s.TargetsPerSample}, nil
}

// readReason names why a request could not be read; "" for a stream the
// sender reset (it gave up: nothing to hold against it).
func readReason(err error) string {
	var ne interface{ Timeout() bool }
	switch {
	case errors.Is(err, pipeline.ErrOversize):
		return whyOversize
	case errors.Is(err, errFarEpoch):
		return whyEpoch
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return whyStall
	case errors.Is(err, network.ErrReset):
		return ""
	}
	return whyMalformed
}

// refuse counts and logs refused input of p (t.cfg.Refusals; the node
// disconnects offenders).
func (t *Trainer) refuse(p peer.ID, protocol, reason string, err error) {
	t.cfg.Refusals.Refuse(p, protocol, reason, err)
}

// handle serves one pipeline request from the previous stage.
func (t *Trainer) handle(s network.Stream) {
	defer s.Close()
	from := s.Conn().RemotePeer()
	if t.cfg.Refusals.Banned(from) {
		s.Reset()
		return
	}
	if banned, why := t.bal.Banned(from); banned {
		t.answer(s, &pipeline.Response{Code: pipeline.CodeBadInput, Msg: "excluded: " + why}, false)
		return
	}
	if !t.pipeSlots.Acquire(from) {
		t.refuse(from, protoPipeline, whyFlood, fmt.Errorf("more than %d requests at once", pipePerPeer))
		t.answer(s, &pipeline.Response{Code: pipeline.CodeBusy, Msg: "too many requests at once"}, false)
		return
	}
	defer t.pipeSlots.Release(from)
	_ = s.SetReadDeadline(clock.WallDeadline(t.pipeRead))
	hash := sha256.New() // of the request as received: what its receipt credits
	q, err := pipeline.ReadRequest(io.TeeReader(s, hash), t.requestLimits)
	if err != nil {
		s.Reset()
		if why := readReason(err); why != "" {
			t.refuse(from, protoPipeline, why, err)
			t.bal.Ban(from, banFailed, why)
		}
		return
	}
	train := q.Kind == pipeline.KindTrain
	resp := t.serve(from, q)
	if train && resp.Code == pipeline.CodeOK {
		resp.Receipt = t.stamp(from, q.Epoch, int(q.N), [32]byte(hash.Sum(nil)))
	}
	if out := t.answer(s, resp, train); out != nil && len(resp.Receipt) > 0 {
		t.awaitAck(s, from, int(q.N), out)
	}
}

// answer writes a response to a pipeline request and returns the bytes
// written (nil when the write failed).
func (t *Trainer) answer(s network.Stream, resp *pipeline.Response, train bool) []byte {
	resp.Precision = t.wirePrecision()
	_ = s.SetWriteDeadline(clock.WallDeadline(10 * time.Second))
	out := resp.Encode()
	if _, err := s.Write(out); err != nil {
		s.Reset()
		return nil
	}
	if train {
		t.pipeSent.Add(uint64(len(out)))
	}
	return out
}

func (t *Trainer) serve(from peer.ID, q *pipeline.Request) *pipeline.Response {
	if banned, why := t.bal.Banned(from); banned {
		return &pipeline.Response{Code: pipeline.CodeBadInput, Msg: "excluded: " + why}
	}
	index := int(q.Shard)
	if index <= 0 || index >= len(t.m.Shards) {
		return &pipeline.Response{Code: pipeline.CodeWrongRun, Msg: fmt.Sprintf("shard %d does not take requests", index)}
	}
	if err := t.shape(index).Validate(q); err != nil {
		// A peer that sends garbage or NaN is excluded for a long while.
		t.bal.Ban(from, banPoison, err.Error())
		t.refuse(from, protoPipeline, whyInvalid, err)
		return &pipeline.Response{Code: pipeline.CodeBadInput, Msg: err.Error()}
	}
	if t.pausedNow() {
		return &pipeline.Response{Code: pipeline.CodeBusy, Msg: "paused by the volunteer's limits"}
	}
	sh, epoch, code, err := t.admit(index, q.Kind, q.Epoch, 2*time.Second)
	if err != nil {
		return &pipeline.Response{Code: code, Msg: err.Error()}
	}
	defer t.release()
	b := &engine.Batch{N: int(q.N)}
	if t.last(index) {
		b.Targets = q.Targets
	}
	ctx, cancel := context.WithTimeout(context.Background(), t.cfg.HopTimeout)
	defer cancel()
	res, err := t.process(ctx, sh, index, epoch, q.Kind, b, q.Act, q.Targets)
	if err != nil {
		code := uint8(pipeline.CodeDownstream)
		if errors.Is(err, errStale) {
			code = pipeline.CodeStale
		}
		return &pipeline.Response{Code: code, Msg: err.Error()}
	}
	if t.cfg.FaultNaN {
		for i := range res.Grad {
			res.Grad[i] = float32(math.NaN())
		}
	}
	return res
}

// process runs a micro-batch through this stage and the ones after it.
// On the first shard b carries the inputs; targets travel to the last one.
func (t *Trainer) process(ctx context.Context, sh engine.Shard, index int, epoch uint64, kind uint8, b *engine.Batch, in []float32, targets []int32) (*pipeline.Response, error) {
	train := kind == pipeline.KindTrain
	t.stepMu.RLock()
	t.meters.beginCompute()
	// On the last shard an evaluation returns its own logits: evaluations
	// from several first-shard nodes run here at once.
	out, loss, tape, err := sh.Forward(b, in, train)
	t.meters.endCompute()
	t.stepMu.RUnlock()
	if err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	res := &pipeline.Response{Code: pipeline.CodeOK}
	var gradOut []float32
	if t.last(index) {
		res.Loss = loss
		if !train {
			res.Correct = countCorrect(out, targets, t.m)
			return res, nil
		}
	} else {
		if t.cfg.FaultNaN {
			for i := range out {
				out[i] = float32(math.NaN())
			}
		}
		next, err := t.forwardNext(ctx, index+1, epoch, kind, b.N, out, targets)
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
	t.stepMu.RLock()
	t.mu.Lock()
	current := t.shard == sh && (t.epoch == epoch || !t.sync())
	t.mu.Unlock()
	if !current {
		t.stepMu.RUnlock()
		tape.Release()
		return nil, fmt.Errorf("%w during the micro-batch", errStale)
	}
	t.meters.beginCompute()
	gradIn, err := sh.Backward(tape, gradOut)
	t.meters.endCompute()
	t.stepMu.RUnlock()
	if err != nil {
		return nil, fmt.Errorf("backward: %w", err)
	}
	res.Grad = gradIn
	if !t.sync() {
		t.mu.Lock()
		done := t.done
		t.mu.Unlock()
		if done {
			t.stepMu.Lock()
			sh.ZeroGrad()
			t.stepMu.Unlock()
		} else {
			t.innerStep(sh)
		}
	}
	t.finishMicro(b.N, float64(res.Loss), t.last(index))
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

// forwardNext sends activations to a holder of stage index, retrying with
// other holders, and checks the answer.
func (t *Trainer) forwardNext(ctx context.Context, index int, epoch uint64, kind uint8, n int, act []float32, targets []int32) (*pipeline.Response, error) {
	q := &pipeline.Request{Kind: kind, Shard: uint32(index), Epoch: epoch, N: uint32(n), Act: act,
		Targets:   targets, // the last stage needs them; middle stages pass them on
		Precision: t.wirePrecision()}
	t.mu.Lock()
	t.nextMB++
	q.ID = t.nextMB
	t.mu.Unlock()
	payload := q.Encode()
	tried := map[peer.ID]bool{}
	var lastErr error
	for attempt := 0; attempt < maxRetries; attempt++ {
		cands := t.holders(index, false)
		p, ok := t.bal.Pick(cands, tried)
		if !ok {
			if lastErr == nil {
				lastErr = fmt.Errorf("no reachable holder of shard %d", index)
			}
			// Wait a moment for a holder to appear or a ban to lapse,
			// unless the epoch closes meanwhile: its end waits for this
			// micro-batch, and so would the shard's other holders.
			if !t.waitForHolder(ctx, kind, epoch, 100*time.Millisecond) {
				return nil, fmt.Errorf("%w: %v", errStale, lastErr)
			}
			tried = map[peer.ID]bool{}
			continue
		}
		tried[p] = true
		start := t.clk.Now()
		t.bal.Begin(p)
		res, err := t.call(ctx, p, kind, payload, len(act), epoch, n)
		if err == nil {
			switch {
			case res.Code == pipeline.CodeStale:
				t.bal.End(p, 0, 0, false, 0, "")
				return nil, fmt.Errorf("%w: %s", errStale, res.Msg)
			case res.Code != pipeline.CodeOK:
				err = fmt.Errorf("peer %s: code %d: %s", p, res.Code, res.Msg)
			case kind == pipeline.KindTrain && len(res.Grad) != len(act):
				err = fmt.Errorf("peer %s: gradient of %d values, want %d", p, len(res.Grad), len(act))
			case !pipeline.Finite(res.Grad) || math.IsNaN(float64(res.Loss)) || math.IsInf(float64(res.Loss), 0):
				t.bal.End(p, 0, 0, true, banPoison, "sent non-finite gradients")
				t.log.Warn("excluding a peer that sent non-finite gradients", "peer", p, "shard", index)
				lastErr = fmt.Errorf("peer %s: %w", p, pipeline.ErrNonFinite)
				continue
			}
		}
		if err != nil {
			ban := banFailed
			if res != nil && res.Code == pipeline.CodeBusy {
				ban = banBusy
			}
			t.bal.End(p, 0, 0, true, ban, err.Error())
			lastErr = err
			continue
		}
		t.bal.End(p, n, t.clk.Since(start), false, 0, "")
		return res, nil
	}
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	return nil, lastErr
}

// waitForHolder waits up to d before a micro-batch of epoch tries the next
// stage again. It returns false, at once, when ctx ends or (training in
// sync mode) the epoch closes or moves on.
func (t *Trainer) waitForHolder(ctx context.Context, kind uint8, epoch uint64, d time.Duration) bool {
	deadline := t.clk.Now().Add(d)
	t.mu.Lock()
	defer t.mu.Unlock()
	over := func() bool {
		return ctx.Err() != nil || (kind == pipeline.KindTrain && t.sync() && (t.closing || t.epoch != epoch))
	}
	for !over() && t.clk.Now().Before(deadline) {
		t.waitTimeout(deadline)
	}
	return !over()
}

// call sends one encoded request of the given kind (n samples of epoch) to
// p and reads the answer, whose gradient holds at most maxGrad values. A
// training answer's receipt is kept and acknowledged with this node's
// receipt for the answer.
func (t *Trainer) call(ctx context.Context, p peer.ID, kind uint8, payload []byte, maxGrad int, epoch uint64, n int) (*pipeline.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, t.cfg.HopTimeout)
	defer cancel()
	s, err := t.h.NewStream(ctx, p, pipeline.Protocol)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(d)
	}
	if _, err := s.Write(payload); err != nil {
		s.Reset()
		return nil, err
	}
	if kind == pipeline.KindTrain {
		t.pipeSent.Add(uint64(len(payload)))
	}
	hash := sha256.New() // of the answer as received: what the acknowledgement credits
	res, err := pipeline.ReadResponse(io.TeeReader(s, hash), maxGrad)
	if err != nil {
		s.Reset()
		return nil, err
	}
	if len(res.Receipt) > 0 {
		var ack []byte
		if kind == pipeline.KindTrain && res.Code == pipeline.CodeOK && len(res.Grad) == maxGrad && pipeline.Finite(res.Grad) {
			t.earn(p, res.Receipt, n, sha256.Sum256(payload))
			ack = t.stamp(p, epoch, n, [32]byte(hash.Sum(nil)))
		}
		_, _ = s.Write(pipeline.AppendAck(nil, ack))
	}
	return res, nil
}

// admitDraw waits until the first-shard driver may start a micro-batch and
// admits it: online on shard 0, the epoch open, a place in flight free
// (slots) and, in sync mode, the swarm's finished and started samples
// short of the target batch. It returns the micro-batch's size: the batch
// size, or what is left of the target batch.
func (t *Trainer) admitDraw(ctx context.Context, slots flightSlots) (engine.Shard, uint64, int, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for {
		if ctx.Err() != nil {
			return nil, 0, 0, false
		}
		if t.shard != nil && t.index == 0 && t.state == progress.StateOnline && !t.done && !t.closing && slots.room() {
			n := t.m.Training.BatchSize
			if t.sync() {
				// At most its share of the target batch, and what the others
				// leave open as far as their records tell: holders reopen an
				// epoch together, before they hear of each other's first
				// micro-batches. A holder that leaves drops out of the share
				// when its record expires.
				in := t.inputLocked()
				left := min(t.m.Training.TargetBatch-t.core.Claimed(in), t.core.Share(in)-t.samples-t.drawn)
				n = min(n, left)
			}
			if n > 0 {
				slots.take()
				t.inflight++
				t.drawn += n
				t.gossip.Poke()
				return t.shard, t.epoch, n, true
			}
		}
		t.waitTimeout(t.clk.Now().Add(100 * time.Millisecond))
	}
}

// undraw ends a micro-batch the driver drew in epoch: its samples no
// longer count as drawn, and its place in the epoch is free.
func (t *Trainer) undraw(epoch uint64, n int) {
	t.mu.Lock()
	if t.epoch == epoch {
		t.drawn -= n
	}
	t.mu.Unlock()
	t.release()
}

// send runs a drawn micro-batch through the pipeline from shard 0.
func (t *Trainer) send(ctx context.Context, sh engine.Shard, epoch uint64, b *engine.Batch) error {
	_, err := t.process(ctx, sh, 0, epoch, pipeline.KindTrain, b, nil, b.Targets)
	return err
}

// poke pushes this node's progress record now.
func (t *Trainer) poke() { t.gossip.Poke() }

// finishMicro accounts a finished training micro-batch.
func (t *Trainer) finishMicro(n int, loss float64, isLast bool) {
	t.mu.Lock()
	t.samples += n
	t.micro++
	first := t.index == 0
	t.mu.Unlock()
	if first {
		t.drive.computed(t.meters.busyTime())
	}
	if isLast {
		t.meters.observeLoss(loss)
	}
	t.meters.account(n)
	t.gossip.Poke()
	t.kickEpoch()
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
	t.lieLocked(&r)
	return r
}

func (t *Trainer) kickEpoch() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}
