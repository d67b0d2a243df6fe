package averaging

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/swarm-train/swarm/internal/guard"
)

// Hostile peers: each test runs n honest averagers and one attacker, a bare
// host with hand-written encoders that sends the worst legal-looking message.
// The victims must refuse it (counted in guard), allocate nothing near the
// declared size, and the honest peers must still complete their round.

const (
	keyHonest   = "run/honest"   // candidates: the honest peers
	keyAttack   = "run/attack"   // candidates: the attacker alone
	keyWithAtk  = "run/attacked" // candidates: everyone, attacker included
	attackAlloc = 64 << 20       // what a victim may allocate under attack, all told
)

type arena struct {
	ps     []*testPeer
	refs   []*guard.Refusals
	atk    host.Host
	honest []peer.ID
	cfg    Config // the honest peers' config (peer 0's)
}

func newArena(t *testing.T, n, vecLen int, mod func(c *Config)) *arena {
	t.Helper()
	hs := newHosts(t, n+1)
	ar := &arena{atk: hs[n], honest: ids(hs[:n])}
	everyone := ids(hs)
	rng := rand.New(rand.NewPCG(uint64(n), uint64(vecLen)))
	for _, h := range hs[:n] {
		cfg := testConfig(ar.honest)
		cfg.Peers = func(_ context.Context, key string) []peer.ID {
			switch key {
			case keyAttack:
				return []peer.ID{ar.atk.ID()}
			case keyWithAtk:
				return everyone
			}
			return ar.honest
		}
		ref, err := guard.New(nil, nil, guard.Policy{})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Refusals = ref
		cfg.Registerer = prometheus.NewRegistry()
		if mod != nil {
			mod(&cfg)
		}
		a, err := New(h, cfg)
		if err != nil {
			t.Fatal(err)
		}
		ar.cfg = a.cfg
		t.Cleanup(func() { _ = a.Close() })
		v := make([]float32, vecLen)
		for j := range v {
			v[j] = float32(rng.NormFloat64())
		}
		ar.ps = append(ar.ps, &testPeer{h: h, a: a, vec: v, w: 1 + float64(rng.IntN(5)), orig: slices.Clone(v)})
		ar.refs = append(ar.refs, ref)
	}
	return ar
}

// refused is how many times peer i refused input on proto for reason.
func (ar *arena) refused(i int, proto, reason string) uint64 {
	for _, c := range ar.refs[i].Summary().Refusals {
		if c.Protocol == proto && c.Reason == reason {
			return c.Count
		}
	}
	return 0
}

// refusedAll sums refused over the honest peers.
func (ar *arena) refusedAll(proto, reason string) uint64 {
	var n uint64
	for i := range ar.refs {
		n += ar.refused(i, proto, reason)
	}
	return n
}

// checkHonest asserts that every honest peer averaged its whole vector with
// the others, and with nothing of the attacker's.
func (ar *arena) checkHonest(t *testing.T, out []stepOut) {
	t.Helper()
	for i, o := range out {
		if o.err != nil {
			t.Fatalf("honest peer %d: %v", i, o.err)
		}
		if o.res.Mode != ModeGroup || o.res.Fraction != 1 {
			t.Fatalf("honest peer %d: mode %s fraction %v, excluded %v", i, o.res.Mode, o.res.Fraction, o.res.Excluded)
		}
		if any, _ := appears(o.res, ar.atk.ID()); any {
			t.Fatalf("honest peer %d: the attacker counted as a contributor", i)
		}
		checkAgainstReport(t, ar.ps, i, o.res, 1e-5)
		for _, sp := range o.res.Spans {
			if len(sp.Contributors) != len(ar.ps) {
				t.Fatalf("honest peer %d: span %d-%d has %d contributors, want %d", i, sp.Start, sp.End, len(sp.Contributors), len(ar.ps))
			}
		}
	}
}

// allocated runs f and returns the bytes this process allocated meanwhile.
func allocated(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// rawFrame is a frame header declaring n payload bytes, followed by body.
func rawFrame(t msgType, n uint32, body []byte) []byte {
	b := []byte{byte(t), 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], n)
	return append(b, body...)
}

// TestHostileLeader: the attacker accepts a victim's join and proposes a
// group with one hostile value. The reported crash was PartSize 0xFFFFFFFF:
// a 16 GiB allocation in sendTo. The victim refuses the group as its leader
// lies; meanwhile the honest peers average among themselves.
func TestHostileLeader(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(g *groupInfo)
	}{
		{"part size 0xFFFFFFFF", func(g *groupInfo) { g.PartSize = math.MaxUint32 }},
		{"part size 1", func(g *groupInfo) { g.PartSize = 1 }}, // a part (and reducer state) per value
		{"bandwidth 1e300", func(g *groupInfo) { g.Members[1].Bandwidth = 1e300 }},
		{"vector length", func(g *groupInfo) { g.VecLen = 1 << 40 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ar := newArena(t, 3, 3000, nil)
			ar.atk.SetStreamHandler(ProtoMatch, func(s network.Stream) {
				defer s.Reset()
				_ = s.SetDeadline(time.Now().Add(10 * time.Second))
				typ, b, err := readFrame(s, maxJoinFrame, nil)
				if err != nil || typ != tJoin {
					return
				}
				req, err := unmarshalJoinRequest(b)
				if err != nil {
					return
				}
				rep := joinReply{Status: joinAccepted, Expiration: time.Now().UnixNano()}
				_ = writeFrame(s, tJoinReply, rep.marshal())
				g := groupInfo{Members: []member{{ID: ar.atk.ID(), Bandwidth: 1}, {ID: s.Conn().RemotePeer(), Bandwidth: 1}},
					Codec: req.Codec, PartSize: 1000, VecLen: req.VecLen}
				g.ID[0] = 7
				c.mutate(&g)
				_ = writeFrame(s, tBegin, g.marshal())
				_ = writeFrame(s, tStart, g.marshal())
				_, _ = io.Copy(io.Discard, s)
			})
			victim := ar.ps[0]
			var out []stepOut
			var attackErr error
			alloc := allocated(func() {
				var wg sync.WaitGroup
				wg.Add(1)
				go func() {
					defer wg.Done()
					vec := slices.Clone(victim.orig)
					_, attackErr = victim.a.Step(context.Background(), keyAttack, 1, vec, 1)
				}()
				out = stepAll(ar.ps, keyHonest, 1, nil)
				wg.Wait()
			})
			if !errors.Is(attackErr, ErrNoGroup) {
				t.Fatalf("victim's step with the attacker: %v, want ErrNoGroup", attackErr)
			}
			if n := ar.refused(0, ProtoMatch, reasonRange); n == 0 {
				t.Fatalf("victim did not refuse the group; refusals %+v", ar.refs[0].Summary())
			}
			t.Logf("allocated %d MiB during the attack", alloc>>20)
			if alloc > attackAlloc {
				t.Fatalf("allocated %d MiB under attack", alloc>>20)
			}
			ar.checkHonest(t, out)
		})
	}
}

// TestHostileJoin: the attacker asks honest peers to lead it with a request
// that would make it everybody's leader (expiration 0), outlive every round
// (far future), take the whole vector (bandwidth 1e300), or with an
// oversized or garbled frame. Each is refused; the round goes on without it.
func TestHostileJoin(t *testing.T) {
	good := func(ar *arena) joinRequest {
		return joinRequest{Version: WireVersion, Group: groupKey{Key: keyWithAtk, Round: 1},
			Expiration: time.Now().Add(ar.cfg.MatchWindow).UnixNano(), VecLen: 3000, Bandwidth: 1, Codec: CodecNone}
	}
	cases := []struct {
		name   string
		reason string
		frame  func(ar *arena) []byte
	}{
		{"expiration 0", reasonRange, func(ar *arena) []byte {
			r := good(ar)
			r.Expiration = 0
			return rawFrame(tJoin, uint32(len(r.marshal())), r.marshal())
		}},
		{"expiration far future", reasonRange, func(ar *arena) []byte {
			r := good(ar)
			r.Expiration = math.MaxInt64
			return rawFrame(tJoin, uint32(len(r.marshal())), r.marshal())
		}},
		{"bandwidth 1e300", reasonRange, func(ar *arena) []byte {
			r := good(ar)
			r.Bandwidth = 1e300
			return rawFrame(tJoin, uint32(len(r.marshal())), r.marshal())
		}},
		{"frame 0xFFFFFFFF", reasonOversize, func(*arena) []byte { return rawFrame(tJoin, math.MaxUint32, nil) }},
		{"garbage", reasonMalformed, func(*arena) []byte { return rawFrame(tJoin, 3, []byte{1, 2, 3}) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ar := newArena(t, 3, 3000, func(c *Config) { c.TargetGroupSize = 3 })
			var out []stepOut
			alloc := allocated(func() {
				done := make(chan struct{})
				go func() { defer close(done); out = stepAll(ar.ps, keyWithAtk, 1, nil) }()
				for _, to := range ar.honest {
					s, err := ar.atk.NewStream(context.Background(), to, ProtoMatch)
					if err != nil {
						t.Fatal(err)
					}
					_ = s.SetDeadline(time.Now().Add(10 * time.Second))
					_, _ = s.Write(c.frame(ar))
					_, _ = io.Copy(io.Discard, s) // until the victim answers and closes
					_ = s.Reset()
				}
				<-done
			})
			for i := range ar.ps {
				if ar.refused(i, ProtoMatch, c.reason) == 0 {
					t.Fatalf("peer %d did not refuse (%s); refusals %+v", i, c.reason, ar.refs[i].Summary())
				}
			}
			if alloc > attackAlloc {
				t.Fatalf("allocated %d MiB under attack", alloc>>20)
			}
			ar.checkHonest(t, out)
			for i, o := range out {
				if slices.Contains(o.res.Members, ar.atk.ID()) {
					t.Fatalf("peer %d grouped with the attacker", i)
				}
			}
		})
	}
}

// TestNonCandidateJoin: a peer that is not among the step's candidates
// asks every honest peer, again and again, to lead it with a well-formed
// request (the earliest expiration allowed, a plain bandwidth). Every leader
// refuses it as "not-candidate" (counted once per peer and minute, however
// often it asks), it never becomes a member, and the honest round completes.
func TestNonCandidateJoin(t *testing.T) {
	// A fourth candidate that never answers keeps every honest peer
	// matchmaking until its window ends, while the attacker asks.
	ghost := testPeerID(t, 9)
	ar := newArena(t, 3, 3000, func(c *Config) {
		c.TargetGroupSize = 4
		c.MatchWindow = slow * time.Second
		c.MatchTimeout = 3 * c.MatchWindow
		c.RequestTimeout = slow * 200 * time.Millisecond
		peers := c.Peers
		c.Peers = func(ctx context.Context, key string) []peer.ID { return append(peers(ctx, key), ghost) }
	})
	ctx, cancel := context.WithCancel(context.Background())
	var joined []*groupInfo
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			for _, to := range ar.honest {
				req := joinRequest{Version: WireVersion, Group: groupKey{Key: keyHonest, Round: 1},
					Expiration: time.Now().Add(-clockSkew / 2).UnixNano(), VecLen: 3000, Bandwidth: 1, Codec: CodecNone}
				if g := ar.tryJoin(ctx, to, req); g != nil {
					joined = append(joined, g)
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	out := stepAll(ar.ps, keyHonest, 1, nil)
	cancel()
	wg.Wait()
	if len(joined) != 0 {
		t.Fatalf("the non-candidate joined %d groups", len(joined))
	}
	for i := range ar.ps {
		if n := ar.refused(i, ProtoMatch, reasonNotCand); n != 1 {
			t.Errorf("peer %d counted %d not-candidate refusals, want 1", i, n)
		}
	}
	ar.checkHonest(t, out)
}

// follow joins the honest peers' group on key as a client (it reduces
// nothing) and returns the group its leader started.
func (ar *arena) follow(ctx context.Context, key string, vecLen int) (*groupInfo, error) {
	for ctx.Err() == nil {
		for _, to := range ar.honest {
			req := joinRequest{Version: WireVersion, Group: groupKey{Key: key, Round: 1},
				Expiration: time.Now().Add(ar.cfg.MatchTimeout).UnixNano(), // after everyone: anyone leads it
				VecLen:     uint64(vecLen), Client: true, Codec: CodecNone}
			if g := ar.tryJoin(ctx, to, req); g != nil {
				return g, nil
			}
		}
		select { // the honest peers may not be looking yet: ask again shortly
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil, ctx.Err()
}

func (ar *arena) tryJoin(ctx context.Context, to peer.ID, req joinRequest) *groupInfo {
	s, err := ar.atk.NewStream(ctx, to, ProtoMatch)
	if err != nil {
		return nil
	}
	defer s.Reset()
	_ = s.SetDeadline(time.Now().Add(ar.cfg.MatchTimeout))
	if writeFrame(s, tJoin, req.marshal()) != nil {
		return nil
	}
	typ, b, err := readFrame(s, maxJoinFrame, nil)
	if err != nil || typ != tJoinReply {
		return nil
	}
	if rep, err := unmarshalJoinReply(b); err != nil || rep.Status != joinAccepted {
		return nil
	}
	for {
		typ, b, err := readFrame(s, maxGroupFrame, nil)
		if err != nil {
			return nil
		}
		switch typ {
		case tBegin:
			_ = writeFrame(s, tAck, []byte{1})
		case tStart:
			g, err := unmarshalGroupInfo(b)
			if err != nil {
				return nil
			}
			return &g
		default:
			return nil
		}
	}
}

// TestHostileMember: the attacker gets into the honest peers' group and
// then sends each reducer the worst it can: a huge weight, another vector
// length, another member's index, a part frame declaring 4 GiB, half a part
// and then silence, or 64 streams at once. Each reducer refuses it, drops it
// from the round, and the honest peers average everything among themselves.
func TestHostileMember(t *testing.T) {
	type attack func(t *testing.T, s network.Stream, hdr reduceHeader, partLen int)
	header := func(s network.Stream, hdr reduceHeader) {
		_ = writeFrame(s, tReduceHeader, hdr.marshal())
	}
	cases := []struct {
		name, reason string
		streams      int // parallel streams per reducer
		attack       attack
	}{
		{"weight 1e30", reasonRange, 1, func(t *testing.T, s network.Stream, hdr reduceHeader, _ int) {
			hdr.Weight = 1e30
			header(s, hdr)
		}},
		{"vector length", reasonRange, 1, func(t *testing.T, s network.Stream, hdr reduceHeader, _ int) {
			hdr.VecLen = 1 << 40
			header(s, hdr)
		}},
		{"another member's index", reasonNotMember, 1, func(t *testing.T, s network.Stream, hdr reduceHeader, _ int) {
			hdr.Sender = (hdr.Sender + 1) % 4
			header(s, hdr)
		}},
		{"part frame 0xFFFFFFFF", reasonOversize, 1, func(t *testing.T, s network.Stream, hdr reduceHeader, _ int) {
			header(s, hdr)
			_, _ = s.Write(rawFrame(tPart, math.MaxUint32, []byte{0, 0, 0, 0, 0, 0}))
		}},
		{"stalled sender", reasonStall, 1, func(t *testing.T, s network.Stream, hdr reduceHeader, partLen int) {
			header(s, hdr)
			n := partFrame(CodecNone, partLen, 0)
			_, _ = s.Write(rawFrame(tPart, uint32(n), make([]byte, n/2))) // then nothing
		}},
		{"64 streams", reasonFlood, 64, func(t *testing.T, s network.Stream, hdr reduceHeader, _ int) {
			header(s, hdr)
		}},
	}
	const n, vecLen = 3, 6000
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ar := newArena(t, n, vecLen, func(c *Config) {
				roomyMatch(c) // the attacker must be in the group
				c.TargetGroupSize = n + 1
				c.SenderTimeout = slow * 500 * time.Millisecond
				c.ReducerTimeout = slow * time.Second
			})
			ctx, cancel := context.WithTimeout(context.Background(), slow*30*time.Second)
			defer cancel()
			var out []stepOut
			alloc := allocated(func() {
				done := make(chan struct{})
				go func() { defer close(done); out = stepAll(ar.ps, keyWithAtk, 1, nil) }()
				g, err := ar.follow(ctx, keyWithAtk, vecLen)
				if err != nil {
					t.Fatalf("attacker never got into the group: %v", err)
				}
				self := g.index(ar.atk.ID())
				lay := partition(int(g.VecLen), g.Members, int(g.PartSize))
				hdr := reduceHeader{Version: WireVersion, Group: g.ID, Sender: uint16(self), Weight: 1, VecLen: g.VecLen, Codec: g.Codec}
				var wg sync.WaitGroup
				for j, m := range g.Members {
					if j == self || len(lay.Parts[j]) == 0 {
						continue
					}
					for range c.streams {
						wg.Add(1)
						go func() {
							defer wg.Done()
							s, err := ar.atk.NewStream(ctx, m.ID, ProtoReduce)
							if err != nil {
								return
							}
							defer s.Reset()
							_ = s.SetDeadline(time.Now().Add(slow * 20 * time.Second))
							c.attack(t, s, hdr, lay.Parts[j][0].End-lay.Parts[j][0].Start)
							_, _ = io.Copy(io.Discard, s) // hold the stream until the reducer drops it
						}()
					}
				}
				<-done
				cancel() // the attacker's streams go with the round
				wg.Wait()
			})
			if got := ar.refusedAll(ProtoReduce, c.reason); got == 0 {
				t.Fatalf("no reducer refused the attacker (%s); refusals %+v", c.reason, ar.refs[0].Summary())
			}
			if c.streams > 1 {
				for i, r := range ar.refs {
					if r.Summary().Offenders == 0 && ar.refused(i, ProtoReduce, reasonFlood) > 0 {
						t.Fatalf("peer %d: a flooding peer was not named an offender: %+v", i, r.Summary())
					}
				}
			}
			t.Logf("allocated %d MiB during the attack", alloc>>20)
			if alloc > attackAlloc {
				t.Fatalf("allocated %d MiB under attack", alloc>>20)
			}
			ar.checkHonest(t, out)
		})
	}
}

// TestHostileGossip: as initiator the attacker declares a weight of 1e30 or
// sends a part frame declaring 4 GiB; as responder it answers with a weight
// of 1e30. The victim refuses each; the honest peers' round completes.
func TestHostileGossip(t *testing.T) {
	const vecLen = 3000
	hdr := gossipHeader{Version: WireVersion, Key: keyAttack, Round: 1, Weight: 1, VecLen: vecLen, Codec: CodecNone}
	cases := []struct {
		name, reason string
		initiate     func(s network.Stream) // the attacker opens the exchange
		respond      func(s network.Stream) // the attacker answers the victim
	}{
		{"header weight 1e30", reasonRange, func(s network.Stream) {
			h := hdr
			h.Weight = 1e30
			_ = writeFrame(s, tGossipHeader, h.marshal())
		}, nil},
		{"part frame 0xFFFFFFFF", reasonOversize, func(s network.Stream) {
			_ = writeFrame(s, tGossipHeader, hdr.marshal())
			if typ, b, err := readFrame(s, maxSmallFrame, nil); err != nil || typ != tGossipReply || b[0] != gossipOK {
				return
			}
			_, _ = s.Write(rawFrame(tPart, math.MaxUint32, []byte{0, 0, 0, 0, 0, 0}))
		}, nil},
		{"reply weight 1e30", reasonRange, nil, func(s network.Stream) {
			var e enc
			e.u8(gossipOK)
			e.f64(1e30)
			_ = writeFrame(s, tGossipReply, e.b)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ar := newArena(t, 3, vecLen, func(c *Config) { c.GossipTimeout = slow * 2 * time.Second })
			ar.atk.SetStreamHandler(ProtoGossip, func(s network.Stream) {
				defer s.Reset()
				_ = s.SetDeadline(time.Now().Add(slow * 5 * time.Second))
				if _, _, err := readFrame(s, maxHeaderFrame, nil); err != nil || c.respond == nil {
					return
				}
				c.respond(s)
				_, _ = io.Copy(io.Discard, s)
			})
			victim := ar.ps[0]
			var out []stepOut
			alloc := allocated(func() {
				var wg sync.WaitGroup
				wg.Add(1)
				go func() { // the victim gossips with the attacker alone
					defer wg.Done()
					vec := slices.Clone(victim.orig)
					_, _ = victim.a.Gossip(context.Background(), keyAttack, 1, vec, 1)
				}()
				if c.initiate != nil {
					wg.Add(1)
					go func() { // until the victim is gossiping and refuses
						defer wg.Done()
						until := time.Now().Add(slow * 10 * time.Second)
						for ar.refused(0, ProtoGossip, c.reason) == 0 && time.Now().Before(until) {
							s, err := ar.atk.NewStream(context.Background(), victim.h.ID(), ProtoGossip)
							if err != nil {
								return
							}
							_ = s.SetDeadline(time.Now().Add(slow * 5 * time.Second))
							c.initiate(s)
							_, _ = io.Copy(io.Discard, s)
							_ = s.Reset()
							if ar.refs[0].Banned(ar.atk.ID()) {
								return
							}
						}
					}()
				}
				out = stepAll(ar.ps, keyHonest, 1, nil)
				wg.Wait()
			})
			if ar.refused(0, ProtoGossip, c.reason) == 0 {
				t.Fatalf("victim did not refuse (%s): %+v", c.reason, ar.refs[0].Summary())
			}
			if alloc > attackAlloc {
				t.Fatalf("allocated %d MiB under attack", alloc>>20)
			}
			ar.checkHonest(t, out)
		})
	}
}

// TestStreamCapsBounded: a thousand fake peer IDs, each at its cap, never
// grow the stream table past maxStreamPeers, and it empties as they go.
func TestStreamCapsBounded(t *testing.T) {
	var c streamCaps
	var held []peer.ID
	refusedFlood, turnedAway := 0, 0
	for i := range 5000 {
		p := peer.ID(fmt.Sprintf("fake-%d", i))
		for range matchStreamsPerPeer + 1 {
			switch err := c.acquire(p, ProtoMatch, matchStreamsPerPeer); {
			case err == nil:
				held = append(held, p)
			case errors.Is(err, errFlood):
				refusedFlood++
			default:
				turnedAway++
			}
		}
		if c.len() > maxStreamPeers {
			t.Fatalf("%d peers in the table", c.len())
		}
	}
	if refusedFlood != maxStreamPeers || turnedAway != (5000-maxStreamPeers)*(matchStreamsPerPeer+1) {
		t.Fatalf("flood refusals %d, turned away %d", refusedFlood, turnedAway)
	}
	for _, p := range held {
		c.release(p, ProtoMatch)
	}
	if c.len() != 0 {
		t.Fatalf("%d entries left after every stream closed", c.len())
	}
}

// TestOwnWeightClamped: a weight above MaxWeight is clamped, so that a peer
// never sends what its peers (with the same config) would refuse.
func TestOwnWeightClamped(t *testing.T) {
	ps := newPeers(t, 2, 2000, func(_ int, c *Config) { c.MaxWeight = 10 })
	ps[0].w, ps[1].w = 1e6, 10
	out := stepAll(ps, "k", 1, nil)
	for i, o := range out {
		if o.err != nil || o.res.Fraction != 1 {
			t.Fatalf("peer %d: %v fraction %v", i, o.err, o.res.Fraction)
		}
	}
	for k := range ps[0].vec { // equal weights after the clamp
		want := (ps[0].orig[k] + ps[1].orig[k]) / 2
		if d := math.Abs(float64(ps[0].vec[k] - want)); d > 1e-5*(1+math.Abs(float64(want))) {
			t.Fatalf("value %d: %v, want %v", k, ps[0].vec[k], want)
		}
	}
}
