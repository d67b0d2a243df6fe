package averaging

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/swarm-train/swarm/internal/bulk"
	"github.com/swarm-train/swarm/internal/fvec"
	"github.com/swarm-train/swarm/internal/sparseq"
)

// round is this peer's side of one all-reduce: the reducer accounting for its
// own share and the streams of the senders feeding it.
type round struct {
	g        *groupInfo
	self     int
	lay      layout
	vec      []float32
	codec    Codec
	deadline time.Time
	cnt      *counter

	mu       sync.Mutex
	red      *reducer
	outs     map[int]chan partMsg // per sender: averaged parts to return
	excluded map[peer.ID]string
	finished chan struct{} // closed when every part of the share is final
	closed   bool
	handlers sync.WaitGroup      // handleReduce goroutines serving this round
	streams  map[int]bulk.Stream // their streams, by sender index
	onFinal  func(k int)
	ownSpans []Span
	faults   *faults

	// With audits the results land in res, and vec keeps our values until
	// the audit has decided which results to take; recv has, per reducer
	// and part, the contributors of each part received (nil: not received).
	res  []float32
	recv [][]bitset
}

// out is where the round's results go: res with audits, else the vector.
func (r *round) out() []float32 {
	if r.res != nil {
		return r.res
	}
	return r.vec
}

// allreduce runs the butterfly all-reduce of vec in group g.
func (a *Averager) allreduce(ctx context.Context, g *groupInfo, vec []float32, weight float64, codec Codec) Result {
	start := time.Now()
	self := g.index(a.h.ID())
	align := 1
	if codec.sparseBits() > 0 {
		align = sparseq.Block
	}
	lay := partitionAligned(len(vec), g.Members, int(g.PartSize), align)
	deadline := start.Add(a.cfg.AllreduceTimeout)
	rctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	cnt := &counter{}

	r := &round{g: g, self: self, lay: lay, vec: vec, codec: codec, deadline: deadline, cnt: cnt,
		outs: map[int]chan partMsg{}, streams: map[int]bulk.Stream{}, excluded: map[peer.ID]string{}, finished: make(chan struct{}),
		onFinal: a.faults.afterFinal, faults: &a.faults}
	myShare := lay.Shares[self]
	opts := reduceOpts{Agg: a.cfg.Aggregation, Tau: a.cfg.ClipTau, Iters: a.cfg.ClipIters, NormK: a.cfg.NormK, Pool: &a.pool}
	a.pool.fit(len(vec), int(g.PartSize), len(g.Members), a.cfg.AuditParts)
	own := vec[myShare.Start:myShare.End]
	var au *auditRound
	if a.cfg.AuditParts > 0 {
		// Audits: the vector keeps our values (what we send, and what stays
		// where a reducer is not trusted), the results wait in res, and the
		// reducer keeps what it combined.
		r.res = a.pool.get(len(vec))
		r.recv = make([][]bitset, len(g.Members))
		opts.Keep = true
		au = a.openAudit(g, self, lay, codec, opts, vec)
		defer a.closeAudit(g.ID)
		if au.draw != nil {
			a.sendSeedHash(au, deadline)
		}
	}
	r.red = newReducer(self, len(g.Members), lay.Parts[self], own, weight, start, a.cfg.SenderTimeout, deadline, opts)
	// Only members that can reduce receive streams; every member sends.
	for s := range g.Members {
		if s != self && len(lay.Parts[self]) > 0 {
			r.outs[s] = make(chan partMsg, len(lay.Parts[self]))
		}
	}
	r.mu.Lock()
	r.dispatchLocked()
	r.mu.Unlock()
	if len(lay.Parts[self]) > 0 {
		a.mu.Lock()
		a.rounds[g.ID] = r
		close(a.roundsCh)
		a.roundsCh = make(chan struct{})
		a.mu.Unlock()
		defer func() {
			a.mu.Lock()
			delete(a.rounds, g.ID)
			a.mu.Unlock()
		}()
	}

	// Senders: one goroutine per reducer.
	type sendResult struct {
		j     int
		spans []Span
		err   error
	}
	results := make(chan sendResult, len(g.Members))
	var wg sync.WaitGroup
	for j := range g.Members {
		if j == self || len(lay.Parts[j]) == 0 {
			continue
		}
		wg.Add(1)
		go func(j int) {
			defer wg.Done()
			spans, err := a.sendTo(rctx, r, j, weight)
			results <- sendResult{j, spans, err}
		}(j)
	}
	// The reducer's clock: drop stalled senders, end at the deadline.
	tickDone := make(chan struct{})
	go func() {
		defer close(tickDone)
		t := time.NewTicker(tickEvery * 5)
		defer t.Stop()
		for {
			select {
			case <-r.finished:
				return
			case now := <-t.C:
				r.mu.Lock()
				r.red.Tick(now)
				r.dispatchLocked()
				r.mu.Unlock()
			case <-rctx.Done():
				r.mu.Lock()
				r.red.Tick(deadline.Add(time.Nanosecond))
				r.dispatchLocked()
				r.mu.Unlock()
				return
			}
		}
	}()
	wg.Wait()
	close(results)
	<-tickDone // every part of our share is final now
	// No more parts: let the handlers send what is queued and finish; at the
	// deadline their streams are reset. Nothing touches the round after this.
	r.mu.Lock()
	r.closed = true
	for s, ch := range r.outs {
		close(ch)
		delete(r.outs, s)
	}
	r.mu.Unlock()
	handlersDone := make(chan struct{})
	go func() { r.handlers.Wait(); close(handlersDone) }()
	select {
	case <-handlersDone:
	case <-rctx.Done():
		r.mu.Lock()
		for _, st := range r.streams {
			_ = st.Reset()
		}
		r.mu.Unlock()
		<-handlersDone
	}

	var spans []Span
	for res := range results {
		spans = append(spans, res.spans...)
		if res.err != nil {
			r.mu.Lock()
			r.excluded[g.Members[res.j].ID] = "as reducer: " + res.err.Error()
			r.mu.Unlock()
			a.met.failures.WithLabelValues("reducer_failed").Inc()
			a.log.Info("reducer failed; its slice stays local where not received", "peer", g.Members[res.j].ID, "err", res.err)
		}
	}
	r.mu.Lock()
	outliers := r.red.Outliers()
	for s, why := range r.red.Dropped() {
		if ev, ok := outliers[s]; ok {
			// Refused outside the round's lock below; the evidence is logged once.
			r.excluded[g.Members[s].ID] = "as sender: rejected: " + ev
			a.met.failures.WithLabelValues("sender_rejected").Inc()
			continue
		}
		if _, ok := r.excluded[g.Members[s].ID]; !ok {
			r.excluded[g.Members[s].ID] = "as sender: " + why
		}
		a.met.failures.WithLabelValues("sender_dropped").Inc()
		a.log.Info("sender dropped", "peer", g.Members[s].ID, "reason", why)
	}
	spans = append(spans, r.ownSpans...)
	excluded := r.excluded
	r.mu.Unlock()
	for s, ev := range outliers {
		a.refuse(g.Members[s].ID, ProtoReduce, reasonOutlier, fmt.Errorf("%w: group %x: %s", errOutOfRange, g.ID, ev))
	}
	var accused []Accusation
	var audits, checks int
	var audited bool
	if au != nil {
		spans, accused, audits, checks, audited = a.afterAudit(ctx, r, au, spans, excluded)
	}
	// Nothing reads the round's buffers any more (the audit is closed).
	r.red.release()
	a.pool.put(r.res)

	cnt.mu.Lock()
	sent, recv := cnt.sent, cnt.recv
	cnt.mu.Unlock()
	res := Result{Mode: ModeGroup, GroupID: hex.EncodeToString(g.ID[:]), Members: g.ids(), Excluded: excluded,
		Accusations: accused, Audits: audits, Checks: checks, Audited: audited,
		BytesSent: sent, BytesReceived: recv, ReduceTime: time.Since(start)}
	res.Spans, res.Fraction = mergeSpans(spans, len(vec), a.h.ID())
	a.met.bytes.WithLabelValues("sent").Add(float64(sent))
	a.met.bytes.WithLabelValues("received").Add(float64(recv))
	a.met.duration.WithLabelValues("allreduce").Observe(res.ReduceTime.Seconds())
	return res
}

// dispatchLocked moves finished parts from the reducer into the vector and to
// the senders' queues. Lossy codecs: the reducer keeps the decoded bytes it
// sends, so every member ends with the same values.
func (r *round) dispatchLocked() {
	if r.closed {
		return
	}
	for _, fp := range r.red.Ready() {
		if f := r.faults.lieResult; f != nil {
			f(fp.Index, fp.Avg)
		}
		dst := r.out()[fp.Span.Start:fp.Span.End]
		var data []byte
		if r.codec == CodecNone && littleEndian {
			// The part's final value never changes again: send it from the
			// vector itself, without a copy.
			copy(dst, fp.Avg)
			data = rawBytes(dst)
		} else {
			data = r.codec.Encode(nil, fp.Avg)
			if err := r.codec.Decode(dst, data); err != nil {
				copy(dst, fp.Avg) // cannot happen for finite input; keep the exact average
			}
		}
		ids := make([]peer.ID, 0, len(r.g.Members))
		for i, m := range r.g.Members {
			if fp.Contributors.has(i) {
				ids = append(ids, m.ID)
			}
		}
		r.ownSpans = append(r.ownSpans, Span{fp.Span.Start, fp.Span.End, ids})
		msg := partMsg{Index: uint32(fp.Index), Contributors: fp.Contributors, Data: data}
		for s, ch := range r.outs {
			if fp.Contributors.has(s) {
				ch <- r.lieTo(s, fp.Index, msg, dst) // capacity is the number of parts: never blocks
			}
		}
		if r.onFinal != nil {
			r.onFinal(fp.Index)
		}
	}
	if r.red.Done() {
		select {
		case <-r.finished:
		default:
			close(r.finished)
		}
	}
	// Senders dropped get no more parts: close their queues and streams.
	for s, st := range r.red.status {
		if st == sDropped {
			if ch, ok := r.outs[s]; ok {
				close(ch)
				delete(r.outs, s)
				if st := r.streams[s]; st != nil {
					_ = st.Reset()
				}
			}
		}
	}
}

// lieTo is msg, or with faults.lieTo what this reducer sends receiver s
// instead (tests).
func (r *round) lieTo(s, k int, msg partMsg, vals []float32) partMsg {
	f := r.faults.lieTo
	if f == nil {
		return msg
	}
	alt := slices.Clone(vals)
	f(r.g.Members[s].ID, k, alt)
	if slices.Equal(alt, vals) {
		return msg
	}
	msg.Data = r.codec.Encode(nil, alt)
	return msg
}

// sendTo streams this member's values of reducer j's share to j and writes
// the averages it returns into the vector. Parts not returned stay local.
func (a *Averager) sendTo(ctx context.Context, r *round, j int, weight float64) (spans []Span, err error) {
	parts := r.lay.Parts[j]
	self := r.g.Members[r.self].ID
	got := 0
	defer func() { // parts never returned stay local
		for k := got; k < len(parts); k++ {
			spans = append(spans, Span{parts[k].Start, parts[k].End, []peer.ID{self}})
		}
	}()
	to := r.g.Members[j].ID
	protos := []protocol.ID{ProtoReduce}
	if a.cfg.Bulk != nil {
		protos = []protocol.ID{ProtoReduceBulk, ProtoReduce}
	}
	ls, err := a.h.NewStream(network.WithAllowLimitedConn(ctx, "averaging"), to, protos...)
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	defer ls.Reset()
	var s bulk.Stream = ls
	if ls.Protocol() == ProtoReduceBulk {
		if s, err = a.cfg.Bulk.Upgrade(ctx, ls); err != nil {
			if errors.Is(err, bulk.ErrHandshake) { // the reducer broke the handshake
				a.refuse(to, ProtoReduce, reasonMalformed, err)
			}
			return nil, err
		}
	}
	defer s.Reset()
	_ = s.SetDeadline(r.deadline)
	hdr := reduceHeader{Version: WireVersion, Group: r.g.ID, Sender: uint16(r.self), Weight: weight,
		VecLen: r.g.VecLen, Codec: r.codec}
	hb := hdr.marshal()
	if err := writeFrame(s, tReduceHeader, hb); err != nil {
		return nil, fmt.Errorf("write header: %w", err)
	}
	r.cnt.add(len(hb)+5, 0)

	var sentMu sync.Mutex
	sent := 0
	writeErr := make(chan error, 1)
	writerDone := make(chan struct{})
	defer func() { _ = s.Reset(); <-writerDone }() // the writer reads vec: wait for it
	go func() {
		defer close(writerDone)
		var buf []byte
		tmp := make([]float32, 0)
		for k, sp := range parts {
			src := r.vec[sp.Start:sp.End]
			switch {
			case a.faults.sendNaN:
				tmp = append(tmp[:0], src...)
				tmp[0] = float32(math.NaN())
				src = tmp
			case a.faults.sendShort:
				src = src[:len(src)-1]
			}
			pm := partMsg{Index: uint32(k)}
			head := pm.appendHead(nil)
			var body []byte
			switch {
			case a.faults.sendGarbage:
				body = []byte{1, 2, 3}
			case r.codec == CodecNone && littleEndian:
				body = rawBytes(src) // no copy
			default:
				buf = r.codec.Encode(buf[:0], src)
				body = buf
			}
			sentMu.Lock()
			sent = k + 1
			sentMu.Unlock()
			if err := writeFrame2(s, tPart, head, body); err != nil {
				writeErr <- fmt.Errorf("write part %d: %w", k, err)
				return
			}
			r.cnt.add(len(head)+len(body)+5, 0)
			if a.faults.afterPart != nil {
				a.faults.afterPart(to, k)
			}
		}
		writeErr <- nil
	}()

	defer func() { // the reducer's bad answers are refused; a slow or dead one is not
		if err != nil {
			a.refuseAnswer(to, ProtoReduce, err)
		}
	}()
	var rbuf []byte
	cb := (len(r.g.Members) + 7) / 8
	var tmp []float32
	if r.res == nil {
		tmp = a.pool.get(longestPart(parts)) // never a peer-declared size
		defer a.pool.put(tmp)
	}
	for k := range parts {
		sp := parts[k]
		_ = s.SetReadDeadline(minTime(time.Now().Add(a.cfg.ReducerTimeout), r.deadline))
		// With audits the part lands in res (scratch until the audit takes
		// it); otherwise it is checked in tmp before it replaces our values.
		var dst []float32
		if r.res != nil {
			dst = r.res[sp.Start:sp.End]
		} else {
			dst = tmp[:sp.End-sp.Start]
		}
		var h partHead
		h, rbuf, err = readPart(s, tAvgPart, r.codec, min(partFrame(r.codec, sp.End-sp.Start, cb), a.cfg.MaxFrame), cb, dst, rbuf, nil)
		switch {
		case err == nil && (int(h.Index) != k || !h.Contributors.has(r.self)):
			err = fmt.Errorf("%w: averaged part %d (want %d) without us as contributor", errMalformed, h.Index, k)
		case reasonFor(err) == reasonMalformed:
			err = fmt.Errorf("averaged part %d: %w", k, err)
		case err != nil:
			err = fmt.Errorf("read part %d: %w", k, err)
		}
		if err != nil {
			return spans, err
		}
		r.cnt.add(0, h.Size+5)
		sentMu.Lock()
		ok := sent > k // also orders our read of the part before this write
		sentMu.Unlock()
		if !ok {
			return spans, fmt.Errorf("%w: averaged part %d before it was sent", errMalformed, k)
		}
		if r.res == nil {
			copy(r.vec[sp.Start:sp.End], dst)
		}
		if r.recv != nil {
			if r.recv[j] == nil {
				r.recv[j] = make([]bitset, len(parts))
			}
			r.recv[j][k] = h.Contributors
		}
		ids := make([]peer.ID, 0, len(r.g.Members))
		for i, m := range r.g.Members {
			if h.Contributors.has(i) {
				ids = append(ids, m.ID)
			}
		}
		spans = append(spans, Span{sp.Start, sp.End, ids})
		got = k + 1
	}
	_ = s.Close()
	if err := <-writeErr; err != nil && got < len(parts) {
		return spans, err
	}
	return spans, nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// handleReduce serves one sender of a round in which this peer reduces.
func (a *Averager) handleReduce(s network.Stream) {
	a.serveReduce(s.Conn().RemotePeer(), s)
}

// handleReduceBulk serves a sender that offers a bulk connection first.
func (a *Averager) handleReduceBulk(ls network.Stream) {
	defer ls.Reset()
	from := ls.Conn().RemotePeer()
	s, err := a.cfg.Bulk.Accept(ls)
	if err != nil {
		if errors.Is(err, bulk.ErrHandshake) {
			a.refuse(from, ProtoReduce, reasonMalformed, err)
		} else {
			a.log.Debug("reduce stream: bulk handshake failed", "peer", from, "err", err)
		}
		return
	}
	a.serveReduce(from, s)
}

// serveReduce serves one sender, from, of a round in which this peer
// reduces, on s.
func (a *Averager) serveReduce(from peer.ID, s bulk.Stream) {
	defer s.Reset()
	_ = s.SetDeadline(time.Now().Add(a.cfg.SenderTimeout))
	t, b, err := readFrame(s, maxHeaderFrame, nil)
	if err == nil && t != tReduceHeader {
		err = fmt.Errorf("%w: frame type %d, want reduce header", errMalformed, t)
	}
	var hdr reduceHeader
	if err == nil {
		hdr, err = unmarshalReduceHeader(b)
	}
	if err == nil {
		err = a.checkWeight(hdr.Weight)
	}
	if err != nil {
		a.log.Debug("reduce stream: bad header", "peer", from, "err", err)
		a.refuseErr(from, ProtoReduce, err)
		return
	}
	if hdr.Version != WireVersion {
		a.log.Info("reduce stream: other wire version", "peer", from, "version", hdr.Version)
		return
	}
	// The sender may have learnt of the group before us: wait for the round.
	r := a.waitRound(hdr.Group, time.Now().Add(a.cfg.SenderTimeout))
	if r == nil {
		a.log.Debug("reduce stream: unknown group", "peer", from)
		return
	}
	si := int(hdr.Sender)
	exclude := func(why string) {
		a.log.Warn("peer excluded from round", "peer", from, "reason", why)
		a.met.failures.WithLabelValues("bad_peer").Inc()
		r.mu.Lock()
		r.excluded[from] = why
		r.red.Drop(si, why)
		r.dispatchLocked()
		r.mu.Unlock()
	}
	if si >= len(r.g.Members) || r.g.Members[si].ID != from || si == r.self {
		a.refuse(from, ProtoReduce, reasonNotMember, fmt.Errorf("sender index %d does not name this peer in group %x", si, hdr.Group))
		return
	}
	if hdr.VecLen != r.g.VecLen || hdr.Codec != r.codec {
		why := fmt.Sprintf("header mismatch: length %d codec %s, want %d %s", hdr.VecLen, hdr.Codec, r.g.VecLen, r.codec)
		a.refuse(from, ProtoReduce, reasonRange, fmt.Errorf("%w: %s", errOutOfRange, why))
		exclude(why)
		return
	}
	r.cnt.add(0, len(b)+5)
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	if r.streams[si] != nil {
		r.mu.Unlock()
		a.refuse(from, ProtoReduce, reasonFlood, fmt.Errorf("%w: a second stream for group %x", errFlood, hdr.Group))
		return
	}
	r.handlers.Add(1)
	defer r.handlers.Done()
	r.streams[si] = s
	err = r.red.Header(si, hdr.Weight, time.Now())
	out := r.outs[si]
	r.mu.Unlock()
	if err != nil || out == nil {
		return
	}
	_ = s.SetWriteDeadline(r.deadline)
	writerDone := make(chan struct{})
	go func() { // return averaged parts as they become final
		defer close(writerDone)
		for pm := range out {
			head := pm.appendHead(nil)
			if err := writeFrame2(s, tAvgPart, head, pm.Data); err != nil {
				return
			}
			r.cnt.add(len(head)+len(pm.Data)+5, 0)
		}
		_ = s.CloseWrite()
	}()
	parts := r.lay.Parts[r.self]
	var vals []float32 // a streamed reducer's values of the part at hand
	defer func() { a.pool.put(vals) }()
	var rbuf []byte
	for k := range parts {
		_ = s.SetReadDeadline(minTime(time.Now().Add(a.cfg.SenderTimeout), r.deadline))
		n := parts[k].End - parts[k].Start
		// A buffered reducer lends a buffer to read into and keeps it: the
		// values are copied once, from the stream; a streamed one adds them
		// up from ours.
		r.mu.Lock()
		b := r.red.buffer()
		r.mu.Unlock()
		var dst []float32
		owned := b != nil
		if owned {
			dst = b[:n]
		} else {
			if vals == nil {
				vals = a.pool.get(longestPart(parts)) // never a peer-declared size
			}
			dst = vals[:n]
		}
		var h partHead
		sq, sqp := -1.0, (*float64)(nil) // Σ dst², taken while reading for a norm-checking reducer
		if owned && a.cfg.NormK > 0 {
			sqp = &sq
		}
		h, rbuf, err = readPart(s, tPart, r.codec, min(partFrame(r.codec, n, 0), a.cfg.MaxFrame), 0, dst, rbuf, sqp)
		if err == nil && int(h.Index) != k {
			err = fmt.Errorf("%w: part %d out of order, want %d", errMalformed, h.Index, k)
		}
		if err != nil && owned {
			r.mu.Lock()
			r.red.giveBack(b)
			r.mu.Unlock()
		}
		if reason := reasonFor(err); reason == reasonOversize || reason == reasonMalformed {
			if reason == reasonOversize {
				a.refuseErr(from, ProtoReduce, err)
			} else {
				a.refuse(from, ProtoReduce, reasonMalformed, err)
			}
			exclude(fmt.Sprintf("part %d: %v", k, err))
			break
		} else if err != nil {
			r.mu.Lock()
			stalled := (reasonFor(err) == reasonStall || r.red.Stalled(si)) && time.Now().Before(r.deadline)
			r.red.Drop(si, fmt.Sprintf("stream failed after %d of %d parts: %v", k, len(parts), err))
			r.dispatchLocked()
			r.mu.Unlock()
			if stalled {
				a.refuse(from, ProtoReduce, reasonStall, fmt.Errorf("no part %d of %d within %v: %w", k, len(parts), a.cfg.SenderTimeout, err))
			}
			break
		}
		r.cnt.add(0, h.Size+5)
		if f := a.faults.alterInput; f != nil {
			f(from, k, dst)
			if sqp != nil {
				sq = fvec.SumSquares(dst) // the values changed since they were read
			}
		}
		r.mu.Lock()
		if owned {
			_ = r.red.PartInto(si, k, dst, sq, time.Now())
		} else {
			_ = r.red.Part(si, k, dst, time.Now())
		}
		r.dispatchLocked()
		r.mu.Unlock()
	}
	<-writerDone
	// Let the sender read the last part before the stream goes away.
	_ = s.SetReadDeadline(minTime(time.Now().Add(time.Second), r.deadline))
	_, _ = io.Copy(io.Discard, s)
}

func (a *Averager) waitRound(id [16]byte, until time.Time) *round {
	for {
		a.mu.Lock()
		r := a.rounds[id]
		ch := a.roundsCh
		a.mu.Unlock()
		if r != nil {
			return r
		}
		d := time.Until(until)
		if d <= 0 {
			return nil
		}
		t := time.NewTimer(d)
		select {
		case <-ch:
		case <-t.C:
		case <-a.ctx.Done():
			t.Stop()
			return nil
		}
		t.Stop()
	}
}

// mergeSpans sorts spans, merges neighbours with equal contributors and
// computes the fraction averaged with someone else.
func mergeSpans(in []Span, n int, self peer.ID) ([]Span, float64) {
	sortSpans(in)
	var out []Span
	averaged := 0
	for _, s := range in {
		if len(s.Contributors) > 1 {
			averaged += s.End - s.Start
		}
		if l := len(out); l > 0 && out[l-1].End == s.Start && sameIDs(out[l-1].Contributors, s.Contributors) {
			out[l-1].End = s.End
			continue
		}
		out = append(out, s)
	}
	_ = self
	if n == 0 {
		return out, 0
	}
	return out, float64(averaged) / float64(n)
}

func sameIDs(a, b []peer.ID) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func sortSpans(s []Span) {
	slices.SortFunc(s, func(a, b Span) int { return a.Start - b.Start })
}
