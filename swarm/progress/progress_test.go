package progress

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
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

// A record that says its node publishes every 10 s lives three of those
// intervals, past the tracker's TTL; a claim beyond MaxEvery is malformed.
func TestTrackerEvery(t *testing.T) {
	tr := NewTracker(time.Second)
	t0 := time.Unix(1000, 0)
	r := rec("a", 0, 1, 1, 1)
	r.EveryMS = 10_000
	tr.Update(r, t0)
	if _, ok := tr.Get("a", t0.Add(29*time.Second)); !ok {
		t.Fatal("record gone before three of its intervals")
	}
	if _, ok := tr.Get("a", t0.Add(30*time.Second)); ok {
		t.Fatal("record alive after three of its intervals")
	}
	r.EveryMS = MaxEvery.Milliseconds() + 1
	b, _ := r.Encode()
	if _, err := Decode(b); err == nil {
		t.Fatal("every_ms over MaxEvery accepted")
	}
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

// gossips starts n connected loopback hosts, each with a Gossip of the run
// publishing self(i), and runs them until the test ends.
func gossips(t *testing.T, n int, ttl time.Duration, self func(i int) Record) ([]host.Host, []*Gossip, []*Tracker) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var hs []host.Host
	var gs []*Gossip
	var trs []*Tracker
	for i := range n {
		h := newHost(t)
		for _, o := range hs {
			testutil.Connect(t, h, o)
		}
		tr := NewTracker(ttl)
		g, err := NewGossip(h, "run", tr, func() Record { return self(i) }, log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(g.Close)
		hs, gs, trs = append(hs, h), append(gs, g), append(trs, tr)
	}
	for _, g := range gs {
		go g.Run(ctx, 50*time.Millisecond, time.Millisecond)
	}
	return hs, gs, trs
}

// TestGossipReal: three real hosts on loopback publish records on the run's
// topic; every tracker ends with all three, each bound to its author.
func TestGossipReal(t *testing.T) {
	hs, _, trs := gossips(t, 3, 10*time.Second, func(i int) Record {
		return Record{Shard: i % 2, State: StateOnline, Samples: i}
	})
	for i, tr := range trs {
		testutil.Eventually(t, 10*time.Second, func() string {
			return fmt.Sprintf("tracker %d has %d records, want 3", i, len(tr.Live(time.Now())))
		}, func() bool { return len(tr.Live(time.Now())) == 3 })
		for j, h := range hs {
			r, ok := tr.Get(h.ID().String(), time.Now())
			if !ok || r.Samples != j || r.Shard != j%2 || r.RunID != "run" {
				t.Fatalf("tracker %d holds %+v for host %d", i, r, j)
			}
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

// TestGossipOnItsClock: Run publishes on the ticks of the gossip's clock,
// and the receiver stamps records with its own clock, on which they expire
// after the tracker's TTL: a peer that stops publishing (killed, or out of
// reach) is dropped by time, whatever the connections.
func TestGossipOnItsClock(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, b := newHost(t), newHost(t)
	testutil.Connect(t, a, b)
	clkA, clkB := clock.NewManual(time.Unix(1000, 0)), clock.NewManual(time.Unix(5000, 0))
	var samples atomic.Int64
	ga, err := NewGossip(a, "run", NewTracker(time.Minute), func() Record {
		return Record{State: StateOnline, Samples: int(samples.Load())}
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	ga.SetClock(clkA)
	defer ga.Close()
	const ttl = 8 * time.Second
	tb := NewTracker(ttl)
	gb, err := NewGossip(b, "run", tb, func() Record { return Record{State: StateOnline} }, log)
	if err != nil {
		t.Fatal(err)
	}
	gb.SetClock(clkB)
	defer gb.Close()
	atB := func() (Record, bool) { return tb.Get(a.ID().String(), clkB.Now()) }
	// Until the mesh forms a publish may reach nobody: tick until b has one.
	go ga.Run(ctx, time.Second, time.Millisecond)
	testutil.Eventually(t, 20*time.Second, testutil.Says("a's first record at b"), func() bool {
		if _, ok := atB(); ok {
			return true
		}
		if clkA.Pending() > 0 {
			clkA.Advance(time.Second)
		}
		return false
	})
	clkA.BlockUntil(1) // Run waits for its next tick
	samples.Store(7)
	clkA.Advance(time.Second)
	testutil.Eventually(t, 10*time.Second, testutil.Says("the record of a's next tick at b"), func() bool {
		r, ok := atB()
		return ok && r.Samples == 7
	})
	// b's clock alone ages the record: a's publishes wait for a's ticks.
	clkB.Advance(ttl - time.Millisecond)
	if _, ok := atB(); !ok {
		t.Fatalf("record gone before its TTL of %v on b's clock", ttl)
	}
	clkB.Advance(time.Millisecond)
	if _, ok := atB(); ok {
		t.Fatalf("record alive %v after its last publish on b's clock", ttl)
	}
}

// TestGossipPushAfterClose: a publish asked for after Close (Run still going
// while its owner shuts down) sends nothing.
func TestGossipPushAfterClose(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	g, err := NewGossip(newHost(t), "run", NewTracker(time.Minute), func() Record { return Record{State: StateOnline} }, log)
	if err != nil {
		t.Fatal(err)
	}
	g.Close()
	g.Close()
	g.PushNow(context.Background())
	g.Run(context.Background(), time.Millisecond, time.Millisecond) // returns at once
	if n := g.Traffic().Published.Load(); n != 0 {
		t.Fatalf("%d records published after Close", n)
	}
}

// TestGossipForgetsLeavingPeer: a node that leaves says so on the topic and
// the others drop its record at once instead of keeping it until it
// expires (here an hour).
func TestGossipForgetsLeavingPeer(t *testing.T) {
	hs, gs, trs := gossips(t, 3, time.Hour, func(int) Record { return Record{State: StateOnline} })
	for _, tr := range trs {
		testutil.Eventually(t, 10*time.Second, testutil.Says("three records"), func() bool { return tr.Len() == 3 })
	}
	gs[2].Close()
	for i := range 2 {
		testutil.Eventually(t, 10*time.Second, testutil.Says("the leaver forgotten"), func() bool {
			_, ok := trs[i].Get(hs[2].ID().String(), time.Now())
			return !ok
		})
	}
}

// Gap grows with the live peers past FreePeers (the swarm's budget),
// between minGap and MaxEvery.
// Up to FreePeers every node heralds its epoch changes; in larger swarms
// about Heralds of them do for each epoch, a different few each epoch.
func TestHerald(t *testing.T) {
	if !Herald("p", 1, FreePeers) {
		t.Fatalf("a swarm of %d: every node publishes epoch changes at once", FreePeers)
	}
	for _, live := range []int{100, 1000} {
		var counts []int
		sets := map[uint64]string{}
		for e := range uint64(20) {
			var who []string
			for i := range live {
				if p := fmt.Sprintf("peer-%d", i); Herald(p, e, live) {
					who = append(who, p)
				}
			}
			counts, sets[e] = append(counts, len(who)), fmt.Sprint(who)
		}
		slices.Sort(counts)
		if med := counts[len(counts)/2]; med < Heralds/2 || med > 2*Heralds {
			t.Errorf("%d live: median %d heralds an epoch, want about %d (%v)", live, med, Heralds, counts)
		}
		if counts[0] == 0 {
			t.Errorf("%d live: an epoch without a herald (%v)", live, counts)
		}
		if sets[0] == sets[1] {
			t.Errorf("%d live: the same heralds in epochs 0 and 1: %s", live, sets[0])
		}
	}
}

func TestGap(t *testing.T) {
	for _, c := range []struct {
		live int
		want time.Duration
	}{{1, 5 * time.Millisecond}, {4, 5 * time.Millisecond}, {9, 5 * time.Millisecond}, {108, 500 * time.Millisecond},
		{1008, 5 * time.Second}, {10000, MaxEvery}} {
		if got := Gap(c.live, 200, 5*time.Millisecond); got != c.want {
			t.Errorf("Gap(%d) = %v, want %v", c.live, got, c.want)
		}
	}
}

// FuzzCheckMessage: whatever a topic message holds, a record that passes
// the validator's checks is valid, within the run's limits, of the run and
// in its signed author's name.
func FuzzCheckMessage(f *testing.F) {
	author := "12D3KooWAcJmKDSa9WBuTGQT5T1f3PLRcoAtmmr2Z9KdoNVi7UDN"
	r := rec(author, 1, 7, 64, 3)
	r.RunID = "run"
	b, _ := r.Encode()
	f.Add(b)
	f.Add([]byte(`{}`))
	r.Epoch, r.Shard = 1<<40, 9
	b, _ = r.Encode()
	f.Add(b)
	f.Add(bytes.Repeat([]byte(" "), MaxRecordSize+1))
	id, err := peer.Decode(author)
	if err != nil {
		f.Fatal(err)
	}
	l := Limits{Shards: 4, MaxSamples: 1024, MaxEpoch: 100}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, why := checkMessage(data, id, nil, "run", l)
		if why != "" {
			if c.err == nil || c.rec != nil {
				t.Fatalf("refused (%s) without an error or with a record", why)
			}
			return
		}
		if err := c.rec.Validate(); err != nil {
			t.Fatalf("passed record does not validate: %v", err)
		}
		if err := c.rec.Check(l); err != nil || c.rec.Peer != author || c.rec.RunID != "run" {
			t.Fatalf("passed record %+v (check: %v)", c.rec, err)
		}
	})
}
