package redteam

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	mh "github.com/multiformats/go-multihash"

	"github.com/ipfs/go-cid"
)

// Shape is what the attacker knows of the run's layout (a manifest is
// public): the shard that takes pipeline requests, a legal micro-batch,
// activation and target values per sample.
type Shape struct {
	Shard            uint32
	N                uint32
	ActPerSample     int
	TargetsPerSample int
}

// streams opens n streams on proto from a at once, each writing msg and
// holding on until the victim ends it or hold passes. A stream the victim
// reset, closed or answered counts as refused; one it held the whole time
// (or served normally when served is set) as served.
func streams(ctx context.Context, a *Attacker, tl *tally, n int, hold time.Duration, msg func(i int) []byte) {
	parallel(ctx, n, n, func(i int) {
		got, ended, err := a.exchange(ctx, ProtoPipeline, msg(i), hold)
		switch {
		case err != nil:
			tl.add(1, 0, 0, 1)
		case timedOut(ended) && got == 0:
			tl.add(1, 0, 1, 0) // held silently for the whole hold
		default:
			tl.add(1, 1, 0, 0)
		}
	})
}

// PipelineOversize opens n pipeline streams at once from one identity,
// each declaring the largest counts the wire format can express (half of
// them 0xFFFFFFFF samples, half a legal sample count with 0xFFFFFFFF
// activation values), and then sends nothing, for at most hold.
func PipelineOversize(ctx context.Context, t Target, sh Shape, n int, hold time.Duration) Result {
	start, tl := time.Now(), &tally{}
	a, ok := joinedOrCounted(ctx, t, false, tl)
	if !ok {
		return tl.result("pipeline-oversize", start)
	}
	defer a.Close()
	streams(ctx, a, tl, n, hold, func(i int) []byte {
		if i%2 == 0 {
			return PipelineHeader(KindTrain, sh.Shard, 0, uint64(i), math.MaxUint32, 0, math.MaxUint32)
		}
		return PipelineHeader(KindTrain, sh.Shard, 0, uint64(i), sh.N, 0, math.MaxUint32)
	})
	return tl.result("pipeline-oversize", start)
}

// PipelineStall opens n pipeline streams at once from one identity, each
// declaring a legal micro-batch, sending 1 KiB of its activations and then
// nothing, for at most hold.
func PipelineStall(ctx context.Context, t Target, sh Shape, n int, hold time.Duration) Result {
	start, tl := time.Now(), &tally{}
	a, ok := joinedOrCounted(ctx, t, false, tl)
	if !ok {
		return tl.result("pipeline-stall", start)
	}
	defer a.Close()
	streams(ctx, a, tl, n, hold, func(i int) []byte {
		b := PipelineHeader(KindTrain, sh.Shard, 0, uint64(i), sh.N, 0, sh.N*uint32(sh.ActPerSample))
		return append(b, make([]byte, 1024)...)
	})
	return tl.result("pipeline-stall", start)
}

// hostile sends each message on a stream of its protocol, a fresh identity
// for every perID messages (the victim bans an identity after a few
// refusals; the next one starts clean), and counts how the victim answered.
type hostileMsg struct {
	proto protocol.ID
	what  string
	b     []byte
}

func sendHostile(ctx context.Context, t Target, tl *tally, msgs []hostileMsg, perID int, hold time.Duration) {
	var a *Attacker
	defer func() {
		if a != nil {
			a.Close()
		}
	}()
	for i, m := range msgs {
		if ctx.Err() != nil {
			return
		}
		if i%perID == 0 {
			if a != nil {
				a.Close()
			}
			var err error
			if a, err = joined(ctx, t, false); err != nil {
				tl.add(1, 0, 0, 1)
				tl.note("join: %v", err)
				a = nil
				continue
			}
		}
		_, ended, err := a.exchange(ctx, m.proto, m.b, hold)
		switch {
		case err != nil:
			tl.add(1, 0, 0, 1)
			tl.note("%s: %v", m.what, err)
		case timedOut(ended):
			tl.add(1, 0, 1, 0)
			tl.note("%s: held for %v", m.what, hold)
		default:
			tl.add(1, 1, 0, 0)
		}
	}
}

// Averaging sends matchmaking, reduce and gossip frames with hostile
// values to the victim: joins with expiration 0, bandwidth 1e300, a vector
// of 2^62 values, a frame of 0xFFFFFFFF bytes; reduce and gossip headers
// with weight 1e30 and frames of 0xFFFFFFFF bytes. key is a group key of the
// run (the trainer's is "<run>/shard/<i>/grad").
func Averaging(ctx context.Context, t Target, key string, hold time.Duration) Result {
	start, tl := time.Now(), &tally{}
	now := time.Now()
	good := JoinRequest{Key: key, Round: 1, Expiration: now.Add(2 * time.Second).UnixNano(), VecLen: 1000, Bandwidth: 1}
	j0, j1, j2 := good, good, good
	j0.Expiration = 0
	j1.Bandwidth = 1e300
	j2.VecLen = 1 << 62
	var g [16]byte
	g[0] = 0xAA
	msgs := []hostileMsg{
		{ProtoMatch, "join expiration 0", j0.Frame()},
		{ProtoMatch, "join bandwidth 1e300", j1.Frame()},
		{ProtoMatch, "join vector 2^62", j2.Frame()},
		{ProtoMatch, "join frame 0xFFFFFFFF", Frame(tJoin, math.MaxUint32, nil)},
		{ProtoReduce, "reduce weight 1e30", ReduceHeader(g, 0, 1e30, 1000, 0)},
		{ProtoReduce, "reduce frame 0xFFFFFFFF", Frame(tReduceHeader, math.MaxUint32, nil)},
		{ProtoGossip, "gossip weight 1e30", GossipHeader(key, 1, 1e30, 1000, 0)},
		{ProtoGossip, "gossip frame 0xFFFFFFFF", Frame(tGossipHeader, math.MaxUint32, nil)},
		{ProtoGossip, "gossip vector 2^62", GossipHeader(key, 1, 1, 1<<62, 0)},
	}
	sendHostile(ctx, t, tl, msgs, 4, hold)
	return tl.result("averaging", start)
}

// HostileLeader makes the attacker a candidate for the victim's averaging
// group for dur: it passes the hello, pushes progress records claiming to
// hold shard online in epoch, and answers every join the victim sends it by
// accepting and proposing a group with part size 0xFFFFFFFF (the message
// that once made both holders of a shard die out of memory). Notes say how
// many joins the victim sent.
func HostileLeader(ctx context.Context, t Target, shard int, epoch uint64, dur time.Duration) Result {
	start, tl := time.Now(), &tally{}
	a, ok := joinedOrCounted(ctx, t, true, tl)
	if !ok {
		return tl.result("averaging-leader", start)
	}
	defer a.Close()
	var joins atomic.Int64
	self := []byte(a.H.ID())
	a.H.SetStreamHandler(ProtoMatch, func(s network.Stream) {
		defer s.Reset()
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		var hdr [5]byte
		if _, err := io.ReadFull(s, hdr[:]); err != nil || hdr[0] != tJoin {
			return
		}
		n := binary.BigEndian.Uint32(hdr[1:])
		if n > 4096 {
			return
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(s, b); err != nil {
			return
		}
		req, ok := parseJoin(b)
		if !ok {
			return
		}
		joins.Add(1)
		var id [16]byte
		id[0], id[1] = 0xBA, 0xD0
		members := []Member{{ID: self, Bandwidth: 1}, {ID: []byte(s.Conn().RemotePeer()), Bandwidth: 1}}
		msg := append(JoinAccept(time.Now().UnixNano()),
			Group(tBegin, id, members, req.Codec, math.MaxUint32, req.VecLen)...)
		msg = append(msg, Group(tStart, id, members, req.Codec, math.MaxUint32, req.VecLen)...)
		if _, err := s.Write(msg); err != nil {
			tl.add(1, 0, 0, 1)
			return
		}
		_, err := io.Copy(io.Discard, s)
		if timedOut(err) {
			tl.add(1, 0, 1, 0)
		} else {
			tl.add(1, 1, 0, 0)
		}
	})
	end := time.Now().Add(dur)
	for seq := uint64(1); time.Now().Before(end) && ctx.Err() == nil; seq++ {
		rec := Record{"peer": a.H.ID().String(), "run_id": t.Run.String(), "seq": seq, "shard": shard,
			"state": "online", "device": "cpu", "rate": 1e9, "throughput": 100, "epoch": epoch, "accuracy": -1}
		_, _, _ = a.exchange(ctx, ProtoProgress, ProgressMessage(rec), 2*time.Second)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	tl.note("the victim sent %d joins", joins.Load())
	return tl.result("averaging-leader", start)
}

// StateSync floods the victim's state sync from one identity: requests
// header requests for shard, ten per stream over two streams at a time (as
// many as a donor serves one peer; each header request once froze a full
// copy of the shard's state), then conc streams at once (more than it
// serves), and then asks fresh identities for chunks of absurd ranges
// (chunk 0xFFFFFFFF of a real snapshot, a snapshot that does not exist,
// another shard's chunk, an unknown op).
func StateSync(ctx context.Context, t Target, shard uint32, requests, conc int, hold time.Duration) Result {
	start, tl := time.Now(), &tally{}
	a, ok := joinedOrCounted(ctx, t, false, tl)
	if !ok {
		return tl.result("statesync", start)
	}
	var next atomic.Int64
	var snap atomic.Uint64
	ask := func(perStream int) {
		s, err := a.H.NewStream(ctx, t.ID, ProtoState)
		if err != nil {
			tl.add(1, 0, 0, 1)
			return
		}
		defer s.Reset()
		_ = s.SetDeadline(time.Now().Add(hold))
		for range perStream {
			if _, err := s.Write(StateRequest(1, shard, 0, 0)); err != nil {
				tl.add(1, 0, 0, 1)
				return
			}
			ok, id := readStateFrame(s)
			if !ok {
				tl.add(1, 1, 0, 0)
				return
			}
			tl.add(1, 0, 1, 0)
			snap.Store(id)
		}
	}
	parallel(ctx, 2, 2, func(int) {
		for next.Add(10) <= int64(requests) && ctx.Err() == nil {
			ask(10)
		}
	})
	parallel(ctx, conc, conc, func(int) { ask(1) })
	a.Close()
	id := snap.Load()
	msgs := []hostileMsg{
		{ProtoState, "chunk 0xFFFFFFFF", StateRequest(2, shard, id, math.MaxUint32)},
		{ProtoState, "unknown snapshot", StateRequest(2, shard, id^0x5555, 0)},
		{ProtoState, "other shard's chunk", StateRequest(2, shard+1000, id, 0)},
		{ProtoState, "unknown op", StateRequest(9, shard, 0, 0)},
	}
	sendHostile(ctx, t, tl, msgs, 2, hold)
	return tl.result("statesync", start)
}

// readStateFrame reads one state-sync answer frame and reports whether it
// was a header (status OK) and its snapshot id.
func readStateFrame(r io.Reader) (bool, uint64) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return false, 0
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > 16<<20 {
		return false, 0
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil || hdr[0] != 0 || n < 8 {
		return false, 0
	}
	return true, binary.BigEndian.Uint64(b)
}

// Progress sends progress records with out-of-range fields (a shard of
// 2^30, an unknown state, negative rates and counts, 64 gradient norms, a
// number beyond float64, a record naming another peer or run), and records
// declaring 0xFFFFFFFF and 0 bytes, a few per fresh identity.
func Progress(ctx context.Context, t Target, hold time.Duration) Result {
	start, tl := time.Now(), &tally{}
	raw := func(body string) []byte { return ProgressRaw(uint32(len(body)), []byte(body)) }
	rec := func(mod func(r Record)) func(p peer.ID) []byte {
		return func(p peer.ID) []byte {
			r := Record{"peer": p.String(), "run_id": t.Run.String(), "seq": 1, "shard": 0, "state": "joining",
				"device": "cpu", "accuracy": -1}
			mod(r)
			return ProgressMessage(r)
		}
	}
	norms := make([]map[string]any, 64)
	for i := range norms {
		norms[i] = map[string]any{"epoch": i, "norm_sq": 1}
	}
	cases := []struct {
		what string
		msg  func(p peer.ID) []byte
	}{
		{"shard 2^30", rec(func(r Record) { r["shard"] = 1 << 30 })},
		{"state bogus", rec(func(r Record) { r["state"] = "bogus" })},
		{"rate -1", rec(func(r Record) { r["rate"] = -1 })},
		{"samples -5", rec(func(r Record) { r["samples"] = -5; r["in_flight"] = -1 })},
		{"64 norms", rec(func(r Record) { r["norms"] = norms })},
		{"loss 1e400", func(p peer.ID) []byte {
			return raw(fmt.Sprintf(`{"peer":%q,"run_id":%q,"seq":1,"shard":0,"state":"joining","loss":1e400}`, p, t.Run))
		}},
		{"another peer", rec(func(r Record) { r["peer"] = t.ID.String() })},
		{"length 0xFFFFFFFF", func(peer.ID) []byte { return ProgressRaw(math.MaxUint32, []byte("{")) }},
		{"length 0", func(peer.ID) []byte { return ProgressRaw(0, nil) }},
		{"garbage", func(peer.ID) []byte { return raw("\x00\xff not json") }},
	}
	var a *Attacker
	for i, c := range cases {
		if ctx.Err() != nil {
			break
		}
		if i%4 == 0 {
			if a != nil {
				a.Close()
			}
			var err error
			if a, err = joined(ctx, t, false); err != nil {
				tl.add(1, 0, 0, 1)
				tl.note("join: %v", err)
				a = nil
				continue
			}
		}
		_, ended, err := a.exchange(ctx, ProtoProgress, c.msg(a.H.ID()), hold)
		switch {
		case err != nil:
			tl.add(1, 0, 0, 1)
		case ended != nil && !timedOut(ended):
			tl.add(1, 1, 0, 0) // reset
		default:
			tl.add(1, 0, 1, 0) // closed as after a good record
		}
	}
	if a != nil {
		a.Close()
	}
	return tl.result("progress", start)
}

// FakePeers connects n fresh identities, conc at a time: each passes the
// hello of the (open) run, sends one progress record and one small legal
// evaluation request on the pipeline, reads the answers and goes away.
func FakePeers(ctx context.Context, t Target, sh Shape, n, conc int) Result {
	start, tl := time.Now(), &tally{}
	parallel(ctx, n, conc, func(i int) {
		a, err := joined(ctx, t, false)
		if err != nil {
			tl.add(1, 0, 0, 1)
			tl.note("identity %d: %v", i, err)
			return
		}
		defer a.Close()
		rec := Record{"peer": a.H.ID().String(), "run_id": t.Run.String(), "seq": 1, "shard": -1,
			"state": "joining", "device": "cpu", "accuracy": -1}
		_, _, err1 := a.exchange(ctx, ProtoProgress, ProgressMessage(rec), 3*time.Second)
		got, _, err2 := a.exchange(ctx, ProtoPipeline,
			PipelineRequest(KindEval, sh.Shard, 0, 1, sh.ActPerSample, sh.TargetsPerSample), 5*time.Second)
		switch {
		case err1 != nil || err2 != nil:
			tl.add(1, 0, 0, 1)
		case got > 0:
			tl.add(1, 0, 1, 0)
		default:
			tl.add(1, 1, 0, 0)
		}
	})
	return tl.result("fake-peers", start)
}

// NotAdmitted connects without the hello and opens each training protocol,
// writing a few bytes on each: every stream should be reset unread.
func NotAdmitted(ctx context.Context, t Target, hold time.Duration) Result {
	start, tl := time.Now(), &tally{}
	a, err := New(t, false)
	if err != nil {
		tl.add(0, 0, 0, 1)
		return tl.result("not-admitted", start)
	}
	defer a.Close()
	if err := a.Connect(ctx); err != nil {
		tl.add(0, 0, 0, 1)
		tl.note("connect: %v", err)
		return tl.result("not-admitted", start)
	}
	for _, p := range TrainingProtocols {
		got, ended, err := a.exchange(ctx, p, StateRequest(1, 0, 0, 0), hold)
		switch {
		case err != nil:
			tl.add(1, 1, 0, 0) // refused at negotiation or reset at once
		case got == 0 && ended != nil && !timedOut(ended):
			tl.add(1, 1, 0, 0)
		default:
			tl.add(1, 0, 1, 0)
			tl.note("%s answered %d bytes without a hello", p, got)
		}
	}
	return tl.result("not-admitted", start)
}

// ForgedHello sends malformed and lying hellos, each from a fresh identity:
// garbage, a run ID longer than any CID, bytes that are no CID, a token of
// 4 KiB, a verdict of 7, a truncated hello, another run's ID, and a good
// hello ended by a garbage (or out-of-range) final verdict. Served
// counts hellos the victim accepted (none should be).
func ForgedHello(ctx context.Context, t Target) Result {
	start, tl := time.Now(), &tally{}
	sum, _ := mh.Sum([]byte("another run"), mh.SHA2_256, -1)
	other := cid.NewCidV1(cid.Raw, sum)
	good := Hello{Run: t.Run.Bytes()}
	long, token, verdict := good, good, good
	long.Run = make([]byte, 200)
	token.Token = make([]byte, 4096)
	verdict.Verdict = 7
	full := good.Encode()
	cases := []struct {
		what       string
		b, verdict []byte
	}{
		{"garbage", []byte("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff garbage"), nil},
		{"run ID of 200 bytes", long.Encode(), nil},
		{"run ID not a CID", Hello{Run: []byte("not a cid at all")}.Encode(), nil},
		{"token of 4 KiB", token.Encode(), nil},
		{"verdict 7", verdict.Encode(), nil},
		{"truncated", full[:len(full)/2], nil},
		{"another run", Hello{Run: other.Bytes()}.Encode(), full},
		{"garbage final verdict", full, []byte("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff garbage")},
		{"final verdict of 7", full, verdict.Encode()},
	}
	for _, c := range cases {
		if ctx.Err() != nil {
			break
		}
		a, err := New(t, false)
		if err != nil {
			tl.add(1, 0, 0, 1)
			continue
		}
		if err := a.Connect(ctx); err != nil {
			tl.add(1, 0, 0, 1)
		} else if err := a.SendHello(ctx, c.b, c.verdict); err != nil || !a.Admitted(ctx) {
			tl.add(1, 1, 0, 0)
		} else {
			tl.add(1, 0, 1, 0)
			tl.note("%s: admitted", c.what)
		}
		a.Close()
	}
	return tl.result("forged-hello", start)
}

// Admitted reports whether the victim serves a its training protocols: it
// asks state sync for an unknown op, which an admitted peer gets an error
// frame for and a stranger a reset.
func (a *Attacker) Admitted(ctx context.Context) bool {
	got, _, err := a.exchange(ctx, ProtoState, StateRequest(9, 0, 0, 0), 3*time.Second)
	return err == nil && got > 0
}

// joinedOrCounted is joined for an attack: a failure to join is counted as
// one failed message with its reason, and ok is false.
func joinedOrCounted(ctx context.Context, t Target, listen bool, tl *tally) (*Attacker, bool) {
	a, err := joined(ctx, t, listen)
	if err != nil {
		tl.add(0, 0, 0, 1)
		tl.note("join: %v", err)
		return nil, false
	}
	return a, true
}
