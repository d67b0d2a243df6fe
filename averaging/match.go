package averaging

import (
	"math/rand/v2"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// The matchmaker is a pure state machine: it never touches the network, a
// goroutine or the wall clock. The caller feeds it events (Step) and the time
// (Tick) and carries out the envelopes it returns.
//
// Protocol (after hivemind's matchmaking, with its total order):
//   - Every looking peer has an expiration; (expiration, peer id) orders peers.
//     A peer only asks peers earlier in that order to lead it, one at a time,
//     so there are no cycles of waiting.
//   - A leader accepts followers until the group reaches the target size, then
//     starts it at once; at its expiration it starts the group if it has the
//     minimum size, otherwise disbands it. A leader told which peers it waits
//     for (Want) starts once they all joined instead, and meanwhile accepts
//     others up to Room members, never taking a place a wanted peer needs.
//     Starting is two-phase: the leader
//     proposes the member list (Begin), every follower confirms or declines
//     (Ack), and the leader sends the final list of those who confirmed
//     (Start). So a peer whose own group filled while its request to another
//     leader was in flight is never counted in two groups. A leader that is itself accepted by
//     an earlier peer disbands its followers and redirects them to that peer.
//   - A follower waits for its leader at most one window plus the request
//     timeout, then goes back to looking; a follower that leaves closes its
//     stream, which the leader sees.
//   - A failed attempt starts again with a new expiration until the overall
//     deadline.

type matchState uint8

const (
	msLooking matchState = iota
	msFollowing
	msConfirming // leader: proposal sent, waiting for acks
	msAwaitStart // follower: acked a proposal, waiting for the final list
	msDone
	msFailed
)

// envelope kinds the matchmaker asks the transport to carry out.
type outKind uint8

const (
	outJoin    outKind = iota + 1 // open a join stream to To with Join
	outReply                      // answer To's pending join request with Reply
	outBegin                      // send the proposed Group on To's held join stream
	outStart                      // send the final Group on To's held join stream, then close it
	outDisband                    // send Disband(Redirect) on To's held join stream, then close it
	outLeave                      // close our join stream to To
	outAck                        // answer our leader To's proposal with OK
)

type envelope struct {
	Kind     outKind
	To       peer.ID
	Join     joinRequest
	Reply    joinReply
	Group    *groupInfo
	Redirect peer.ID
	OK       bool
}

// matchEvent kinds fed to Step.
type evKind uint8

const (
	evJoin          evKind = iota + 1 // From asks us to lead it
	evReply                           // From answered our join request
	evBegin                           // our leader From started a group
	evDisband                         // our leader From disbanded (Redirect may be set)
	evRequestFailed                   // our join stream to From broke or timed out
	evFollowerGone                    // From's held join stream closed
	evAck                             // follower From answered our proposal (OK)
	evStart                           // our leader From sent the final group
)

type matchEvent struct {
	Kind     evKind
	From     peer.ID
	Join     joinRequest
	Reply    joinReply
	Group    groupInfo
	Redirect peer.ID
	OK       bool
}

type matchConfig struct {
	Self        peer.ID
	Group       groupKey
	Target, Min int
	Window      time.Duration // one attempt's expiration
	ReqTimeout  time.Duration // a join request unanswered this long is abandoned
	Deadline    time.Time     // no new attempt starts after this
	VecLen      uint64
	Bandwidth   float64
	Client      bool
	Codec       Codec
	PartSize    uint32
	// Want, when set, are the peers a leader waits for: the group starts
	// once all of them (and Target members) joined, or once it has Room
	// members; others may join meanwhile while a wanted peer's place stays
	// free. Room 0: Target.
	Want []peer.ID
	Room int
}

type candInfo struct {
	asked, wrongKey, junior, dead, grouped bool
	following                              bool // follows another peer (this attempt)
}

type matcher struct {
	cfg        matchConfig
	rng        *rand.Rand
	now        time.Time
	state      matchState
	expiration time.Time
	cands      []peer.ID
	info       map[peer.ID]*candInfo
	priority   peer.ID // redirect target to ask next

	outstanding   peer.ID
	outstandingBy time.Time
	reaskAt       time.Time

	leader     peer.ID
	followBy   time.Time
	followers  []member
	proposal   *groupInfo
	acks       map[peer.ID]ackState
	confirmBy  time.Time
	attempts   int
	group      *groupInfo
	failReason string
	// leftOut: the attempt failed because the candidates formed their
	// groups without this peer (at least one answered grouped).
	leftOut bool
	out     []envelope
}

func newMatcher(cfg matchConfig, candidates []peer.ID, rng *rand.Rand, now time.Time) *matcher {
	m := &matcher{cfg: cfg, rng: rng, info: map[peer.ID]*candInfo{}}
	for _, c := range candidates {
		if c != cfg.Self && m.info[c] == nil {
			m.info[c] = &candInfo{}
			m.cands = append(m.cands, c)
		}
	}
	rng.Shuffle(len(m.cands), func(i, j int) { m.cands[i], m.cands[j] = m.cands[j], m.cands[i] })
	m.now = now
	m.startAttempt()
	return m
}

// ready returns and clears the pending envelopes.
func (m *matcher) ready() []envelope {
	out := m.out
	m.out = nil
	return out
}

func (m *matcher) finished() bool { return m.state == msDone || m.state == msFailed }

func (m *matcher) startAttempt() {
	m.attempts++
	m.state = msLooking
	m.expiration = m.now.Add(m.cfg.Window)
	m.reaskAt = time.Time{}
	for _, ci := range m.info {
		ci.asked, ci.junior, ci.following = false, false, false
	}
	m.tryNext()
}

// before reports whether (ea, a) precedes (eb, b) in the total order.
func before(ea int64, a peer.ID, eb int64, b peer.ID) bool {
	if ea != eb {
		return ea < eb
	}
	return a < b
}

func (m *matcher) myExp() int64 { return m.expiration.UnixNano() }

func (m *matcher) joinMsg() joinRequest {
	return joinRequest{Version: WireVersion, Group: m.cfg.Group, Expiration: m.myExp(), VecLen: m.cfg.VecLen,
		Bandwidth: m.cfg.Bandwidth, Client: m.cfg.Client, Codec: m.cfg.Codec}
}

func (m *matcher) tryNext() {
	if m.state != msLooking || m.outstanding != "" {
		return
	}
	if m.complete() {
		m.begin()
		return
	}
	next := peer.ID("")
	if p := m.priority; p != "" {
		m.priority = ""
		// A redirect names a leader that may have been asked earlier in
		// this attempt, when it was still looking for a leader itself.
		if ci := m.info[p]; ci != nil && !ci.wrongKey && !ci.dead && !ci.junior && !ci.grouped {
			next = p
		}
	}
	if next == "" {
		for _, c := range m.cands {
			ci := m.info[c]
			if usable(ci) {
				next = c
				break
			}
		}
	}
	if next == "" {
		m.nothingToAsk()
		return
	}
	m.info[next].asked = true
	m.outstanding = next
	m.outstandingBy = m.now.Add(m.cfg.ReqTimeout)
	m.out = append(m.out, envelope{Kind: outJoin, To: next, Join: m.joinMsg()})
}

// nothingToAsk: no candidate is left to ask. If none can still join us
// (grouped, other key or unusable), start now with the followers we have, or
// give up early when we have none. Otherwise the others may have changed
// state (a junior whose leader disbanded, a full group that shrank): ask them
// again after a request timeout.
func (m *matcher) nothingToAsk() {
	// A peer following another may still come: its leader may join us and
	// redirect it. Only grouped, other-key and unusable peers are gone.
	gone := true
	for c, ci := range m.info {
		gone = gone && (ci.grouped || ci.wrongKey || ci.dead || m.isFollower(c))
	}
	switch {
	case gone && len(m.followers)+1 >= max(m.cfg.Min, 2):
		m.begin()
	case gone && len(m.followers) == 0:
		m.state = msFailed
		m.failReason = "no candidate can join: all grouped or on another key"
		for _, ci := range m.info {
			m.leftOut = m.leftOut || ci.grouped
		}
	default:
		if m.reaskAt.IsZero() {
			m.reaskAt = m.now.Add(m.cfg.ReqTimeout)
		}
	}
}

func usable(ci *candInfo) bool {
	return !ci.asked && !ci.wrongKey && !ci.dead && !ci.junior && !ci.grouped
}

func (m *matcher) reply(to peer.ID, s joinStatus, redirect peer.ID) {
	m.out = append(m.out, envelope{Kind: outReply, To: to,
		Reply: joinReply{Status: s, Expiration: m.myExp(), Bits: m.cfg.Group.Bits, Redirect: redirect}})
}

// room is the most members a group may have.
func (m *matcher) room() int { return max(m.cfg.Room, m.cfg.Target) }

// wanted reports whether the leader waits for p.
func (m *matcher) wanted(p peer.ID) bool { return slices.Contains(m.cfg.Want, p) }

// missing counts the wanted peers that are not followers yet and may still
// come (not grouped elsewhere, on another key or unusable).
func (m *matcher) missing() int {
	n := 0
	for _, w := range m.cfg.Want {
		if ci := m.info[w]; w == m.cfg.Self || m.isFollower(w) || ci != nil && (ci.grouped || ci.wrongKey || ci.dead) {
			continue
		}
		n++
	}
	return n
}

// complete reports whether the group as led now should start: it is at its
// room, or it has its target and every wanted peer.
func (m *matcher) complete() bool {
	n := len(m.followers) + 1
	return n >= m.room() || (n >= m.cfg.Target && m.missing() == 0)
}

// full reports whether a join by p finds no place: the group is at its
// room, or p is not wanted and the places left are the wanted peers'.
func (m *matcher) full(p peer.ID) bool {
	n := len(m.followers) + 1
	return n >= m.room() || (!m.wanted(p) && n+m.missing() >= m.room())
}

func (m *matcher) isFollower(p peer.ID) bool {
	for _, f := range m.followers {
		if f.ID == p {
			return true
		}
	}
	return false
}

func (m *matcher) dropFollower(p peer.ID) {
	for i, f := range m.followers {
		if f.ID == p {
			m.followers = append(m.followers[:i], m.followers[i+1:]...)
			return
		}
	}
}

// Step applies one event.
func (m *matcher) Step(ev matchEvent) {
	switch ev.Kind {
	case evJoin:
		m.onJoin(ev.From, ev.Join)
	case evReply:
		m.onReply(ev.From, ev.Reply)
	case evBegin:
		ok := m.state == msFollowing && ev.From == m.leader && ev.Group.index(m.cfg.Self) >= 0
		m.out = append(m.out, envelope{Kind: outAck, To: ev.From, OK: ok})
		if ok {
			m.state = msAwaitStart
			m.followBy = m.now.Add(2 * m.cfg.ReqTimeout)
		}
	case evStart:
		if m.state == msAwaitStart && ev.From == m.leader && ev.Group.index(m.cfg.Self) >= 0 {
			g := ev.Group
			m.group = &g
			m.state = msDone
		}
	case evAck:
		if m.state == msConfirming {
			if st, ok := m.acks[ev.From]; ok && st == ackPending {
				m.acks[ev.From] = ackNo
				if ev.OK {
					m.acks[ev.From] = ackYes
				}
				m.maybeStart(false)
			}
		}
	case evDisband:
		if (m.state == msFollowing || m.state == msAwaitStart) && ev.From == m.leader {
			m.leader = ""
			m.state = msLooking
			if ev.Redirect != "" && ev.Redirect != m.cfg.Self {
				m.priority = ev.Redirect
			}
			m.tryNext()
		}
	case evRequestFailed:
		// Not permanent: a slow first connection is retried next attempt
		// (it stays asked for this one).
		if m.outstanding == ev.From {
			m.outstanding = ""
			m.tryNext()
		} else if (m.state == msFollowing || m.state == msAwaitStart) && m.leader == ev.From {
			m.leader = ""
			m.state = msLooking
			m.tryNext()
		}
	case evFollowerGone:
		m.dropFollower(ev.From)
		if m.state == msConfirming {
			if _, ok := m.acks[ev.From]; ok {
				m.acks[ev.From] = ackNo
				m.maybeStart(false)
			}
		}
	}
}

func (m *matcher) onJoin(from peer.ID, req joinRequest) {
	switch {
	case m.state == msFollowing || m.state == msAwaitStart:
		m.reply(from, rejectFollowing, m.leader)
	case m.state == msDone:
		m.reply(from, rejectGrouped, "")
	case m.state != msLooking || m.cfg.Client:
		m.reply(from, rejectNotLooking, "")
	case req.Group != m.cfg.Group:
		if ci := m.info[from]; ci != nil && req.Group.Key == m.cfg.Group.Key && req.Group.Round == m.cfg.Group.Round {
			ci.wrongKey = true
		}
		m.reply(from, rejectWrongKey, "")
	case req.Version != WireVersion || req.VecLen != m.cfg.VecLen || req.Codec != m.cfg.Codec:
		m.reply(from, rejectMismatch, "")
	case m.isFollower(from):
		m.reply(from, joinAccepted, "") // a repeated request
	case !before(m.myExp(), m.cfg.Self, req.Expiration, from):
		m.reply(from, rejectJunior, "")
	case m.full(from):
		m.reply(from, rejectFull, "")
	default:
		m.followers = append(m.followers, member{ID: from, Bandwidth: req.Bandwidth, Client: req.Client})
		if ci := m.info[from]; ci != nil {
			ci.junior = true // it is after us: never ask it to lead
		}
		m.reply(from, joinAccepted, "")
		if m.complete() {
			m.begin()
		}
	}
}

func (m *matcher) onReply(from peer.ID, r joinReply) {
	if from != m.outstanding {
		if r.Status == joinAccepted && m.leader != from {
			m.out = append(m.out, envelope{Kind: outLeave, To: from}) // stale acceptance
		}
		return
	}
	m.outstanding = ""
	ci := m.info[from]
	switch r.Status {
	case joinAccepted:
		if m.state != msLooking {
			m.out = append(m.out, envelope{Kind: outLeave, To: from})
			return
		}
		m.state = msFollowing
		m.leader = from
		m.followBy = m.now.Add(m.cfg.Window + m.cfg.ReqTimeout)
		for _, f := range m.followers {
			m.out = append(m.out, envelope{Kind: outDisband, To: f.ID, Redirect: from})
		}
		m.followers = nil
		return
	case rejectWrongKey:
		ci.wrongKey = true
	case rejectJunior:
		ci.junior = true
	case rejectFollowing:
		ci.following = true
		if r.Redirect != "" && r.Redirect != m.cfg.Self {
			m.priority = r.Redirect
		}
	case rejectMismatch:
		ci.dead = true
	case rejectGrouped:
		ci.grouped = true
	}
	m.tryNext()
}

// Tick advances time to now.
func (m *matcher) Tick(now time.Time) {
	m.now = now
	if m.finished() {
		return
	}
	if m.outstanding != "" && !now.Before(m.outstandingBy) {
		m.out = append(m.out, envelope{Kind: outLeave, To: m.outstanding})
		m.outstanding = ""
		m.tryNext()
	}
	switch m.state {
	case msConfirming:
		if !now.Before(m.confirmBy) {
			m.maybeStart(true)
		}
	case msFollowing, msAwaitStart:
		if !now.Before(m.followBy) {
			m.out = append(m.out, envelope{Kind: outLeave, To: m.leader})
			m.leader = ""
			m.state = msLooking
			m.nextAttemptOrFail()
		}
	case msLooking:
		// A leader with followers does not ask again: being accepted
		// elsewhere would disband followers that may then find no room.
		if !m.reaskAt.IsZero() && !now.Before(m.reaskAt) && m.outstanding == "" && len(m.followers) == 0 {
			// Refusals other than grouped, other key and unusable are
			// transient (junior, full, following, not looking yet): ask again.
			m.reaskAt = time.Time{}
			// Alone, a peer early in the order can only wait to be asked,
			// and a leader with followers and room asks nobody: both wait
			// out their windows and the group starts one short. A fresh
			// expiration (now + window) puts us after every leader whose
			// attempt began earlier, so we may ask them.
			exp := m.now.Add(m.cfg.Window)
			if exp.After(m.cfg.Deadline) {
				exp = m.cfg.Deadline
			}
			if exp.After(m.expiration) {
				m.expiration = exp
			}
			for c, ci := range m.info {
				if !ci.grouped && !ci.wrongKey && !ci.dead && !m.isFollower(c) {
					ci.junior, ci.asked, ci.following = false, false, false
				}
			}
			m.tryNext()
			if m.state != msLooking {
				return
			}
		}
		if !now.Before(m.expiration) {
			if len(m.followers)+1 >= max(m.cfg.Min, 2) {
				m.begin()
				return
			}
			for _, f := range m.followers {
				m.out = append(m.out, envelope{Kind: outDisband, To: f.ID})
			}
			m.followers = nil
			if m.outstanding != "" {
				m.out = append(m.out, envelope{Kind: outLeave, To: m.outstanding})
				m.outstanding = ""
			}
			m.nextAttemptOrFail()
		}
	}
}

func (m *matcher) nextAttemptOrFail() {
	if !m.now.Before(m.cfg.Deadline) {
		m.state = msFailed
		m.failReason = "no group formed before the matchmaking deadline"
		return
	}
	m.startAttempt()
}

// begin proposes the group to the followers; maybeStart finishes it.
func (m *matcher) begin() {
	g := &groupInfo{Codec: m.cfg.Codec, PartSize: m.cfg.PartSize, VecLen: m.cfg.VecLen}
	for i := range g.ID {
		g.ID[i] = byte(m.rng.Uint32())
	}
	g.Members = append([]member{{ID: m.cfg.Self, Bandwidth: m.cfg.Bandwidth, Client: m.cfg.Client}}, m.followers...)
	m.rng.Shuffle(len(g.Members), func(i, j int) { g.Members[i], g.Members[j] = g.Members[j], g.Members[i] })
	m.acks = map[peer.ID]ackState{}
	for _, f := range m.followers {
		m.acks[f.ID] = ackPending
		m.out = append(m.out, envelope{Kind: outBegin, To: f.ID, Group: g})
	}
	if m.outstanding != "" {
		m.out = append(m.out, envelope{Kind: outLeave, To: m.outstanding})
		m.outstanding = ""
	}
	m.followers = nil
	m.proposal = g
	m.state = msConfirming
	m.confirmBy = m.now.Add(m.cfg.ReqTimeout)
	m.maybeStart(false)
}

type ackState int8

const (
	ackPending ackState = iota
	ackYes
	ackNo
)

// maybeStart starts the proposed group with the members that confirmed, once
// every follower answered or, with timeout, at the confirmation deadline
// (silence counts as a refusal). Too few confirmations: the group disbands
// and this peer looks again.
func (m *matcher) maybeStart(timeout bool) {
	var yes []peer.ID
	for id, st := range m.acks {
		switch st {
		case ackPending:
			if !timeout {
				return
			}
		case ackYes:
			yes = append(yes, id)
		}
	}
	g := m.proposal
	final := &groupInfo{ID: g.ID, Codec: g.Codec, PartSize: g.PartSize, VecLen: g.VecLen}
	for _, mb := range g.Members {
		if mb.ID == m.cfg.Self || m.acks[mb.ID] == ackYes {
			final.Members = append(final.Members, mb)
		}
	}
	m.proposal, m.acks = nil, nil
	if len(final.Members) < max(m.cfg.Min, 2) {
		for _, id := range yes {
			m.out = append(m.out, envelope{Kind: outDisband, To: id})
		}
		m.nextAttemptOrFail()
		return
	}
	for _, id := range yes {
		m.out = append(m.out, envelope{Kind: outStart, To: id, Group: final})
	}
	m.group = final
	m.state = msDone
}

// nextBits derives the Moshpit key bits for the next round from the group id:
// every member gets a distinct index in [0, target) from an RNG seeded with the
// group id, and the bits shift that index in (keeping keyBits bits).
func nextBits(bits uint32, keyBits int, g *groupInfo, self peer.ID, target int) uint32 {
	if keyBits <= 0 {
		return 0
	}
	var seed [32]byte
	copy(seed[:], g.ID[:])
	rng := rand.New(rand.NewChaCha8(seed))
	idx := rng.Perm(max(target, len(g.Members)))[g.index(self)]
	nb := 0
	for (1 << nb) < target {
		nb++
	}
	return (bits<<nb | uint32(idx)) & (1<<keyBits - 1)
}
