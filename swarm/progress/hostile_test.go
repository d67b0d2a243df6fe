package progress

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/swarm-train/swarm/internal/guard"
	"github.com/swarm-train/swarm/internal/testutil"
)

// attacker is a host whose GossipSub router (honest, with no validator of
// its own) joins the run's progress topic and publishes whatever it is told.
type attacker struct {
	h     host.Host
	topic *pubsub.Topic
	sent  Traffic
}

func newAttacker(t *testing.T, to *Gossip) *attacker {
	t.Helper()
	h := newHost(t)
	testutil.Connect(t, h, to.h)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	a := &attacker{h: h}
	ps, err := pubsub.NewGossipSub(ctx, h, pubsub.WithGossipSubProtocols([]protocol.ID{ProtocolFor("run")}, features),
		pubsub.WithRawTracer(counter{t: &a.sent, self: h.ID()}))
	if err != nil {
		t.Fatal(err)
	}
	topic, err := ps.Join(Topic("run"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := topic.Subscribe(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, testutil.Says("victim and attacker in each other's topic peers"), func() bool {
		return len(topic.ListPeers()) == 1 && slices.Contains(to.topic.ListPeers(), h.ID())
	})
	a.topic = topic
	return a
}

func (a *attacker) publish(t *testing.T, b []byte) {
	t.Helper()
	if err := a.topic.Publish(context.Background(), b); err != nil {
		t.Fatal(err)
	}
}

// victim is a Gossip of run "run" that counts refusals and allows at most
// 2 shards, 512 samples and 100 epochs.
func victim(t *testing.T) (*Gossip, *Tracker, *guard.Refusals) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tr := NewTracker(time.Hour)
	g, err := NewGossip(newHost(t), "run", tr, func() Record { return Record{State: StateOnline} }, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	ref, err := guard.New(nil, nil, guard.Policy{Strikes: 1000})
	if err != nil {
		t.Fatal(err)
	}
	g.SetRefusals(ref)
	g.SetLimits(Limits{Shards: 2, MaxSamples: 512, MaxEpoch: 100})
	return g, tr, ref
}

// A peer publishing a record on the topic that the validator must refuse
// (a record in another peer's name, of another run, numbers the run does
// not allow, oversize, not JSON) has it rejected and counted by reason,
// nothing stored, and its score at once below the graylist threshold: the
// router ignores what it sends next, a valid record included.
func TestGossipValidatorRefuses(t *testing.T) {
	bad := []struct {
		why string
		mut func(r *Record, victim peer.ID)
	}{
		{whyRange, func(r *Record, _ peer.ID) { r.Epoch = math.MaxUint64 }},
		{whyRange, func(r *Record, _ peer.ID) { r.Shard = 2 }},
		{whyRange, func(r *Record, _ peer.ID) { r.Samples = 513 }},
		{whyRange, func(r *Record, _ peer.ID) { r.InFlight = 1 << 40 }},
		{whyRange, func(r *Record, _ peer.ID) { r.Norms = []EpochNorm{{Epoch: 1 << 60, NormSq: 1}} }},
		{whyMalformed, func(r *Record, _ peer.ID) { r.Rate = 1e300 }}, // fails Validate in the decoder
		{whyMalformed, func(r *Record, _ peer.ID) { r.State = "" }},
		{whyPeer, func(r *Record, victim peer.ID) { r.Peer = victim.String() }},
		{whyRun, func(r *Record, _ peer.ID) { r.RunID = "another run" }},
		{whyOversize, func(r *Record, _ peer.ID) { r.Device = strings.Repeat("x", MaxRecordSize) }},
	}
	for _, c := range bad {
		g, tr, ref := victim(t)
		atk := newAttacker(t, g)
		r := Record{Peer: atk.h.ID().String(), RunID: "run", State: StateOnline}
		c.mut(&r, g.h.ID())
		// Until the victim's router takes the attacker's stream a publish
		// may go nowhere: publish again until one is refused.
		seq := uint64(0)
		testutil.Eventually(t, 10*time.Second, func() string {
			return fmt.Sprintf("%s: refusals %v", c.why, refusals(ref))
		}, func() bool {
			if refusals(ref)[c.why] > 0 {
				return true
			}
			seq++
			r.Seq = seq
			b, err := json.Marshal(&r)
			if err != nil {
				t.Fatal(err)
			}
			atk.publish(t, b)
			return false
		})
		if got := refusals(ref); len(got) != 1 {
			t.Errorf("%s: refusals %v, want only %s", c.why, got, c.why)
		}
		// The router's tracer counts it, by its reason.
		if n, why := g.Traffic().Rejected.Load(), g.Traffic().Reasons(); n == 0 || why[pubsub.RejectValidationFailed] == 0 {
			t.Errorf("%s: the router counted %d rejected records, by reason %v", c.why, n, why)
		}
		testutil.Eventually(t, 10*time.Second, func() string {
			s, _ := g.Score(atk.h.ID())
			return fmt.Sprintf("%s: the attacker's score %v, want below the graylist threshold", c.why, s)
		}, func() bool { s, ok := g.Score(atk.h.ID()); return ok && s < -80 })
		good := Record{Peer: atk.h.ID().String(), RunID: "run", State: StateOnline, Seq: seq + 1}
		b, _ := good.Encode()
		atk.publish(t, b)
		in := g.Traffic().MsgsIn.Load()
		// Another honest peer's record arrives after the attacker's
		// would have: the attacker's was ignored, not late.
		honest := newAttacker(t, g)
		hr := Record{Peer: honest.h.ID().String(), RunID: "run", State: StateOnline}
		testutil.Eventually(t, 10*time.Second, testutil.Says("an honest record after the attacker's"), func() bool {
			if _, ok := tr.Get(honest.h.ID().String(), time.Now()); ok {
				return true
			}
			hr.Seq++
			b, _ := hr.Encode()
			honest.publish(t, b)
			return false
		})
		if _, ok := tr.Get(atk.h.ID().String(), time.Now()); ok {
			t.Errorf("%s: a record of the graylisted attacker stored (%d messages in before)", c.why, in)
		}
	}
}

// A flood of valid records from one author passes the validator at most at
// the bucket's rate: the rest are dropped, not forwarded, and the tracker
// keeps the latest it took.
func TestGossipFloodThrottled(t *testing.T) {
	g, tr, _ := victim(t)
	atk := newAttacker(t, g)
	const n = 2000
	t0 := time.Now()
	for i := range n {
		r := Record{Peer: atk.h.ID().String(), RunID: "run", Seq: uint64(i + 1), State: StateOnline, Samples: i % 512}
		b, _ := r.Encode()
		atk.publish(t, b)
	}
	testutil.Eventually(t, 20*time.Second, testutil.Says("the flood's records to arrive"), func() bool {
		return g.Traffic().MsgsIn.Load() >= n/2 || g.Traffic().Delivered.Load() > 0 && time.Since(t0) > 3*time.Second
	})
	limit := uint64(floodBurst + time.Since(t0)/floodEvery + 1)
	if d := g.Traffic().Delivered.Load(); d > limit || d > n-1 {
		t.Fatalf("%d of %d flooded records delivered, at most %d allowed", d, n, limit)
	}
	if _, ok := tr.Get(atk.h.ID().String(), time.Now()); !ok {
		t.Fatal("no record of the flooding author kept at all")
	}
	if why := g.Traffic().Reasons(); why[pubsub.RejectValidationIgnored] == 0 {
		t.Errorf("the dropped flood is not counted as ignored by the router: %v", why)
	}
}

// The bucket allows a burst, then one record per floodEvery.
func TestAllowBucket(t *testing.T) {
	g := &Gossip{buckets: map[peer.ID]*bucket{}}
	p := peer.ID("author")
	n := 0
	for g.allow(p) {
		n++
		if n > 10*floodBurst {
			break
		}
	}
	if n < floodBurst || n > floodBurst+5 {
		t.Fatalf("burst of %d, want about %d", n, floodBurst)
	}
}

// A record pushed over the legacy stream protocol (nodes of the previous
// version) is checked the same way and bound to the stream's peer.
func TestLegacyPushChecked(t *testing.T) {
	g, tr, ref := victim(t)
	old := newHost(t)
	testutil.Connect(t, old, g.h)
	good := Record{Peer: old.ID().String(), RunID: "run", Seq: 1, State: StateOnline, Shard: 1}
	b, _ := good.Encode()
	push(t, old, g.h.ID(), b)
	spoof := good
	spoof.Peer = g.h.ID().String()
	b, _ = spoof.Encode()
	push(t, old, g.h.ID(), b)
	testutil.Eventually(t, 10*time.Second, testutil.Says("the good record stored, the spoof refused"), func() bool {
		_, ok := tr.Get(old.ID().String(), time.Now())
		return ok && refusals(ref)[whyPeer] == 1
	})
}

// push sends one length-prefixed record body over the legacy protocol.
func push(t *testing.T, from host.Host, to peer.ID, b []byte) {
	t.Helper()
	s, err := from.NewStream(context.Background(), to, LegacyProtocol)
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

// A peer this node banned stays out of its tracker even while other peers
// keep forwarding its records: a chain a - b - c, where c hears a only
// through b. Once c bans a and forgets it, a's records, still delivered
// to b, never reach c's tracker again; b's do.
func TestBannedAuthorForwardedIgnored(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	hs := []host.Host{newHost(t), newHost(t), newHost(t)}
	testutil.Connect(t, hs[0], hs[1])
	testutil.Connect(t, hs[1], hs[2])
	var trs []*Tracker
	var c *Gossip
	for i, h := range hs {
		tr := NewTracker(time.Hour)
		g, err := NewGossip(h, "run", tr, func() Record { return Record{State: StateOnline, Samples: i} }, log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(g.Close)
		go g.Run(ctx, 20*time.Millisecond, time.Millisecond)
		trs = append(trs, tr)
		c = g
	}
	ref, err := guard.New(nil, nil, guard.Policy{Strikes: 1000})
	if err != nil {
		t.Fatal(err)
	}
	c.SetRefusals(ref)
	a, b := hs[0].ID().String(), hs[1].ID().String()
	has := func(tr *Tracker, p string) bool { _, ok := tr.Get(p, time.Now()); return ok }
	testutil.Eventually(t, 10*time.Second, testutil.Says("c to hear a through b"), func() bool { return has(trs[2], a) })
	ref.Ban(hs[0].ID())
	trs[2].Forget(a)
	seqB := func(tr *Tracker) uint64 { r, _ := tr.Get(b, time.Now()); return r.Seq }
	from := seqB(trs[2])
	testutil.Eventually(t, 10*time.Second, testutil.Says("c to take ten more of b's records"), func() bool { return seqB(trs[2]) >= from+10 })
	if has(trs[2], a) {
		t.Fatal("c took the banned peer's record from a forwarder")
	}
	if !has(trs[1], a) {
		t.Fatal("b lost a's record: the test shows nothing")
	}
}
