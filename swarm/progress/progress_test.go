package progress

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/internal/guard"
	"github.com/swarm-train/swarm/internal/testutil"
)

func rec(p string, shard int, epoch uint64, samples int, seq uint64) Record {
	return Record{Peer: p, Seq: seq, Shard: shard, State: StateOnline, Epoch: epoch, Samples: samples, Throughput: 10}
}

func TestTrackerOrderAndExpiry(t *testing.T) {
	tr := NewTracker(time.Second)
	t0 := time.Unix(1000, 0)
	if !tr.Update(rec("a", 0, 1, 10, 2), t0) {
		t.Fatal("first record refused")
	}
	if tr.Update(rec("a", 0, 0, 99, 1), t0) {
		t.Fatal("older record (lower seq) accepted")
	}
	if got := tr.Live(t0)[0].Samples; got != 10 {
		t.Fatalf("samples = %d, want 10", got)
	}
	// A restarted peer starts its sequence again; once the old record
	// expired its new records are taken.
	if !tr.Update(rec("a", 0, 0, 5, 1), t0.Add(2*time.Second)) {
		t.Fatal("record after expiry refused")
	}
	if n := len(tr.Live(t0.Add(4 * time.Second))); n != 0 {
		t.Fatalf("%d live records after ttl, want 0", n)
	}
}

func TestSummarize(t *testing.T) {
	recs := []Record{
		rec("a", 0, 3, 64, 1), rec("b", 0, 3, 128, 1), rec("c", 1, 3, 192, 1),
		{Peer: "d", Shard: 1, State: StateOnline, Epoch: 3, Loss: 0.5, Throughput: 5},
		{Peer: "e", Shard: 1, State: StateOnline, Epoch: 3, Loss: 0.25, Throughput: 5},
		rec("f", 0, 2, 1000, 1), // behind: its samples are from an older epoch
	}
	s := Summarize(recs, 2)
	if s.Epoch != 3 || s.Samples != 192 {
		t.Fatalf("epoch %d samples %d, want 3 and 192", s.Epoch, s.Samples)
	}
	if s.Loss != 0.375 {
		t.Fatalf("loss %v, want 0.375", s.Loss)
	}
	if s.ShardTP[0] != 30 || s.ShardTP[1] != 20 || len(s.ShardPeers[1]) != 3 {
		t.Fatalf("per shard %v %v", s.ShardTP, s.ShardPeers)
	}
	if s.Throughput != 30 {
		t.Fatalf("throughput %v, want 30", s.Throughput)
	}
}

func TestDecodeRejects(t *testing.T) {
	bad := []string{
		``, `{}`, `{"peer":"x","state":"weird"}`, `{"peer":"x","state":"online","rate":-1}`,
		`{"peer":"x","state":"online","shard":-2}`, `[1,2]`, `{"peer":"x","state":"online","samples":-5}`,
		`{"peer":"x","state":"online","in_flight":-64}`,
		`{"peer":"x","state":"online","norms":[{"epoch":1,"norm_sq":-1}]}`,
		`{"peer":"x","state":"online","norms":[{},{},{},{},{}]}`,
		`{"peer":"x","state":"online","banned":["a","b","c","d","e","f","g","h","i"]}`,
		`{"peer":"x","state":"online","banned":[""]}`,
		`{"peer":"x","state":"online","banned":["` + strings.Repeat("p", 129) + `"]}`,
	}
	for _, b := range bad {
		if _, err := Decode([]byte(b)); err == nil {
			t.Errorf("Decode(%q) accepted", b)
		}
	}
	if _, err := Decode(bytes.Repeat([]byte(" "), MaxRecordSize+1)); err == nil {
		t.Error("oversized record accepted")
	}
}

func TestNormAt(t *testing.T) {
	r := rec("a", 1, 7, 0, 1)
	r.Norms = []EpochNorm{{6, 2.5}, {7, 0.25}}
	b, _ := r.Encode()
	d, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := d.NormAt(7); !ok || v != 0.25 {
		t.Fatalf("NormAt(7) = %v, %v", v, ok)
	}
	if _, ok := d.NormAt(5); ok {
		t.Fatal("NormAt(5) found a norm the record does not hold")
	}
}

func FuzzReadRecord(f *testing.F) {
	r := rec("12D3KooW", 1, 7, 64, 3)
	b, _ := r.Encode()
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(b)))
	f.Add(append(hdr[:], b...))
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	r.InFlight, r.Norms, r.Banned = 64, []EpochNorm{{6, 2.5}, {7, 0.25}}, []string{"12D3KooWliar"}
	b, _ = r.Encode()
	binary.BigEndian.PutUint32(hdr[:], uint32(len(b)))
	f.Add(append(hdr[:], b...))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	r.Epoch, r.Shard, r.Samples = math.MaxUint64, 9, 1<<40
	b, _ = r.Encode()
	binary.BigEndian.PutUint32(hdr[:], uint32(len(b)))
	f.Add(append(hdr[:], b...))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ReadRecord(bytes.NewReader(data))
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("decoded record does not validate: %v", err)
		}
		if err := r.Check(Limits{Shards: 4, MaxSamples: 1024, MaxEpoch: 100}); err == nil &&
			(r.Shard >= 4 || r.Samples > 1024 || r.InFlight > 1024 || r.Epoch > 100) {
			t.Fatalf("out-of-range record passes Check: %+v", r)
		}
		b, err := r.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Decode(b); err != nil {
			t.Fatalf("re-encoded record fails: %v", err)
		}
	})
}

func newHost(t *testing.T) host.Host { return testutil.Host(t) }

// TestGossipReal: three real hosts on loopback push records; every tracker
// ends with all three; a record naming another peer is dropped.
func TestGossipReal(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	hs := []host.Host{newHost(t), newHost(t), newHost(t)}
	for _, a := range hs {
		for _, b := range hs {
			if a != b {
				a.Peerstore().AddAddrs(b.ID(), b.Addrs(), time.Hour)
			}
		}
	}
	ids := func() []peer.ID { return []peer.ID{hs[0].ID(), hs[1].ID(), hs[2].ID()} }
	ref, err := guard.New(nil, nil, guard.Policy{Strikes: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var trs []*Tracker
	var gs []*Gossip
	for i, h := range hs {
		tr := NewTracker(10 * time.Second)
		trs = append(trs, tr)
		g := NewGossip(h, "run", tr, ids, func() Record { return Record{Shard: i % 2, State: StateOnline, Samples: i} }, log)
		g.SetRefusals(ref)
		defer g.Close()
		gs = append(gs, g)
	}
	for _, g := range gs {
		go g.Run(ctx, 50*time.Millisecond, time.Millisecond)
	}
	for i, tr := range trs {
		testutil.Eventually(t, 10*time.Second, func() string {
			return fmt.Sprintf("tracker %d has %d records, want 3", i, len(tr.Live(time.Now())))
		}, func() bool { return len(tr.Live(time.Now())) == 3 })
	}
	// Spoofing: host 0 sends a record in host 2's name to host 1, which
	// refuses it (the only refusal of the test).
	spoof := rec(hs[2].ID().String(), 1, 99, 1, 1<<60)
	spoof.RunID = "run"
	b, _ := spoof.Encode()
	g := &Gossip{h: hs[0]}
	if err := g.send(ctx, hs[1].ID(), b); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, testutil.Says("the spoofed record refused"), func() bool {
		return refusals(ref)[whyPeer] == 1
	})
	for _, r := range trs[1].Live(time.Now()) {
		if r.Epoch == 99 {
			t.Fatal("spoofed record accepted")
		}
	}
}

// refusals counts the refused records by reason.
func refusals(ref *guard.Refusals) map[string]uint64 {
	got := map[string]uint64{}
	for _, c := range ref.Summary().Refusals {
		got[c.Reason] += c.Count
	}
	return got
}

// TestGossipOnItsClock: Run pushes on the ticks of the gossip's clock, and
// the receiver stamps records with its own clock, on which they expire
// after the tracker's TTL.
func TestGossipOnItsClock(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, b := newHost(t), newHost(t)
	a.Peerstore().AddAddrs(b.ID(), b.Addrs(), time.Hour)
	ids := func() []peer.ID { return []peer.ID{a.ID(), b.ID()} }
	clkA, clkB := clock.NewManual(time.Unix(1000, 0)), clock.NewManual(time.Unix(5000, 0))
	var samples atomic.Int64
	ga := NewGossip(a, "run", NewTracker(time.Minute), ids, func() Record {
		return Record{State: StateOnline, Samples: int(samples.Load())}
	}, log)
	ga.SetClock(clkA)
	defer ga.Close()
	const ttl = 8 * time.Second
	tb := NewTracker(ttl)
	gb := NewGossip(b, "run", tb, ids, func() Record { return Record{State: StateOnline} }, log)
	gb.SetClock(clkB)
	defer gb.Close()
	atB := func() (Record, bool) {
		for _, r := range tb.Live(clkB.Now()) {
			if r.Peer == a.ID().String() {
				return r, true
			}
		}
		return Record{}, false
	}
	go ga.Run(ctx, time.Second, time.Millisecond)
	testutil.Eventually(t, 10*time.Second, testutil.Says("a's first push at b"), func() bool { _, ok := atB(); return ok })
	clkA.BlockUntil(1) // Run waits for its next tick
	samples.Store(7)
	clkA.Advance(time.Second)
	testutil.Eventually(t, 10*time.Second, testutil.Says("the push of a's next tick at b"), func() bool {
		r, ok := atB()
		return ok && r.Samples == 7
	})
	// b's clock alone ages the record: a's pushes wait for a's ticks.
	clkB.Advance(ttl - time.Millisecond)
	if _, ok := atB(); !ok {
		t.Fatalf("record gone before its TTL of %v on b's clock", ttl)
	}
	clkB.Advance(time.Millisecond)
	if _, ok := atB(); ok {
		t.Fatalf("record alive %v after its last push on b's clock", ttl)
	}
}

// TestGossipPushAfterClose: a push asked for after Close (Run still going
// while its owner shuts down) starts nothing that Close would miss.
func TestGossipPushAfterClose(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, b := newHost(t), newHost(t)
	a.Peerstore().AddAddrs(b.ID(), b.Addrs(), time.Hour)
	g := NewGossip(a, "run", NewTracker(time.Minute), func() []peer.ID { return []peer.ID{b.ID()} },
		func() Record { return Record{State: StateOnline} }, log)
	g.Close()
	g.PushNow(context.Background())
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.busy) != 0 {
		t.Fatalf("%d pushes started after Close", len(g.busy))
	}
}

// TestGossipForgetsClosedPeer: when a peer's host goes away, the others
// drop its record at once instead of keeping it until it expires.
func TestGossipForgetsClosedPeer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, b := newHost(t), newHost(t)
	a.Peerstore().AddAddrs(b.ID(), b.Addrs(), time.Hour)
	b.Peerstore().AddAddrs(a.ID(), a.Addrs(), time.Hour)
	ids := func() []peer.ID { return []peer.ID{a.ID(), b.ID()} }
	ta, tb := NewTracker(time.Hour), NewTracker(time.Hour)
	ga := NewGossip(a, "run", ta, ids, func() Record { return Record{State: StateOnline} }, log)
	defer ga.Close()
	gb := NewGossip(b, "run", tb, ids, func() Record { return Record{State: StateOnline} }, log)
	go ga.Run(ctx, 50*time.Millisecond, time.Millisecond)
	bctx, bcancel := context.WithCancel(ctx)
	go gb.Run(bctx, 50*time.Millisecond, time.Millisecond)
	has := func(tr *Tracker, p peer.ID) bool {
		for _, r := range tr.Live(time.Now()) {
			if r.Peer == p.String() {
				return true
			}
		}
		return false
	}
	testutil.Eventually(t, 10*time.Second, testutil.Says("b's record at a"), func() bool { return has(ta, b.ID()) })
	bcancel()
	gb.Close()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// The record would live for an hour; only the closed connection can
	// remove it.
	testutil.Eventually(t, 10*time.Second, testutil.Says("a to forget b"), func() bool { return !has(ta, b.ID()) })
}
