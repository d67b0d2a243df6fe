package averaging

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// heldJoin is an incoming join stream waiting for the matcher's answers.
type heldJoin struct {
	s       network.Stream
	replies chan envelope
}

const tickEvery = 10 * time.Millisecond

// match runs the matcher until it starts or joins a group, fails, or ctx ends.
// o's group size (WithGroupSize) overrides Config.TargetGroupSize when
// positive; its wanted peers and room (WithWanted) go to the matcher.
func (a *Averager) match(ctx context.Context, sess *session, gk groupKey, cands []peer.ID, o stepOpts) (*groupInfo, error) {
	a.connectAll(ctx, cands)
	now := time.Now()
	minSize := a.cfg.MinGroupSize
	target := o.groupSize
	if target <= 0 {
		target = a.cfg.TargetGroupSize
	}
	minSize = min(minSize, target)
	cfg := matchConfig{Self: a.h.ID(), Group: gk, Target: target, Min: minSize, Want: o.want, Room: o.room,
		Window: a.cfg.MatchWindow, ReqTimeout: a.cfg.RequestTimeout, Deadline: now.Add(a.cfg.MatchTimeout),
		VecLen: uint64(sess.vecLen), Bandwidth: a.cfg.Bandwidth, Client: a.cfg.ClientMode, Codec: sess.codec,
		PartSize: uint32(a.cfg.PartSize)}
	events := make(chan matchEvent, 256)
	sess.mu.Lock()
	sess.cands = make(map[peer.ID]bool, len(cands))
	for _, c := range cands {
		sess.cands[c] = true
	}
	sess.matchCh = events
	sess.mu.Unlock()

	var (
		wg       sync.WaitGroup
		outMu    sync.Mutex
		outgoing = map[peer.ID]network.Stream{} // our join streams
	)
	send := func(ev matchEvent) {
		select {
		case events <- ev:
		case <-sess.done:
		}
	}
	dial := func(to peer.ID, req joinRequest) {
		defer wg.Done()
		dctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
		s, err := a.h.NewStream(network.WithAllowLimitedConn(dctx, "averaging"), to, ProtoMatch)
		cancel()
		if err != nil {
			a.log.Debug("join request: no stream", "peer", to, "err", err)
			send(matchEvent{Kind: evRequestFailed, From: to})
			return
		}
		outMu.Lock()
		if old := outgoing[to]; old != nil {
			_ = old.Reset()
		}
		outgoing[to] = s
		outMu.Unlock()
		defer func() {
			outMu.Lock()
			if outgoing[to] == s {
				delete(outgoing, to)
			}
			outMu.Unlock()
			_ = s.Reset()
		}()
		_ = s.SetDeadline(time.Now().Add(a.cfg.RequestTimeout))
		if err := writeFrame(s, tJoin, req.marshal()); err != nil {
			send(matchEvent{Kind: evRequestFailed, From: to})
			return
		}
		t, b, err := readFrame(s, maxJoinFrame, nil)
		var rep joinReply
		if err == nil && t != tJoinReply {
			err = fmt.Errorf("%w: frame type %d, want join reply", errMalformed, t)
		}
		if err == nil {
			rep, err = unmarshalJoinReply(b)
		}
		if err != nil {
			a.refuseAnswer(to, ProtoMatch, err)
			send(matchEvent{Kind: evRequestFailed, From: to})
			return
		}
		send(matchEvent{Kind: evReply, From: to, Reply: rep})
		if rep.Status != joinAccepted {
			return
		}
		// Following: wait for the leader's proposal, then the final list.
		_ = s.SetDeadline(time.Now().Add(a.cfg.MatchWindow + 3*a.cfg.RequestTimeout))
		for {
			t, b, err = readFrame(s, maxGroupFrame, nil)
			switch {
			case err != nil:
				a.refuseAnswer(to, ProtoMatch, err)
				send(matchEvent{Kind: evRequestFailed, From: to})
				return
			case t == tBegin || t == tStart:
				g, err := unmarshalGroupInfo(b)
				if err == nil {
					err = a.checkGroup(&g, sess.vecLen, sess.codec)
				}
				if err != nil {
					a.refuseErr(to, ProtoMatch, err)
					send(matchEvent{Kind: evRequestFailed, From: to})
					return
				}
				if t == tStart {
					send(matchEvent{Kind: evStart, From: to, Group: g})
					return
				}
				send(matchEvent{Kind: evBegin, From: to, Group: g})
			case t == tDisband:
				redirect, err := unmarshalDisband(b)
				if err != nil {
					a.refuseErr(to, ProtoMatch, err)
					send(matchEvent{Kind: evRequestFailed, From: to})
					return
				}
				send(matchEvent{Kind: evDisband, From: to, Redirect: redirect})
				return
			default:
				a.refuse(to, ProtoMatch, reasonMalformed, fmt.Errorf("%w: frame type %d from leader", errMalformed, t))
				send(matchEvent{Kind: evRequestFailed, From: to})
				return
			}
		}
	}

	m := newMatcher(cfg, cands, a.seedRNG(), now)
	ticker := time.NewTicker(tickEvery)
	defer ticker.Stop()
	step := func(ev matchEvent) {
		if a.log.Enabled(ctx, slog.LevelDebug) {
			a.log.Debug("match in", "kind", ev.Kind, "from", shortID(ev.From), "status", ev.Reply.Status.String(), "ok", ev.OK)
		}
		m.Step(ev)
	}
	var err error
loop:
	for {
		for _, env := range m.ready() {
			if a.log.Enabled(ctx, slog.LevelDebug) {
				a.log.Debug("match out", "kind", env.Kind, "to", shortID(env.To), "status", env.Reply.Status.String(), "ok", env.OK)
			}
			switch env.Kind {
			case outJoin:
				wg.Add(1)
				go dial(env.To, env.Join)
			case outReply, outBegin, outStart, outDisband:
				sess.mu.Lock()
				hj := sess.held[env.To]
				sess.mu.Unlock()
				if hj != nil {
					select {
					case hj.replies <- env:
					default: // the handler is gone or saturated; it will time out
					}
				}
			case outLeave:
				outMu.Lock()
				if s := outgoing[env.To]; s != nil {
					_ = s.Reset()
				}
				outMu.Unlock()
			case outAck:
				outMu.Lock()
				if s := outgoing[env.To]; s != nil {
					ack := []byte{0}
					if env.OK {
						ack[0] = 1
					}
					_ = writeFrame(s, tAck, ack) // small: does not block on a live stream
				}
				outMu.Unlock()
			}
		}
		if m.finished() {
			break
		}
		select {
		case ev := <-events:
			step(ev)
		case t := <-ticker.C:
			// Events already queued come before the deadlines this tick may
			// pass: a process the CPU starved wakes to both at once, and
			// select picks between them at random. A follower that took the
			// tick first would leave a leader whose start was already
			// queued, and the group would run with it as a member while it
			// is left out. Only those queued now: a stream of joins cannot
			// hold the deadlines off.
			for n := len(events); n > 0; n-- {
				step(<-events)
			}
			m.Tick(t)
		case <-ctx.Done():
			err = ctx.Err()
			break loop
		}
	}
	sess.mu.Lock()
	sess.matchCh = nil
	sess.matched = true
	close(sess.done)
	sess.mu.Unlock()
	a.mu.Lock()
	a.past[gk.Key] = max(a.past[gk.Key], gk.Round+1)
	a.mu.Unlock()
	outMu.Lock()
	for _, s := range outgoing {
		_ = s.Reset()
	}
	outMu.Unlock()
	wg.Wait()
	if m.group != nil && ctx.Err() == nil {
		a.met.groupSize.Observe(float64(len(m.group.Members)))
		return m.group, nil
	}
	switch {
	case err != nil:
	case m.leftOut:
		err = fmt.Errorf("%w (%s after %d attempts)", ErrLeftOut, m.failReason, m.attempts)
	default:
		err = fmt.Errorf("%s after %d attempts", m.failReason, m.attempts)
	}
	return nil, err
}

// handleJoin serves a join request: it hands the request to the running
// step's matcher and relays its answers on the stream.
func (a *Averager) handleJoin(s network.Stream) {
	defer s.Reset()
	from := s.Conn().RemotePeer()
	_ = s.SetDeadline(time.Now().Add(a.cfg.RequestTimeout))
	t, b, err := readFrame(s, maxJoinFrame, nil)
	if err == nil && t != tJoin {
		err = fmt.Errorf("%w: frame type %d, want join", errMalformed, t)
	}
	var req joinRequest
	if err == nil {
		req, err = unmarshalJoinRequest(b)
	}
	if err != nil {
		a.log.Debug("join stream: bad request", "peer", from, "err", err)
		a.refuseErr(from, ProtoMatch, err)
		return
	}
	reject := func(st joinStatus) {
		r := joinReply{Status: st}
		_ = writeFrame(s, tJoinReply, r.marshal())
		_ = s.CloseWrite()
	}
	if err := a.checkJoin(req, time.Now()); err != nil {
		a.refuseErr(from, ProtoMatch, err)
		reject(rejectMismatch)
		return
	}
	a.mu.Lock()
	sess := a.sessions[req.Group.Key]
	past := req.Group.Round < a.past[req.Group.Key]
	a.mu.Unlock()
	if sess == nil || sess.round != req.Group.Round {
		if past {
			// Our matchmaking for the round is over: the joiner was left
			// out of it (and learns so at once, not at its deadline).
			reject(rejectGrouped)
			return
		}
		reject(rejectNotLooking)
		return
	}
	hj := &heldJoin{s: s, replies: make(chan envelope, 4)}
	sess.mu.Lock()
	ch := sess.matchCh
	if ch == nil {
		matched := sess.matched
		sess.mu.Unlock()
		if matched {
			reject(rejectGrouped) // this step is past matchmaking for the round
		} else {
			reject(rejectNotLooking) // not started yet
		}
		return
	}
	if !sess.cands[from] {
		sess.mu.Unlock()
		// Not one of the peers this step may group with (for a trainer: not a
		// holder of the shard as far as we know): it may not become a member,
		// whatever it declares. Counted at most once a minute per peer, since
		// an honest holder our records do not show yet asks every step.
		a.refuseNotCandidate(from, req.Group)
		reject(rejectWrongKey)
		return
	}
	if sess.held[from] == nil && len(sess.held) >= maxHeld {
		sess.mu.Unlock()
		reject(rejectFull) // a crowd of joiners: not this one's fault alone
		return
	}
	sess.held[from] = hj
	sess.mu.Unlock()
	defer func() {
		sess.mu.Lock()
		if sess.held[from] == hj {
			delete(sess.held, from)
		}
		sess.mu.Unlock()
	}()
	select {
	case ch <- matchEvent{Kind: evJoin, From: from, Join: req}:
	case <-sess.done:
		return
	}
	gone := make(chan struct{})
	watching := false
	for {
		select {
		case env := <-hj.replies:
			switch env.Kind {
			case outReply:
				if err := writeFrame(s, tJoinReply, env.Reply.marshal()); err != nil {
					a.notifyGone(sess, from)
					return
				}
				if env.Reply.Status != joinAccepted {
					_ = s.CloseWrite()
					return
				}
				_ = s.SetDeadline(time.Now().Add(a.cfg.MatchWindow + 3*a.cfg.RequestTimeout))
				if !watching {
					watching = true
					go func() { // the follower's acks; its stream closing means it left
						defer close(gone)
						for {
							t, b, err := readFrame(s, 16, nil)
							if err != nil || t != tAck || len(b) != 1 {
								return
							}
							a.sendMatch(sess, matchEvent{Kind: evAck, From: from, OK: b[0] == 1})
						}
					}()
				}
			case outBegin:
				if err := writeFrame(s, tBegin, env.Group.marshal()); err != nil {
					a.notifyGone(sess, from)
					return
				}
			case outStart:
				_ = writeFrame(s, tStart, env.Group.marshal())
				_ = s.CloseWrite()
				a.drainRead(s, gone, watching)
				return
			case outDisband:
				_ = writeFrame(s, tDisband, marshalDisband(env.Redirect))
				_ = s.CloseWrite()
				a.drainRead(s, gone, watching)
				return
			}
		case <-gone:
			a.notifyGone(sess, from)
			return
		case <-sess.done:
			if len(hj.replies) > 0 {
				continue // answers queued before matchmaking ended go out first
			}
			return
		case <-a.ctx.Done():
			return
		}
	}
}

// drainRead waits briefly for the follower to read our last frame and close.
func (a *Averager) drainRead(s network.Stream, gone chan struct{}, watching bool) {
	if !watching {
		return
	}
	select {
	case <-gone:
	case <-time.After(a.cfg.RequestTimeout):
		_ = s.Reset()
		<-gone
	}
}

// refuseAnswer refuses a bad answer to a stream we opened on proto; a peer
// that is slow or gone is not refused (it only costs us the request).
func (a *Averager) refuseAnswer(to peer.ID, proto string, err error) {
	if reasonFor(err) != reasonStall {
		a.refuseErr(to, proto, err)
	}
}

func (a *Averager) notifyGone(sess *session, from peer.ID) {
	a.sendMatch(sess, matchEvent{Kind: evFollowerGone, From: from})
}

func (a *Averager) sendMatch(sess *session, ev matchEvent) {
	sess.mu.Lock()
	ch := sess.matchCh
	sess.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case ch <- ev:
	case <-sess.done:
	}
}

func shortID(p peer.ID) string {
	s := p.String()
	if len(s) > 6 {
		return s[len(s)-6:]
	}
	return s
}

// connectAll connects to every candidate not yet connected, in parallel, for
// at most half a matchmaking window. Matchmaking asks candidates one at a
// time with a short timeout; that timeout should not have to cover a first
// connection (handshake and identify) to each in turn.
func (a *Averager) connectAll(ctx context.Context, cands []peer.ID) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.MatchWindow/2)
	defer cancel()
	var wg sync.WaitGroup
	for _, c := range cands {
		if c == a.h.ID() || a.h.Network().Connectedness(c) == network.Connected {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.h.Connect(ctx, peer.AddrInfo{ID: c}); err != nil {
				a.log.Debug("cannot connect to candidate", "peer", c, "err", err)
			}
		}()
	}
	wg.Wait()
}
