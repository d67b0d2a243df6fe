package averaging

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Gossip fallback: pairwise push-pull averaging. The initiator sends a header
// and its vector, the responder answers with its vector, the initiator
// acknowledges, and both replace their vectors with the weighted mean
// (w_a·a + w_b·b)/(w_a + w_b), summed in peer-id order so that, without
// compression, both end with the same bytes. The initiator applies the result
// once its acknowledgement is written, the responder once it has read it.

type gossipPhase struct {
	busy sync.Mutex // held during one exchange
	done chan struct{}
	once sync.Once
	res  Result
}

func (g *gossipPhase) finish(res Result) {
	g.once.Do(func() {
		g.res = res
		close(g.done)
	})
}

const (
	gossipOK   byte = 1
	gossipBusy byte = 2
	gossipNo   byte = 3
)

func (a *Averager) gossipStep(ctx context.Context, sess *session, cands []peer.ID) (Result, error) {
	start := time.Now()
	gp := &gossipPhase{done: make(chan struct{})}
	sess.mu.Lock()
	sess.gossip = gp
	sess.mu.Unlock()
	defer func() {
		sess.mu.Lock()
		sess.gossip = nil
		sess.mu.Unlock()
		gp.busy.Lock() // wait for an exchange in flight to finish with vec
		gp.busy.Unlock()
	}()
	gctx, cancel := context.WithTimeout(ctx, a.cfg.GossipTimeout)
	defer cancel()
	rng := a.seedRNG()
	others := make([]peer.ID, 0, len(cands))
	for _, c := range cands {
		if c != a.h.ID() {
			others = append(others, c)
		}
	}
	for gctx.Err() == nil && len(others) > 0 {
		select {
		case <-gp.done:
			return a.gossipResult(gp.res, start), nil
		default:
		}
		c := others[rng.IntN(len(others))]
		if gp.busy.TryLock() {
			select {
			case <-gp.done:
				gp.busy.Unlock()
				return a.gossipResult(gp.res, start), nil
			default:
			}
			res, err := a.gossipInitiate(gctx, sess, c)
			if err == nil {
				gp.finish(res)
			}
			gp.busy.Unlock()
			if err != nil {
				a.log.Debug("gossip attempt failed", "peer", c, "err", err)
			}
		}
		// Back off a random 10–60 ms so two initiators do not keep colliding.
		t := time.NewTimer(time.Duration(10+rng.IntN(50)) * time.Millisecond)
		select {
		case <-t.C:
		case <-gp.done:
			t.Stop()
		case <-gctx.Done():
			t.Stop()
		}
	}
	select {
	case <-gp.done:
		return a.gossipResult(gp.res, start), nil
	default:
	}
	a.met.failures.WithLabelValues("gossip_failed").Inc()
	res := localResult(a.h.ID(), sess.vecLen)
	return res, fmt.Errorf("%w: gossip found no partner in %v", ErrNoGroup, a.cfg.GossipTimeout)
}

func (a *Averager) gossipResult(res Result, start time.Time) Result {
	res.Mode = ModeGossip
	res.Fraction = 1
	res.ReduceTime = time.Since(start)
	a.met.bytes.WithLabelValues("sent").Add(float64(res.BytesSent))
	a.met.bytes.WithLabelValues("received").Add(float64(res.BytesReceived))
	a.met.duration.WithLabelValues("gossip").Observe(res.ReduceTime.Seconds())
	return res
}

// gossipInitiate runs one exchange with c as the initiator.
func (a *Averager) gossipInitiate(ctx context.Context, sess *session, c peer.ID) (Result, error) {
	s, err := a.h.NewStream(network.WithAllowLimitedConn(ctx, "averaging"), c, ProtoGossip)
	if err != nil {
		return Result{}, err
	}
	defer s.Reset()
	dl, _ := ctx.Deadline()
	_ = s.SetDeadline(dl)
	cnt := &counter{}
	hdr := gossipHeader{Version: WireVersion, Key: sess.key, Round: sess.round, Weight: sess.weight,
		VecLen: uint64(sess.vecLen), Codec: sess.codec}
	if err := writeFrame(s, tGossipHeader, hdr.marshal()); err != nil {
		return Result{}, err
	}
	t, b, err := readFrame(s, maxSmallFrame, nil)
	if err != nil {
		a.refuseAnswer(c, ProtoGossip, err)
		return Result{}, err
	}
	if t != tGossipReply || len(b) != 9 {
		err := fmt.Errorf("%w: gossip reply of type %d, %d bytes", errMalformed, t, len(b))
		a.refuse(c, ProtoGossip, reasonMalformed, err)
		return Result{}, err
	}
	if b[0] != gossipOK {
		return Result{}, fmt.Errorf("gossip refused by %s", c)
	}
	theirW := (&dec{b: b[1:]}).f64()
	if err := a.checkWeight(theirW); err != nil {
		a.refuse(c, ProtoGossip, reasonRange, err)
		return Result{}, err
	}
	if err := a.sendVector(s, sess, cnt); err != nil {
		return Result{}, err
	}
	theirs := make([]float32, sess.vecLen) // our own length, agreed in the header
	if err := a.recvVector(s, sess, theirs, cnt); err != nil {
		a.refuseAnswer(c, ProtoGossip, err)
		return Result{}, err
	}
	if err := a.checkPair(sess.vec, theirs); err != nil { // no ack: neither side mixes
		a.refuse(c, ProtoGossip, reasonOutlier, err)
		return Result{}, err
	}
	if err := writeFrame(s, tAck, nil); err != nil {
		return Result{}, err
	}
	_ = s.CloseWrite()
	wm, wt := a.pairWeights(sess.weight, theirW)
	mixPair(sess.vec, theirs, wm, wt, a.h.ID() < c)
	return a.pairResult(c, sess.vecLen, cnt), nil
}

func (a *Averager) pairResult(c peer.ID, n int, cnt *counter) Result {
	ids := []peer.ID{a.h.ID(), c}
	if c < a.h.ID() {
		ids[0], ids[1] = c, a.h.ID()
	}
	return Result{Mode: ModeGossip, Members: ids, BytesSent: cnt.sent, BytesReceived: cnt.recv,
		Spans: []Span{{0, n, ids}}, Fraction: 1}
}

// A pair has no majority to be robust with; what robust settings can do
// for a pair is keep one side from dominating it. pairWeights: with a robust
// Aggregation both weigh the same (each capped at the median of the two
// weights would still let a liar declaring MaxWeight take half; equal
// weights give it exactly half, like any partner). checkPair: with NormK,
// a partner whose vector's norm exceeds NormK × ours is refused as an
// outlier and nothing is mixed (the initiator then withholds its ack).
func (a *Averager) pairWeights(mine, theirs float64) (float64, float64) {
	if a.cfg.Aggregation != AggregateMean {
		return 1, 1
	}
	return mine, theirs
}

func (a *Averager) checkPair(mine, theirs []float32) error {
	if a.cfg.NormK == 0 {
		return nil
	}
	nm, nt := l2(mine), l2(theirs)
	if nm > 0 && nt > a.cfg.NormK*nm {
		return fmt.Errorf("%w: gossip vector norm %.4g is above %g × ours %.4g", errOutOfRange, nt, a.cfg.NormK, nm)
	}
	return nil
}

// mixPair sets mine to the weighted mean of mine and theirs, adding the two
// terms in a fixed order so that both sides compute the same bytes.
func mixPair(mine, theirs []float32, wm, wt float64, mineFirst bool) {
	tot := wm + wt
	fm, ft := float32(wm/tot), float32(wt/tot)
	for i := range mine {
		x, y := fm*mine[i], ft*theirs[i]
		if mineFirst {
			mine[i] = x + y
		} else {
			mine[i] = y + x
		}
	}
}

func (a *Averager) sendVector(s network.Stream, sess *session, cnt *counter) error {
	var buf []byte
	for off, k := 0, 0; off < sess.vecLen; off, k = off+a.cfg.PartSize, k+1 {
		pm := partMsg{Index: uint32(k)}
		buf = pm.appendTo(buf[:0])
		buf = sess.codec.Encode(buf, sess.vec[off:min(off+a.cfg.PartSize, sess.vecLen)])
		if err := writeFrame(s, tPart, buf); err != nil {
			return err
		}
		cnt.add(len(buf)+5, 0)
	}
	return nil
}

func (a *Averager) recvVector(s network.Stream, sess *session, dst []float32, cnt *counter) error {
	var buf []byte
	for off, k := 0, 0; off < sess.vecLen; off, k = off+a.cfg.PartSize, k+1 {
		n := min(off+a.cfg.PartSize, sess.vecLen) - off
		t, b, err := readFrame(s, min(partFrame(sess.codec, n, 0), a.cfg.MaxFrame), buf)
		buf = b
		if err != nil {
			return err
		}
		cnt.add(0, len(b)+5)
		if t != tPart {
			return fmt.Errorf("%w: frame type %d, want part", errMalformed, t)
		}
		pm, err := unmarshalPart(b)
		if err != nil {
			return err
		}
		if int(pm.Index) != k || len(pm.Contributors) != 0 {
			return fmt.Errorf("%w: gossip part %d with %d contributor bytes, want part %d", errMalformed, pm.Index, len(pm.Contributors), k)
		}
		if err := sess.codec.Decode(dst[off:off+n], pm.Data); err != nil {
			return err
		}
	}
	return nil
}

// handleGossip answers an exchange if this peer is gossiping on the same key
// and round and is not in another exchange.
func (a *Averager) handleGossip(s network.Stream) {
	defer s.Reset()
	from := s.Conn().RemotePeer()
	_ = s.SetDeadline(time.Now().Add(a.cfg.RequestTimeout))
	t, b, err := readFrame(s, maxHeaderFrame, nil)
	if err == nil && t != tGossipHeader {
		err = fmt.Errorf("%w: frame type %d, want gossip header", errMalformed, t)
	}
	var hdr gossipHeader
	if err == nil {
		hdr, err = unmarshalGossipHeader(b)
	}
	if err == nil {
		err = a.checkWeight(hdr.Weight)
	}
	if err != nil {
		a.log.Debug("gossip: bad header", "peer", from, "err", err)
		a.refuseErr(from, ProtoGossip, err)
		return
	}
	if hdr.Version != WireVersion {
		a.log.Info("gossip: other wire version", "peer", from, "version", hdr.Version)
		return
	}
	refuse := func(code byte) {
		var e enc
		e.u8(code)
		e.f64(0)
		_ = writeFrame(s, tGossipReply, e.b)
		_ = s.CloseWrite()
	}
	a.mu.Lock()
	sess := a.sessions[hdr.Key]
	a.mu.Unlock()
	if sess == nil {
		refuse(gossipNo)
		return
	}
	sess.mu.Lock()
	gp := sess.gossip
	sess.mu.Unlock()
	if gp == nil || sess.round != hdr.Round || uint64(sess.vecLen) != hdr.VecLen || sess.codec != hdr.Codec {
		refuse(gossipNo)
		return
	}
	if !gp.busy.TryLock() {
		refuse(gossipBusy)
		return
	}
	defer gp.busy.Unlock()
	select {
	case <-gp.done:
		refuse(gossipNo)
		return
	default:
	}
	_ = s.SetDeadline(time.Now().Add(a.cfg.GossipTimeout))
	cnt := &counter{}
	var e enc
	e.u8(gossipOK)
	e.f64(sess.weight)
	if err := writeFrame(s, tGossipReply, e.b); err != nil {
		return
	}
	theirs := make([]float32, sess.vecLen)
	if err := a.recvVector(s, sess, theirs, cnt); err != nil {
		a.log.Info("gossip: bad vector; peer excluded", "peer", from, "err", err)
		a.met.failures.WithLabelValues("bad_peer").Inc()
		a.refuseErr(from, ProtoGossip, err)
		return
	}
	if err := a.checkPair(sess.vec, theirs); err != nil {
		a.refuse(from, ProtoGossip, reasonOutlier, err)
		return
	}
	if err := a.sendVector(s, sess, cnt); err != nil {
		return
	}
	if t, _, err := readFrame(s, maxSmallFrame, nil); err != nil || t != tAck {
		return
	}
	wm, wt := a.pairWeights(sess.weight, hdr.Weight)
	mixPair(sess.vec, theirs, wm, wt, a.h.ID() < from)
	gp.finish(a.pairResult(from, sess.vecLen, cnt))
}
