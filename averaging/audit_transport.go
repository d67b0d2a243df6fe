package averaging

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/fvec"
	"github.com/swarm-train/swarm/internal/guard"
)

// The transport of reducer audits (audit.go): an auditRound per group,
// registered from the start of the all-reduce (a fast reducer's commitment
// may arrive while we still reduce) until the audit phase ends. Every
// message is its own stream on ProtoAudit: a commitment, a request answered
// by a claim and its inputs, or a report followed by its evidence.

// auditStreamsPerPeer: a commitment, a report and AuditParts requests may
// be open at once.
const auditStreamsPerPeer = 4 + maxAuditParts

// auditPoll is how often a wait of the audit looks at its members'
// connections.
const auditPoll = 100 * time.Millisecond

// maxClaimFrame bounds a claim: a group of MaxGroupSize contributors with a
// weight and a digest each, and a signature.
const maxClaimFrame = 64 + MaxGroupSize*40 + 64 + maxSigLen

type auditRound struct {
	g     *groupInfo
	self  int
	lay   layout
	codec Codec
	sign  func([]byte) ([]byte, error)

	mu        sync.Mutex
	book      *auditBook
	red       *reducer      // ours, read only once ready is closed
	ready     chan struct{} // closed when our round is over
	changed   chan struct{} // closed and replaced when a commitment or report arrives
	deadline  time.Time     // end of the audit phase (zero until our round is over)
	commit    *commitment   // ours; nil if we reduce nothing
	draw      *drawState    // whether the round is audited (nil: every round is)
	closed    bool          // the audit is over: the vector is the caller's again
	claims    map[int]*servedClaim
	served    []int  // audit requests answered, per member
	reporting []bool // reports being taken or taken, per member
	reported  []bool // reports taken (with their evidence), per member
	// Claims being written: the round's buffers stay ours until they are
	// done; closing resets their streams.
	serving sync.WaitGroup
	writing map[network.Stream]bool
}

// servedClaim is our claim of one of our parts, built on the first request.
type servedClaim struct {
	frame  []byte
	inputs [][]float32
}

func (a *Averager) openAudit(g *groupInfo, self int, lay layout, codec Codec, agg reduceOpts, orig []float32) *auditRound {
	n := len(g.Members)
	au := &auditRound{g: g, self: self, lay: lay, codec: codec, sign: a.key.Sign,
		book:  newAuditBook(g.ID, self, g.ids(), lay, codec, agg, orig, verifySig),
		ready: make(chan struct{}), changed: make(chan struct{}), claims: map[int]*servedClaim{}, writing: map[network.Stream]bool{},
		served: make([]int, n), reporting: make([]bool, n), reported: make([]bool, n)}
	if a.draws() {
		au.draw = newDrawState(n)
	}
	a.mu.Lock()
	a.audits[g.ID] = au
	close(a.roundsCh)
	a.roundsCh = make(chan struct{})
	a.mu.Unlock()
	return au
}

func (a *Averager) closeAudit(id [16]byte) {
	a.mu.Lock()
	delete(a.audits, id)
	a.mu.Unlock()
}

// verifySig checks sig over data with p's public key (taken from its ID:
// libp2p's Ed25519 and secp256k1 IDs embed it).
func verifySig(p peer.ID, data, sig []byte) bool {
	pub, err := p.ExtractPublicKey()
	if err != nil {
		return false
	}
	ok, err := pub.Verify(data, sig)
	return err == nil && ok
}

// canSign reports whether k can sign and others can check it from our ID.
func canSign(k crypto.PrivKey, id peer.ID) error {
	if k == nil {
		return errors.New("the host has no private key")
	}
	sig, err := k.Sign([]byte("probe"))
	if err != nil {
		return err
	}
	if !verifySig(id, []byte("probe"), sig) {
		return fmt.Errorf("peer ID %s does not embed its public key (use an Ed25519 or secp256k1 identity)", id)
	}
	return nil
}

// signal wakes whoever waits for a commitment or report. au.mu held.
func (au *auditRound) signal() {
	close(au.changed)
	au.changed = make(chan struct{})
}

// roundOver records our round's outcome and, if we reduced parts, builds
// and signs our commitment (none if signing fails: then nobody trusts our
// share, which is all the harm).
func (au *auditRound) roundOver(vec []float32, recv [][]bitset, red *reducer, deadline time.Time) error {
	var c *commitment
	var err error
	if parts := au.lay.Parts[au.self]; len(parts) > 0 {
		c = &commitment{Group: au.g.ID, Reducer: uint16(au.self), Parts: make([]digest, len(parts))}
		for k, sp := range parts {
			c.Parts[k] = partDigest(au.g.ID, au.self, k, red.contrib[k], vec[sp.Start:sp.End])
		}
		if c.Sig, err = au.sign(commitSigned(au.g.ID, c.Reducer, c.root())); err != nil {
			c, err = nil, fmt.Errorf("sign commitment: %w", err)
		}
	}
	au.mu.Lock()
	au.book.ready(vec, recv)
	au.red, au.commit, au.deadline = red, c, deadline
	close(au.ready)
	au.mu.Unlock()
	return err
}

// afterAudit runs the audit of round r and applies what it shows: the
// shares of convicted and unaudited reducers go back to our own values,
// the convicted are banned and reported.
func (a *Averager) afterAudit(ctx context.Context, r *round, au *auditRound, spans []Span, excluded map[peer.ID]string) ([]Span, []Accusation, int, int, bool) {
	if f := a.faults.beforeAudit; f != nil {
		f()
	}
	if au.draw != nil {
		// Members whose parts or results we hold: their seeds must count.
		took := make([]bool, len(r.g.Members))
		for j := range took {
			took[j] = r.red.status[j] == sDone || (r.recv != nil && r.recv[j] != nil)
		}
		now := time.Now()
		audited, why := a.drawRound(au, took, now.Add(a.cfg.AuditTimeout/8), now.Add(a.cfg.AuditTimeout/4))
		a.met.audits.WithLabelValues(map[bool]string{true: "audited", false: "skipped"}[audited]).Inc()
		if !audited {
			a.skipAudit(r, au)
			return spans, nil, 0, 0, false
		}
		a.log.Debug("round audited", "group", fmt.Sprintf("%x", au.g.ID), "why", why)
	}
	if err := au.roundOver(r.res, r.recv, r.red, time.Now().Add(a.cfg.AuditTimeout)); err != nil {
		a.log.Warn("audit: no commitment of our share", "err", err)
	}
	a.auditPhase(ctx, au)
	au.mu.Lock()
	au.closed = true
	vs := au.book.verdicts()
	audits, checks := au.book.Audits, au.book.Checks
	for s := range au.writing {
		_ = s.Reset()
	}
	au.mu.Unlock()
	au.serving.Wait() // no claim is still being written from the round's buffers
	au.mu.Lock()
	for _, o := range au.book.obtained { // our audits' inputs: nothing reads them now
		for _, x := range o.inputs {
			a.pool.put(x)
		}
	}
	au.book.obtained = nil
	au.mu.Unlock()
	self := r.g.Members[r.self].ID
	var accused []Accusation
	untrusted := make([]bool, len(r.g.Members))
	for _, v := range vs {
		untrusted[v.Reducer] = true
		p := r.g.Members[v.Reducer].ID
		sh := r.lay.Shares[v.Reducer]
		spans = slices.DeleteFunc(spans, func(s Span) bool { return s.Start >= sh.Start && s.Start < sh.End })
		spans = append(spans, Span{sh.Start, sh.End, []peer.ID{self}})
		if v.Accused == nil {
			excluded[p] = "as reducer: unaudited: " + v.Unaudited
			a.met.failures.WithLabelValues("reducer_unaudited").Inc()
			a.log.Info("reducer unaudited; its share stays local", "peer", p, "reason", v.Unaudited)
			continue
		}
		ac := *v.Accused
		accused = append(accused, ac)
		excluded[p] = "as reducer: " + ac.String()
		a.met.failures.WithLabelValues("reducer_lied").Inc()
		if a.cfg.Refusals != nil {
			a.cfg.Refusals.BanFor(p, ac.Rule, errors.New(ac.String())) // logs the evidence once
		} else {
			a.log.Warn("reducer shown to lie; its share stays local", "peer", p, "evidence", ac.String())
		}
	}
	r.takeResults(untrusted)
	if f := a.cfg.OnAccusation; f != nil {
		for _, ac := range accused {
			f(ac)
		}
	}
	return spans, accused, audits, checks, true
}

// takeResults copies the results received from every reducer (and our
// own) into our vector, except those of the untrusted (nil: all trusted),
// where our values stay.
func (r *round) takeResults(untrusted []bool) {
	for j, parts := range r.lay.Parts {
		if untrusted != nil && untrusted[j] {
			continue
		}
		for k, sp := range parts {
			if j == r.self || r.recv[j] != nil && r.recv[j][k] != nil {
				copy(r.vec[sp.Start:sp.End], r.res[sp.Start:sp.End])
			}
		}
	}
}

// auditPhase runs our side of the audit after the round: commitments out,
// checks and audits of the reducers we received from, our report out, the
// others' reports in. It returns when every member we expect has reported
// or at the deadline.
func (a *Averager) auditPhase(ctx context.Context, au *auditRound) {
	start := time.Now()
	ctx, cancel := context.WithDeadline(ctx, au.deadline)
	defer cancel()
	span := au.deadline.Sub(start)
	commitBy, auditBy := start.Add(span/3), start.Add(2*span/3)
	n := len(au.g.Members)

	var wg sync.WaitGroup
	if au.commit != nil {
		cm := au.commit.marshal()
		faulty := a.faults.equivocate
		for j := range n {
			if j == au.self {
				continue
			}
			msg := cm
			if faulty && j == lastOther(n, au.self) {
				msg = equivocated(au)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.sendAudit(ctx, au.g.Members[j].ID, commitBy, func(s network.Stream) error {
					return writeFrame(s, tCommit, msg)
				})
			}()
		}
	}
	// The commitments of the reducers we received parts from (while they
	// are connected: a member that died after the round sends nothing).
	au.waitFor(commitBy, func() bool {
		for j := range n {
			if j != au.self && au.book.receivedAny(j) && au.book.commits[j] == nil && a.connected(au.g.Members[j].ID) {
				return false
			}
		}
		return true
	})
	rng := a.seedRNG()
	au.mu.Lock()
	checks, audits := au.book.plan(rng, a.cfg.AuditParts)
	for _, c := range checks {
		au.book.checkOutput(c.Reducer, c.Part)
	}
	au.mu.Unlock()
	for _, p := range audits {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.audit(ctx, au, p, auditBy)
		}()
	}
	wg.Wait()

	au.mu.Lock()
	rep, evidence := au.book.report()
	if a.faults.falseAccuse {
		rep, evidence = falseReport(au.book)
	}
	au.mu.Unlock()
	rb := rep.marshal()
	for j := range n {
		if j == au.self {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.sendAudit(ctx, au.g.Members[j].ID, au.deadline, func(s network.Stream) error {
				if err := writeFrame(s, tReport, rb); err != nil {
					return err
				}
				for _, inputs := range evidence {
					for _, x := range inputs {
						if err := writeFrame(s, tAuditInput, rawOrLE(x)); err != nil {
							return err
						}
					}
				}
				return nil
			})
		}()
	}
	// Reports from every member that took part in the round with us and
	// is still connected.
	au.waitFor(au.deadline, func() bool {
		for j := range n {
			if j != au.self && !au.reported[j] && au.alive(j) && a.connected(au.g.Members[j].ID) {
				return false
			}
		}
		return true
	})
	wg.Wait()
}

// alive reports whether member j took part in our round far enough that
// we wait for its report. au.mu held.
func (au *auditRound) alive(j int) bool {
	return au.book.commits[j] != nil || au.book.receivedAny(j) || (au.red != nil && au.red.status[j] == sDone)
}

// connected reports whether we hold a connection to p.
func (a *Averager) connected(p peer.ID) bool {
	return a.h.Network().Connectedness(p) == network.Connected
}

// waitFor waits until done (called with au.mu held) or until, looking
// again at least every auditPoll (done may depend on connections).
func (au *auditRound) waitFor(until time.Time, done func() bool) {
	for {
		au.mu.Lock()
		ok, ch := done(), au.changed
		au.mu.Unlock()
		d := time.Until(until)
		if ok || d <= 0 {
			return
		}
		t := time.NewTimer(min(d, auditPoll))
		select {
		case <-ch:
		case <-t.C:
		}
		t.Stop()
	}
}

// sendAudit opens an audit stream to p and writes with write, without
// waiting for p to read it (a slow member must not hold up our step);
// failures are the receiver's loss (it will not have our message).
func (a *Averager) sendAudit(ctx context.Context, p peer.ID, by time.Time, write func(network.Stream) error) {
	ctx, cancel := context.WithDeadline(ctx, by)
	defer cancel()
	s, err := a.h.NewStream(network.WithAllowLimitedConn(ctx, "averaging"), p, ProtoAudit)
	if err != nil {
		a.log.Debug("audit: no stream", "peer", p, "err", err)
		return
	}
	_ = s.SetDeadline(by)
	if err := write(s); err != nil {
		a.log.Debug("audit: send failed", "peer", p, "err", err)
		_ = s.Reset()
		return
	}
	_ = s.Close() // what was written is delivered; we read nothing back
}

// audit asks reducer p.Reducer for its claim and inputs of part p.Part and
// checks them. A reducer that does not answer is not trusted this round.
func (a *Averager) audit(ctx context.Context, au *auditRound, p partRef, by time.Time) {
	to := au.g.Members[p.Reducer].ID
	c, inputs, err := a.fetchClaim(ctx, au, p, by)
	au.mu.Lock()
	if err == nil {
		var wrong bool
		wrong, err = au.book.checkClaim(p.Reducer, &c, inputs, fromAudit)
		if err == nil {
			au.book.obtained = append(au.book.obtained, obtained{claim: c, inputs: inputs, wrong: wrong})
		}
	}
	if err != nil {
		au.book.distrust(p.Reducer, fmt.Sprintf("audit of part %d: %v", p.Part, err))
	}
	au.mu.Unlock()
	if err != nil {
		a.log.Info("audit: reducer unaudited; its share stays local", "peer", to, "part", p.Part, "err", err)
		if reasonFor(err) != reasonStall { // slow or gone is not a lie
			a.refuseAudit(to, err)
		}
	}
}

// fetchClaim requests reducer p.Reducer's claim and inputs of part p.Part.
func (a *Averager) fetchClaim(ctx context.Context, au *auditRound, p partRef, by time.Time) (claim, [][]float32, error) {
	ctx, cancel := context.WithDeadline(ctx, by)
	defer cancel()
	s, err := a.h.NewStream(network.WithAllowLimitedConn(ctx, "averaging"), au.g.Members[p.Reducer].ID, ProtoAudit)
	if err != nil {
		return claim{}, nil, fmt.Errorf("open stream: %w", err)
	}
	defer s.Reset()
	_ = s.SetDeadline(by)
	req := auditReq{Group: au.g.ID, Part: uint32(p.Part)}
	if err := writeFrame(s, tAuditReq, req.marshal()); err != nil {
		return claim{}, nil, fmt.Errorf("write request: %w", err)
	}
	_ = s.CloseWrite()
	t, b, err := readFrame(s, maxClaimFrame, nil)
	if err == nil && t != tClaim {
		err = fmt.Errorf("%w: frame type %d, want claim", errMalformed, t)
	}
	var c claim
	if err == nil {
		c, err = unmarshalClaim(b)
	}
	if err == nil && (int(c.Reducer) != p.Reducer || int(c.Part) != p.Part) {
		err = fmt.Errorf("%w: claim of reducer %d part %d, asked %d %d", errMalformed, c.Reducer, c.Part, p.Reducer, p.Part)
	}
	if err != nil {
		return c, nil, err
	}
	sp := au.lay.Parts[p.Reducer][p.Part]
	inputs, err := readInputs(s, len(c.Weights), sp.End-sp.Start, &a.pool, nil)
	return c, inputs, err
}

// readInputs reads count tAuditInput frames of exactly n values each, into
// buffers from pool (nil: fresh ones), straight from the stream; each must
// pass check (if not nil) before the next is read. On an error the buffers
// taken so far go back to pool.
func readInputs(r io.Reader, count, n int, pool *vecPool, check func(i int, x []float32) error) (inputs [][]float32, err error) {
	inputs = make([][]float32, 0, count)
	defer func() {
		if err != nil {
			for _, x := range inputs {
				pool.put(x)
			}
			inputs = nil
		}
	}()
	var buf []byte
	for i := range count {
		var hdr [5]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return inputs, fmt.Errorf("input %d: %w", i, err)
		}
		if t, size := msgType(hdr[0]), binary.BigEndian.Uint32(hdr[1:]); t != tAuditInput || uint64(size) != uint64(4*n) {
			return inputs, fmt.Errorf("%w: input %d: frame type %d of %d bytes, want %d", errMalformed, i, t, size, 4*n)
		}
		x := pool.get(n)
		inputs = append(inputs, x)
		if littleEndian {
			_, err = io.ReadFull(r, rawBytes(x))
		} else {
			buf = slices.Grow(buf[:0], 4*n)[:4*n]
			if _, err = io.ReadFull(r, buf); err == nil {
				err = CodecNone.Decode(x, buf)
			}
		}
		if err == nil {
			if j := fvec.FirstNonFinite(x); j >= 0 {
				err = fmt.Errorf("%w: value %d is %v", errNotFinite, j, x[j])
			}
		}
		if err != nil {
			return inputs, fmt.Errorf("input %d: %w", i, err)
		}
		if check != nil {
			if err := check(i, x); err != nil {
				return inputs, err
			}
		}
	}
	return inputs, nil
}

// rawOrLE is x as little-endian bytes.
func rawOrLE(x []float32) []byte {
	if littleEndian {
		return rawBytes(x)
	}
	return CodecNone.Encode(nil, x)
}

func (a *Averager) waitAudit(id [16]byte, until time.Time) *auditRound {
	for {
		a.mu.Lock()
		au := a.audits[id]
		ch := a.roundsCh
		a.mu.Unlock()
		if au != nil {
			return au
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

// handleAudit serves one audit message: a commitment, a request for a
// claim, or a report. Every audit payload starts with the wire version and
// the group, read first: the frame's limit depends on the group.
func (a *Averager) handleAudit(s network.Stream) {
	defer s.Reset()
	from := s.Conn().RemotePeer()
	_ = s.SetDeadline(time.Now().Add(a.cfg.AuditTimeout))
	var head [5 + 18]byte
	if _, err := io.ReadFull(s, head[:]); err != nil {
		a.refuseErr(from, ProtoAudit, err)
		return
	}
	t, size := msgType(head[0]), binary.BigEndian.Uint32(head[1:5])
	var group [16]byte
	copy(group[:], head[7:])
	if size < 18 {
		a.refuse(from, ProtoAudit, reasonMalformed, fmt.Errorf("%w: audit frame of %d bytes", errMalformed, size))
		return
	}
	au := a.waitAudit(group, time.Now().Add(a.cfg.SenderTimeout))
	if au == nil {
		a.log.Debug("audit stream: unknown group", "peer", from)
		return
	}
	j := au.g.index(from)
	if j < 0 || j == au.self {
		a.refuse(from, ProtoAudit, reasonNotMember, fmt.Errorf("audit message from a peer not in group %x", group))
		return
	}
	if limit := au.frameLimit(t); uint64(size) > uint64(limit) {
		a.refuse(from, ProtoAudit, reasonOversize, fmt.Errorf("%w: audit frame type %d of %d bytes (limit %d)", errFrameTooBig, t, size, limit))
		return
	}
	rest, err := guard.ReadFull(s, int(size)-18)
	if err != nil {
		a.refuseErr(from, ProtoAudit, err)
		return
	}
	b := append(head[5:], rest...)
	switch t {
	case tCommit:
		err = a.takeCommit(au, j, b)
	case tAuditReq:
		err = a.serveClaim(s, au, j, b)
	case tReport:
		err = a.takeReport(s, au, j, b)
	case tSeedHash, tSeed:
		err = a.takeSeed(au, j, t, b)
	default:
		err = fmt.Errorf("%w: audit frame type %d", errMalformed, t)
	}
	if errors.Is(err, errRefused) {
		return
	}
	if err != nil {
		a.log.Debug("audit stream: refused", "peer", from, "err", err)
		a.refuseAudit(from, err)
		return
	}
	_ = s.CloseWrite()
	_ = s.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.Copy(io.Discard, s)
}

// frameLimit is the largest payload of an audit message of type t here.
func (au *auditRound) frameLimit(t msgType) int {
	switch t {
	case tCommit:
		return 2 + 16 + 2 + 4 + 32*longestList(au.lay.Parts) + 2 + maxSigLen
	case tAuditReq:
		return 2 + 16 + 4
	case tReport:
		return maxReportFrame(len(au.g.Members))
	case tSeedHash, tSeed:
		return seedFrame
	}
	return 18
}

// longestList is the most parts any member reduces.
func longestList(parts [][]span) int {
	n := 0
	for _, p := range parts {
		n = max(n, len(p))
	}
	return n
}

// errRefused: the message was refused (and counted) where it was read.
var errRefused = errors.New("audit message refused")

// refuseAudit refuses p's audit message for what err says it was.
func (a *Averager) refuseAudit(p peer.ID, err error) {
	switch {
	case errors.Is(err, errForged):
		a.refuse(p, ProtoAudit, reasonForged, err)
	case errors.Is(err, errFalse):
		a.refuse(p, ProtoAudit, reasonFalse, err)
	case errors.Is(err, errFlood):
		a.refuse(p, ProtoAudit, reasonFlood, err)
	case errors.Is(err, errBadSeed):
		a.refuse(p, ProtoAudit, reasonBadSeed, err)
	default:
		a.refuseErr(p, ProtoAudit, err)
	}
}

// maxReportFrame bounds a report of a group of n members.
func maxReportFrame(n int) int {
	return 64 + n*(2+32+2+maxSigLen) + maxAuditParts*(3+maxClaimFrame)
}

func (a *Averager) takeCommit(au *auditRound, j int, b []byte) error {
	c, err := unmarshalCommitment(b)
	if err != nil {
		return err
	}
	au.mu.Lock()
	defer au.mu.Unlock()
	if au.closed {
		return nil
	}
	if err := au.book.addCommit(j, c); err != nil {
		return err
	}
	au.signal()
	return nil
}

// serveClaim answers member j's request for our claim and inputs of a part.
func (a *Averager) serveClaim(s network.Stream, au *auditRound, j int, b []byte) error {
	req, err := unmarshalAuditReq(b)
	if err != nil {
		return err
	}
	select {
	case <-au.ready:
	default:
		return nil // our round is not over: nothing to claim yet (not the asker's fault)
	}
	au.mu.Lock()
	k := int(req.Part)
	switch {
	case au.closed:
		au.mu.Unlock()
		return nil
	case au.commit == nil || k >= len(au.lay.Parts[au.self]):
		au.mu.Unlock()
		return fmt.Errorf("%w: audit of part %d, we reduce %d", errOutOfRange, k, len(au.lay.Parts[au.self]))
	case au.served[j] >= a.cfg.AuditParts:
		au.mu.Unlock()
		return fmt.Errorf("%w: more than %d audit requests in one round", errFlood, a.cfg.AuditParts)
	}
	au.served[j]++
	sc := au.claims[k]
	if sc == nil {
		contrib, xs, ws := au.red.kept(k)
		c := claim{Group: au.g.ID, Reducer: uint16(au.self), Part: uint32(k), Contributors: contrib.clone(),
			Weights: ws, Output: au.commit.Parts[k]}
		for _, x := range xs {
			c.Inputs = append(c.Inputs, inputDigest(x))
		}
		if f := a.faults.lieClaim; f != nil {
			f(&c)
		}
		sig, err := au.sign(c.signed())
		if err != nil {
			au.mu.Unlock()
			return nil // ours to fix, not the asker's
		}
		c.Sig = sig
		sc = &servedClaim{frame: c.marshal(), inputs: xs}
		au.claims[k] = sc
	}
	au.serving.Add(1)
	au.writing[s] = true
	au.mu.Unlock()
	defer func() {
		au.mu.Lock()
		delete(au.writing, s)
		au.mu.Unlock()
		au.serving.Done()
	}()
	_ = s.SetWriteDeadline(time.Now().Add(a.cfg.AuditTimeout))
	if err := writeFrame(s, tClaim, sc.frame); err != nil {
		return nil
	}
	for _, x := range sc.inputs {
		if err := writeFrame(s, tAuditInput, rawOrLE(x)); err != nil {
			return nil
		}
	}
	return nil
}

// takeReport checks member j's report and the evidence that follows it.
func (a *Averager) takeReport(s network.Stream, au *auditRound, j int, b []byte) (err error) {
	rep, err := unmarshalAuditReport(b, len(au.g.Members), maxAuditParts)
	if err != nil {
		return err
	}
	if rep.Group != au.g.ID || int(rep.From) != j {
		return fmt.Errorf("%w: report for another group or member", errMalformed)
	}
	// Our round must be over to check claims against what we received.
	t := time.NewTimer(a.cfg.AuditTimeout)
	select {
	case <-au.ready:
	case <-t.C:
		return nil // we are too slow to use it: not the reporter's fault
	}
	t.Stop()
	au.mu.Lock()
	if au.closed {
		au.mu.Unlock()
		return nil
	}
	if au.reporting[j] {
		au.mu.Unlock()
		return fmt.Errorf("%w: a second report in one round", errFlood)
	}
	au.reporting[j] = true
	defer func() { // taken, evidence and all: the audit may end
		if err != nil {
			// Refused before the report counts as taken: once it does,
			// our round may end and show its refusals.
			a.log.Debug("audit stream: refused", "peer", au.g.Members[j].ID, "err", err)
			a.refuseAudit(au.g.Members[j].ID, err)
			err = errRefused
		}
		au.mu.Lock()
		au.reported[j] = true
		au.signal()
		au.mu.Unlock()
	}()
	var ferr error
	for _, r := range rep.Roots {
		if err := au.book.noteRoot(j, r); err != nil && ferr == nil {
			ferr = err
		}
	}
	for i := range rep.Claims {
		if _, err := au.book.checkClaim(j, &rep.Claims[i].Claim, nil, fromReport); err != nil && ferr == nil {
			ferr = err
		}
	}
	au.mu.Unlock()
	if ferr != nil {
		return ferr
	}
	for i := range rep.Claims {
		rc := &rep.Claims[i]
		if !rc.Evidence {
			continue
		}
		sp := au.lay.Parts[rc.Claim.Reducer][rc.Claim.Part] // checked by checkClaim
		// Each input must be one the reducer signed for: reading stops at
		// the first that is not (a reporter cannot make us hold more).
		inputs, err := readInputs(s, len(rc.Claim.Weights), sp.End-sp.Start, nil, func(i int, x []float32) error {
			if inputDigest(x) != rc.Claim.Inputs[i] {
				return fmt.Errorf("%w: evidence input %d is not the one reducer %d signed for", errFalse, i, rc.Claim.Reducer)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("evidence of reducer %d part %d: %w", rc.Claim.Reducer, rc.Claim.Part, err)
		}
		au.mu.Lock()
		if !au.closed {
			_, err = au.book.checkClaim(j, &rc.Claim, inputs, fromEvidence)
		}
		au.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// lastOther is the highest member index other than self.
func lastOther(n, self int) int {
	if self == n-1 {
		return n - 2
	}
	return n - 1
}

// equivocated is our commitment with its first part's digest changed,
// signed (faults.equivocate).
func equivocated(au *auditRound) []byte {
	c := *au.commit
	c.Parts = append([]digest(nil), c.Parts...)
	c.Parts[0][0] ^= 1
	c.Sig, _ = au.sign(commitSigned(c.Group, c.Reducer, c.root()))
	return c.marshal()
}

// falseReport is our report with every claim we obtained marked wrong and
// its inputs as "evidence" (faults.falseAccuse).
func falseReport(b *auditBook) (auditReport, [][][]float32) {
	rep, _ := b.report()
	var ev [][][]float32
	for i := range rep.Claims {
		rep.Claims[i].Evidence = true
		ev = append(ev, b.obtained[i].inputs)
	}
	return rep, ev
}
