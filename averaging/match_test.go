package averaging

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// simNet drives matchers over an in-memory network with a virtual clock. It
// can drop, delay, duplicate and cut messages.
type simNet struct {
	rng      *rand.Rand
	now      time.Time
	ms       map[peer.ID]*matcher
	order    []peer.ID
	queue    []simMsg
	seq      int
	drop     float64 // probability a message is lost
	dup      float64 // probability a message is delivered twice
	maxDelay time.Duration
	cut      map[[2]peer.ID]bool
	dead     map[peer.ID]bool // vanished peers: receive nothing, send nothing
	last     map[[2]peer.ID]time.Time
	// startAt holds a peer's matcher back until then (startLate): until it
	// starts, the peer answers joins as a node whose step has not begun.
	startAt map[peer.ID]time.Time
}

type simMsg struct {
	at  time.Time
	seq int
	to  peer.ID
	ev  matchEvent
}

func fakeIDs(n int) []peer.ID {
	out := make([]peer.ID, n)
	for i := range out {
		out[i] = peer.ID(fmt.Sprintf("peer-%03d", i))
	}
	return out
}

func newSimNet(seed uint64, n int, mod func(i int, c *matchConfig)) *simNet {
	sn := &simNet{rng: rand.New(rand.NewPCG(seed, 7)), now: time.Unix(1000, 0), ms: map[peer.ID]*matcher{},
		cut: map[[2]peer.ID]bool{}, dead: map[peer.ID]bool{}, last: map[[2]peer.ID]time.Time{}, maxDelay: 5 * time.Millisecond}
	all := fakeIDs(n)
	sn.order = all
	for i, id := range all {
		cfg := matchConfig{Self: id, Group: groupKey{Key: "k", Round: 1}, Target: 4, Min: 2,
			Window: 500 * time.Millisecond, ReqTimeout: 100 * time.Millisecond, Deadline: sn.now.Add(1500 * time.Millisecond),
			VecLen: 10, Bandwidth: 1, PartSize: 4}
		if mod != nil {
			mod(i, &cfg)
		}
		// Peers start up to 50 ms apart.
		start := sn.now.Add(time.Duration(sn.rng.IntN(50)) * time.Millisecond)
		cfg.Deadline = cfg.Deadline.Add(start.Sub(sn.now))
		sn.ms[id] = newMatcher(cfg, all, rand.New(rand.NewPCG(seed, uint64(i))), start)
	}
	return sn
}

func (sn *simNet) send(from, to peer.ID, ev matchEvent) {
	if sn.dead[from] || sn.dead[to] || sn.cut[[2]peer.ID{from, to}] || sn.cut[[2]peer.ID{to, from}] {
		return
	}
	if sn.rng.Float64() < sn.drop {
		return
	}
	copies := 1
	if sn.rng.Float64() < sn.dup {
		copies = 2
	}
	for range copies {
		// Messages between two peers travel on one stream: they keep their order.
		d := time.Duration(sn.rng.Int64N(int64(sn.maxDelay) + 1))
		at := sn.now.Add(d)
		if l := sn.last[[2]peer.ID{from, to}]; at.Before(l) {
			at = l
		}
		sn.last[[2]peer.ID{from, to}] = at
		sn.seq++
		sn.queue = append(sn.queue, simMsg{at: at, seq: sn.seq, to: to, ev: ev})
	}
}

func (sn *simNet) flush(id peer.ID) {
	m := sn.ms[id]
	for _, env := range m.ready() {
		switch env.Kind {
		case outJoin:
			sn.send(id, env.To, matchEvent{Kind: evJoin, From: id, Join: env.Join})
		case outReply:
			sn.send(id, env.To, matchEvent{Kind: evReply, From: id, Reply: env.Reply})
		case outBegin:
			sn.send(id, env.To, matchEvent{Kind: evBegin, From: id, Group: *env.Group})
		case outStart:
			sn.send(id, env.To, matchEvent{Kind: evStart, From: id, Group: *env.Group})
		case outAck:
			sn.send(id, env.To, matchEvent{Kind: evAck, From: id, OK: env.OK})
		case outDisband:
			sn.send(id, env.To, matchEvent{Kind: evDisband, From: id, Redirect: env.Redirect})
		case outLeave:
			sn.send(id, env.To, matchEvent{Kind: evFollowerGone, From: id})
		}
	}
}

// run advances the virtual clock in 10 ms ticks until every live matcher
// finished or limit passed; it returns the virtual time taken.
func (sn *simNet) run(limit time.Duration) time.Duration {
	start := sn.now
	for _, id := range sn.order {
		if _, waiting := sn.startAt[id]; waiting {
			sn.ms[id].ready() // its first requests go out when it starts
			continue
		}
		sn.flush(id)
	}
	for sn.now.Sub(start) < limit {
		sn.now = sn.now.Add(10 * time.Millisecond)
		sort.Slice(sn.queue, func(i, j int) bool {
			if !sn.queue[i].at.Equal(sn.queue[j].at) {
				return sn.queue[i].at.Before(sn.queue[j].at)
			}
			return sn.queue[i].seq < sn.queue[j].seq
		})
		for _, id := range sn.order {
			if at, ok := sn.startAt[id]; ok && !sn.now.Before(at) {
				delete(sn.startAt, id)
				m := sn.ms[id]
				cfg := m.cfg
				cfg.Deadline = cfg.Deadline.Add(sn.now.Sub(m.now))
				sn.ms[id] = newMatcher(cfg, sn.order, rand.New(rand.NewPCG(uint64(len(id)), 3)), sn.now)
				sn.flush(id)
			}
		}
		for len(sn.queue) > 0 && !sn.queue[0].at.After(sn.now) {
			msg := sn.queue[0]
			sn.queue = sn.queue[1:]
			if sn.dead[msg.to] {
				continue
			}
			if _, waiting := sn.startAt[msg.to]; waiting {
				if msg.ev.Kind == evJoin {
					sn.send(msg.to, msg.ev.From, matchEvent{Kind: evReply, From: msg.to, Reply: joinReply{Status: rejectNotLooking}})
				}
				continue
			}
			sn.ms[msg.to].Step(msg.ev)
			sn.flush(msg.to)
		}
		all := true
		for _, id := range sn.order {
			if _, waiting := sn.startAt[id]; sn.dead[id] || waiting {
				all = all && !waiting
				continue
			}
			sn.ms[id].Tick(sn.now)
			sn.flush(id)
			all = all && sn.ms[id].finished()
		}
		if all {
			break
		}
	}
	return sn.now.Sub(start)
}

// check verifies the invariants: every live matcher finished; peers that
// ended in the same group agree on it and are listed in it; groups respect
// the size bounds.
func (sn *simNet) check(t *testing.T) (groups map[[16]byte][]peer.ID) {
	t.Helper()
	groups = map[[16]byte][]peer.ID{}
	infos := map[[16]byte]*groupInfo{}
	for _, id := range sn.order {
		m := sn.ms[id]
		if sn.dead[id] {
			continue
		}
		if !m.finished() {
			t.Fatalf("%s did not finish (state %d)", id, m.state)
		}
		if m.group == nil {
			continue
		}
		g := m.group
		if g.index(id) < 0 {
			t.Fatalf("%s in a group that does not list it", id)
		}
		if n := len(g.Members); n < 2 || n > sn.room() {
			t.Fatalf("group of %d (room %d)", n, sn.room())
		}
		if prev, ok := infos[g.ID]; ok && fmt.Sprint(prev.Members) != fmt.Sprint(g.Members) {
			t.Fatalf("members disagree on group %x", g.ID)
		}
		infos[g.ID] = g
		groups[g.ID] = append(groups[g.ID], id)
	}
	return groups
}

func TestMatcherNoFaults(t *testing.T) {
	for _, n := range []int{2, 3, 4, 7, 16, 64} {
		for seed := range uint64(5) {
			t.Run(fmt.Sprintf("n%d/seed%d", n, seed), func(t *testing.T) {
				sn := newSimNet(seed, n, nil)
				took := sn.run(5 * time.Second)
				groups := sn.check(t)
				grouped := 0
				for gid, members := range groups {
					grouped += len(members)
					if len(members) != len(sn.ms[members[0]].group.Members) {
						t.Fatalf("group %x: %d of %d members joined", gid, len(members), len(sn.ms[members[0]].group.Members))
					}
				}
				// Two peers left over could have grouped with each other; one
				// may be left when every other group started without it.
				if grouped < n-1 {
					t.Fatalf("%d of %d peers grouped", grouped, n)
				}
				if took > 2400*time.Millisecond { // as in TestMatcherFaultyNetwork
					t.Fatalf("took %v", took)
				}
			})
		}
	}
}

func TestMatcherFaultyNetwork(t *testing.T) {
	cases := []struct {
		name      string
		drop, dup float64
		delay     time.Duration
		dead, cut int
	}{
		{"drop10", 0.1, 0, 5 * time.Millisecond, 0, 0},
		{"dup30", 0, 0.3, 5 * time.Millisecond, 0, 0},
		{"delay80ms", 0, 0, 80 * time.Millisecond, 0, 0},
		{"vanished3", 0, 0, 5 * time.Millisecond, 3, 0},
		{"cut20links", 0, 0, 5 * time.Millisecond, 0, 20},
		{"everything", 0.05, 0.1, 40 * time.Millisecond, 2, 10},
	}
	for _, tc := range cases {
		for seed := range uint64(8) {
			t.Run(fmt.Sprintf("%s/seed%d", tc.name, seed), func(t *testing.T) {
				sn := newSimNet(seed, 16, nil)
				sn.drop, sn.dup, sn.maxDelay = tc.drop, tc.dup, tc.delay
				for i := range tc.dead { // announced, then vanished before answering anything
					sn.dead[sn.order[i*5]] = true
				}
				for range tc.cut {
					a, b := sn.order[sn.rng.IntN(16)], sn.order[sn.rng.IntN(16)]
					sn.cut[[2]peer.ID{a, b}] = true
				}
				// Bound: deadline 1.5 s + start skew 50 ms + a follower's patience
				// (window + request timeout) + waiting for Start (2 request timeouts).
				took := sn.run(10 * time.Second)
				if took > 2400*time.Millisecond {
					t.Fatalf("matchmaking ran %v past its bound", took)
				}
				groups := sn.check(t)
				if tc.drop == 0 && tc.cut == 0 && len(groups) == 0 {
					t.Fatal("no group formed")
				}
			})
		}
	}
}

func TestMatcherRefusals(t *testing.T) {
	now := time.Unix(0, 0)
	cfg := matchConfig{Self: "b", Group: groupKey{"k", 1, 0}, Target: 3, Min: 2, Window: time.Second,
		ReqTimeout: 100 * time.Millisecond, Deadline: now.Add(3 * time.Second), VecLen: 10, Bandwidth: 1, PartSize: 4}
	m := newMatcher(cfg, []peer.ID{"a", "c", "d", "e", "x"}, rand.New(rand.NewPCG(1, 1)), now)
	exp := now.Add(time.Second).UnixNano()
	req := func(from peer.ID, mod func(*joinRequest)) joinStatus {
		r := joinRequest{Version: WireVersion, Group: cfg.Group, Expiration: exp + 1, VecLen: 10, Bandwidth: 1}
		if mod != nil {
			mod(&r)
		}
		m.Step(matchEvent{Kind: evJoin, From: from, Join: r})
		for _, env := range m.ready() {
			if env.Kind == outReply && env.To == from {
				return env.Reply.Status
			}
		}
		return 0
	}
	checks := []struct {
		from peer.ID
		mod  func(*joinRequest)
		want joinStatus
	}{
		{"x", func(r *joinRequest) { r.Group.Bits = 3 }, rejectWrongKey},
		{"x", func(r *joinRequest) { r.Group.Round = 2 }, rejectWrongKey},
		{"x", func(r *joinRequest) { r.VecLen = 11 }, rejectMismatch},
		{"x", func(r *joinRequest) { r.Codec = CodecFP16 }, rejectMismatch},
		{"a", func(r *joinRequest) { r.Expiration = exp }, rejectJunior}, // same expiration, smaller id: a is earlier
		{"x", func(r *joinRequest) { r.Expiration = exp - 1 }, rejectJunior},
		{"c", nil, joinAccepted},
		{"c", nil, joinAccepted},     // repeated request
		{"d", nil, joinAccepted},     // fills the group (target 3): it starts
		{"e", nil, rejectNotLooking}, // confirming the proposal
	}
	for i, c := range checks {
		if got := req(c.from, c.mod); got != c.want {
			t.Fatalf("check %d: got %s, want %s", i, got, c.want)
		}
	}
	if m.state != msConfirming {
		t.Fatalf("state %d, want confirming", m.state)
	}
	m.Step(matchEvent{Kind: evAck, From: "c", OK: true})
	m.Step(matchEvent{Kind: evAck, From: "d", OK: true})
	starts := 0
	for _, env := range m.ready() {
		if env.Kind == outStart {
			starts++
		}
	}
	if starts != 2 {
		t.Fatalf("%d start messages, want 2", starts)
	}
	if req("e", nil) != rejectGrouped {
		t.Fatal("want grouped")
	}
	if m.group == nil || len(m.group.Members) != 3 {
		t.Fatalf("group %+v", m.group)
	}
}

func TestMatcherFollowerRedirect(t *testing.T) {
	// A follower rejects with its leader's id; a leader accepted by an earlier
	// peer disbands its followers towards that peer.
	now := time.Unix(0, 0)
	cfg := matchConfig{Self: "m", Group: groupKey{"k", 1, 0}, Target: 4, Min: 2, Window: time.Second,
		ReqTimeout: 100 * time.Millisecond, Deadline: now.Add(3 * time.Second), VecLen: 10, Bandwidth: 1, PartSize: 4}
	m := newMatcher(cfg, []peer.ID{"a"}, rand.New(rand.NewPCG(1, 1)), now)
	out := m.ready()
	if len(out) != 1 || out[0].Kind != outJoin || out[0].To != "a" {
		t.Fatalf("first output %+v", out)
	}
	late := now.Add(2 * time.Second).UnixNano()
	m.Step(matchEvent{Kind: evJoin, From: "z", Join: joinRequest{Version: WireVersion, Group: cfg.Group, Expiration: late, VecLen: 10}})
	if out := m.ready(); out[0].Reply.Status != joinAccepted {
		t.Fatalf("z not accepted: %+v", out)
	}
	m.Step(matchEvent{Kind: evReply, From: "a", Reply: joinReply{Status: joinAccepted}})
	out = m.ready()
	if len(out) != 1 || out[0].Kind != outDisband || out[0].To != "z" || out[0].Redirect != "a" {
		t.Fatalf("want disband of z towards a, got %+v", out)
	}
	m.Step(matchEvent{Kind: evJoin, From: "y", Join: joinRequest{Version: WireVersion, Group: cfg.Group, Expiration: late, VecLen: 10}})
	if out := m.ready(); out[0].Reply.Status != rejectFollowing || out[0].Reply.Redirect != "a" {
		t.Fatalf("want redirect to a, got %+v", out)
	}
	// The leader goes silent: the follower leaves after window + request timeout.
	m.Tick(now.Add(cfg.Window + cfg.ReqTimeout))
	out = m.ready()
	if len(out) == 0 || out[0].Kind != outLeave || out[0].To != "a" {
		t.Fatalf("want leave, got %+v", out)
	}
}

func TestMatcherRedirectToPeerAskedBefore(t *testing.T) {
	// b was asked first and was still looking (following nobody useful);
	// later c says it follows b. b now leads a group, so m must ask b again
	// rather than treat it as already asked: left out, m would end alone.
	now := time.Unix(0, 0)
	cfg := matchConfig{Self: "m", Group: groupKey{"k", 1, 0}, Target: 4, Min: 2, Window: time.Second,
		ReqTimeout: 100 * time.Millisecond, Deadline: now.Add(3 * time.Second), VecLen: 10, Bandwidth: 1, PartSize: 4}
	m := newMatcher(cfg, []peer.ID{"b", "c"}, rand.New(rand.NewPCG(1, 1)), now)
	first := m.ready()[0].To
	second := peer.ID("b")
	if first == "b" {
		second = "c"
	}
	m.Step(matchEvent{Kind: evReply, From: first, Reply: joinReply{Status: rejectFollowing, Redirect: second}})
	if out := m.ready(); len(out) != 1 || out[0].Kind != outJoin || out[0].To != second {
		t.Fatalf("want a join to %s, got %+v", second, out)
	}
	m.Step(matchEvent{Kind: evReply, From: second, Reply: joinReply{Status: rejectFollowing, Redirect: first}})
	if out := m.ready(); len(out) != 1 || out[0].Kind != outJoin || out[0].To != first {
		t.Fatalf("redirected to %s, asked before: want a join to it again, got %+v", first, out)
	}
}

func TestNextBitsMoshpitGrid(t *testing.T) {
	// 16 peers in groups of 4 with 2 key bits: members of one group get
	// distinct next keys, so next round's groups take one from each.
	g := &groupInfo{ID: [16]byte{1, 2, 3}}
	for _, id := range fakeIDs(4) {
		g.Members = append(g.Members, member{ID: id})
	}
	seen := map[uint32]bool{}
	for _, mb := range g.Members {
		b := nextBits(0, 2, g, mb.ID, 4)
		if b > 3 || seen[b] {
			t.Fatalf("bits %d repeated or out of range", b)
		}
		seen[b] = true
	}
	if nextBits(5, 0, g, g.Members[0].ID, 4) != 0 {
		t.Fatal("no key bits must give 0")
	}
}

func TestMatcherGivesUpEarly(t *testing.T) {
	// Every candidate is grouped or on another key: nobody can join, so the
	// matcher fails at once instead of waiting out the deadline.
	now := time.Unix(0, 0)
	cfg := matchConfig{Self: "m", Group: groupKey{"k", 1, 0}, Target: 4, Min: 2, Window: time.Second,
		ReqTimeout: 100 * time.Millisecond, Deadline: now.Add(3 * time.Second), VecLen: 10, Bandwidth: 1, PartSize: 4}
	m := newMatcher(cfg, []peer.ID{"a", "b"}, rand.New(rand.NewPCG(1, 1)), now)
	for range 2 {
		out := m.ready()
		if len(out) != 1 || out[0].Kind != outJoin {
			t.Fatalf("want one join request, got %+v", out)
		}
		st := rejectGrouped
		if out[0].To == "b" {
			st = rejectWrongKey
		}
		m.Step(matchEvent{Kind: evReply, From: out[0].To, Reply: joinReply{Status: st}})
	}
	if m.state != msFailed {
		t.Fatalf("state %d, want failed", m.state)
	}
}

// room is the largest group any peer leads.
func (sn *simNet) room() int {
	r := 0
	for _, m := range sn.ms {
		r = max(r, m.room())
	}
	return r
}

// startLate holds peer id's step back by d (from the sim's start).
func (sn *simNet) startLate(id peer.ID, d time.Duration) {
	if sn.startAt == nil {
		sn.startAt = map[peer.ID]time.Time{}
	}
	sn.startAt[id] = sn.now.Add(d)
}

func TestMatcherWaitsForWantedOnly(t *testing.T) {
	// Four holders of a shard; three closed on time and want each other,
	// the fourth is late in their eyes (not wanted) but may join, and its
	// step starts 0-60 ms after theirs. By count (target 3) the first three
	// to join would begin, and a late peer that joined early would leave
	// out one that was on time (this test fails so without Want). With
	// Want, every on-time peer is in the group, and the late one is in it
	// whenever it joined before the last wanted one.
	ids := fakeIDs(4)
	late := ids[3]
	withLate := 0
	for seed := range uint64(40) {
		sn := newSimNet(seed, 4, func(i int, c *matchConfig) {
			c.Target, c.Room = 3, 4
			if i == 3 {
				c.Target = 4 // it waits for everyone
				return
			}
			c.Want = slices.DeleteFunc(slices.Clone(ids[:3]), func(p peer.ID) bool { return p == ids[i] })
		})
		sn.maxDelay = 25 * time.Millisecond
		sn.startLate(late, time.Duration(seed%4)*20*time.Millisecond)
		sn.run(5 * time.Second)
		groups := sn.check(t)
		onTime := 0
		for _, members := range groups {
			onTime = max(onTime, len(slices.DeleteFunc(slices.Clone(members), func(p peer.ID) bool { return p == late })))
			if slices.Contains(members, late) {
				withLate++
			}
		}
		if onTime != 3 {
			t.Fatalf("seed %d: the largest group holds %d of the 3 on-time peers: %v", seed, onTime, groups)
		}
	}
	if withLate == 0 {
		t.Fatal("the late peer never joined a group with room for it")
	}
	t.Logf("the late peer joined the group in %d of 40 runs", withLate)
}

func TestMatcherLeftOut(t *testing.T) {
	// The candidates answer grouped: this peer was left out of the round
	// (it says so), unlike a peer whose candidates are on another key.
	now := time.Unix(0, 0)
	for _, st := range []joinStatus{rejectGrouped, rejectWrongKey} {
		cfg := matchConfig{Self: "m", Group: groupKey{"k", 1, 0}, Target: 3, Min: 2, Window: time.Second,
			ReqTimeout: 100 * time.Millisecond, Deadline: now.Add(3 * time.Second), VecLen: 10, Bandwidth: 1, PartSize: 4}
		m := newMatcher(cfg, []peer.ID{"a", "b"}, rand.New(rand.NewPCG(1, 1)), now)
		for range 2 {
			out := m.ready()
			m.Step(matchEvent{Kind: evReply, From: out[0].To, Reply: joinReply{Status: st}})
		}
		if m.state != msFailed || m.leftOut != (st == rejectGrouped) {
			t.Fatalf("answer %v: state %d, left out %v", st, m.state, m.leftOut)
		}
	}
}

func TestMatcherKeepsPlacesForWanted(t *testing.T) {
	// A leader with room 3 wanting a and b: an unwanted joiner takes no
	// place they need; once both are in, it starts.
	now := time.Unix(0, 0)
	cfg := matchConfig{Self: "a0", Group: groupKey{"k", 1, 0}, Target: 3, Room: 3, Min: 2, Window: time.Second,
		ReqTimeout: 100 * time.Millisecond, Deadline: now.Add(3 * time.Second), VecLen: 10, Bandwidth: 1, PartSize: 4,
		Want: []peer.ID{"a", "b"}}
	m := newMatcher(cfg, []peer.ID{"a", "b", "x"}, rand.New(rand.NewPCG(1, 1)), now)
	m.ready()
	exp := now.Add(2 * time.Second).UnixNano() // after the leader's
	join := func(from peer.ID) joinStatus {
		m.Step(matchEvent{Kind: evJoin, From: from, Join: joinRequest{Version: WireVersion, Group: cfg.Group, Expiration: exp, VecLen: 10, Bandwidth: 1}})
		for _, e := range m.ready() {
			if e.Kind == outReply && e.To == from {
				return e.Reply.Status
			}
		}
		t.Fatalf("no reply to %s", from)
		return 0
	}
	if st := join("a"); st != joinAccepted {
		t.Fatalf("wanted a: %v", st)
	}
	if st := join("x"); st != rejectFull {
		t.Fatalf("unwanted x with one place left, for b: %v, want full", st)
	}
	if st := join("b"); st != joinAccepted || m.state != msConfirming {
		t.Fatalf("wanted b: %v, state %d (want the group begun)", st, m.state)
	}
}

func TestMatcherWantedGroupedElsewhere(t *testing.T) {
	// A wanted peer that answers grouped (it is in another group) is not
	// waited for: the leader starts with the others once the target is met.
	now := time.Unix(0, 0)
	cfg := matchConfig{Self: "m", Group: groupKey{"k", 1, 0}, Target: 2, Room: 3, Min: 2, Window: time.Second,
		ReqTimeout: 100 * time.Millisecond, Deadline: now.Add(3 * time.Second), VecLen: 10, Bandwidth: 1, PartSize: 4,
		Want: []peer.ID{"a", "b"}}
	m := newMatcher(cfg, []peer.ID{"a", "b"}, rand.New(rand.NewPCG(1, 1)), now)
	out := m.ready()
	if len(out) != 1 || out[0].Kind != outJoin {
		t.Fatalf("want one join request, got %+v", out)
	}
	other := peer.ID("a")
	if out[0].To == "a" {
		other = "b"
	}
	m.Step(matchEvent{Kind: evReply, From: out[0].To, Reply: joinReply{Status: rejectGrouped}})
	m.ready()
	m.Step(matchEvent{Kind: evJoin, From: other, Join: joinRequest{Version: WireVersion, Group: cfg.Group,
		Expiration: now.Add(2 * time.Second).UnixNano(), VecLen: 10, Bandwidth: 1}})
	if m.state != msConfirming {
		t.Fatalf("state %d with %s grouped elsewhere and %s joined, want the group begun", m.state, out[0].To, other)
	}
}
