package progress

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/guard"
	"github.com/swarm-train/swarm/internal/testutil"
)

// A peer pushing records whose numbers the run does not allow (a far-future
// epoch, a shard the run lacks, more samples than the target batch, an
// absurd rate) has each refused and counted, and none stored.
func TestGossipRefusesOutOfRange(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	victim, attacker := newHost(t), newHost(t)
	attacker.Peerstore().AddAddrs(victim.ID(), victim.Addrs(), time.Hour)
	tr := NewTracker(time.Hour)
	g := NewGossip(victim, "run", tr, func() []peer.ID { return nil }, func() Record { return Record{State: StateOnline} }, log)
	defer g.Close()
	ref, err := guard.New(nil, nil, guard.Policy{Strikes: 1000})
	if err != nil {
		t.Fatal(err)
	}
	g.SetRefusals(ref)
	g.SetLimits(Limits{Shards: 2, MaxSamples: 512, MaxEpoch: 100})
	base := Record{Peer: attacker.ID().String(), RunID: "run", Seq: 1, State: StateOnline}
	bad := []func(r *Record){
		func(r *Record) { r.Epoch = math.MaxUint64 },
		func(r *Record) { r.Shard = 2 },
		func(r *Record) { r.Samples = 513 },
		func(r *Record) { r.InFlight = 1 << 40 },
		func(r *Record) { r.Rate = 1e300 },
		func(r *Record) { r.Norms = []EpochNorm{{Epoch: 1 << 60, NormSq: 1}} },
		func(r *Record) { r.Peer = "someone else" },
		func(r *Record) { r.RunID = "another run" },
	}
	for i, mut := range bad {
		r := base
		r.Seq = uint64(i + 1)
		mut(&r)
		b, err := json.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		push(t, attacker, victim.ID(), b)
	}
	push(t, attacker, victim.ID(), []byte("{not json"))
	// The rate fails Validate in the decoder: malformed, like bad JSON.
	want := fmt.Sprint(map[string]uint64{whyRange: 5, whyPeer: 1, whyRun: 1, whyMalformed: 2})
	testutil.Eventually(t, 5*time.Second, func() string { return fmt.Sprintf("refusals %v, want %v", refusals(ref), want) },
		func() bool { return fmt.Sprint(refusals(ref)) == want })
	if n := tr.Len(); n != 0 {
		t.Fatalf("%d records stored", n)
	}
}

// push sends one length-prefixed record body from a hostile host.
func push(t *testing.T, from host.Host, to peer.ID, b []byte) {
	t.Helper()
	s, err := from.NewStream(context.Background(), to, Protocol)
	if err != nil {
		t.Fatal(err)
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(b)))
	if _, err := s.Write(append(hdr[:], b...)); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
}

// Records of 2,000 peers fill the tracker up to MaxPeers; the rest wait
// for records to expire.
func TestTrackerBounded(t *testing.T) {
	tr := NewTracker(time.Second)
	t0 := time.Unix(1000, 0)
	for i := range 2000 {
		tr.Update(rec(fmt.Sprintf("fake-%d", i), 0, 1, 1, 1), t0)
	}
	if n := tr.Len(); n != MaxPeers {
		t.Fatalf("%d records held, want %d", n, MaxPeers)
	}
	if !tr.Update(rec("late", 0, 1, 1, 1), t0.Add(time.Second)) {
		t.Fatal("a record refused although the others expired")
	}
	if n := tr.Len(); n != 1 {
		t.Fatalf("%d records after the flood expired, want 1", n)
	}
}

// Pushing to 2,000 peer IDs never has more than maxPushes in flight.
func TestGossipPushesBounded(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := newHost(t)
	var fakes []peer.ID
	for range 2000 {
		fakes = append(fakes, newHostID(t))
	}
	g := NewGossip(h, "run", NewTracker(time.Minute), func() []peer.ID { return fakes },
		func() Record { return Record{State: StateOnline} }, log)
	ctx, cancel := context.WithCancel(context.Background())
	g.PushNow(ctx)
	g.mu.Lock()
	busy, stale := len(g.busy), len(g.stale)
	g.mu.Unlock()
	cancel()
	g.Close()
	if busy > maxPushes || stale > maxPushes {
		t.Fatalf("%d pushes in flight, %d stale; bound %d", busy, stale, maxPushes)
	}
	if len(g.busy) != 0 || len(g.stale) != 0 {
		t.Fatalf("%d busy, %d stale left after the pushes ended", len(g.busy), len(g.stale))
	}
}

// newHostID is a fresh peer ID with no host behind it.
func newHostID(t *testing.T) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
