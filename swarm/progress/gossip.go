package progress

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/proto"

	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/internal/guard"
)

// Records travel on one GossipSub topic per run (Topic), spoken over a
// protocol of the run's own (ProtocolFor): nodes of other runs never open
// it, so the run's admission gate sees only its own peers. Each message is
// signed by its author; the topic validator binds the record to it.
//
// LegacyProtocol is the previous transport, one record per stream (a
// 4-byte big-endian length, then the JSON record), bound to the stream's
// remote peer. Nodes still accept it for one release so that nodes of the
// previous version keep being heard; nothing sends it any more.
const LegacyProtocol protocol.ID = "/swarm/train/progress/1.0.0"

// ProtocolPrefix starts every run's progress protocol.
const ProtocolPrefix = "/swarm/train/progress/2.0.0/"

// ProtocolFor is the GossipSub protocol of a run's progress topic.
func ProtocolFor(runID string) protocol.ID {
	sum := sha256.Sum256([]byte(runID))
	return protocol.ID(ProtocolPrefix + hex.EncodeToString(sum[:8]))
}

// IsProtocol reports whether p carries progress records (either transport):
// small, rare messages that may use a relayed connection.
func IsProtocol(p protocol.ID) bool {
	return p == LegacyProtocol || strings.HasPrefix(string(p), ProtocolPrefix)
}

// Topic is the name of a run's progress topic.
func Topic(runID string) string { return "swarm/progress/" + runID }

const streamTimeout = 3 * time.Second

// maxMessage bounds one pubsub RPC: a record and its envelope (signature,
// key, topic, seqno). Bigger RPCs are dropped by the router unread.
const maxMessage = MaxRecordSize + 4<<10

// DefaultBudget is the swarm's record budget: about as many records a
// second as each node receives at most from the others (changes are paced
// so that a node publishes at most every (live-FreePeers)/Budget seconds).
// At demo size it paces nothing; at 1,000 peers it spaces one node's
// routine records by ~5 s.
const DefaultBudget = 200

// welcomeEvery spaces the early publishes for joiners.
const welcomeEvery = time.Second

// Reasons for refused records (guard).
const (
	protoProgress = "progress"
	whyMalformed  = "malformed"
	whyRange      = "range"
	whyPeer       = "impersonation"
	whyRun        = "run"
	whyOversize   = "oversize"
)

// floodBurst and floodEvery bound the records one author gets through a
// node's validator: a burst of floodBurst, then one per floodEvery. An
// honest node publishes at most every minGap (5 ms in the trainer).
const (
	floodBurst = 64
	floodEvery = 4 * time.Millisecond
)

// Gossip publishes this node's record on the run's topic and stores the
// records the topic delivers in its tracker.
type Gossip struct {
	h       host.Host
	runID   string
	tracker *Tracker
	log     *slog.Logger
	self    func() Record

	ps     *pubsub.PubSub
	topic  *pubsub.Topic
	sub    *pubsub.Subscription
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	refuse  *guard.Refusals
	limits  Limits
	clk     clock.Clock // stamps stored records, paces Run
	budget  float64
	seq     uint64
	last    Record        // last published
	lastAt  time.Time     // when (clk)
	every   time.Duration // current heartbeat (Run), sent as EveryMS
	running bool          // Run is under way: Close says goodbye
	// welcome: a peer new to this node joined its shard; welcomed: when
	// this node last published early for one.
	welcome  bool
	welcomed time.Time
	closed   bool
	buckets  map[peer.ID]*bucket // per author, for flood control

	pending chan struct{}
	joined  chan struct{} // a peer appeared on the topic
	traffic Traffic
	scores  atomic.Pointer[map[peer.ID]float64] // the router's peer scores, refreshed every second
}

// Traffic counts the progress topic's messages and bytes at this node.
type Traffic struct {
	Published   atomic.Uint64 // records this node published
	Delivered   atomic.Uint64 // others' records accepted
	MsgsIn      atomic.Uint64 // records received (duplicates included)
	BytesIn     atomic.Uint64 // pubsub RPC bytes received (control included)
	MsgsOut     atomic.Uint64
	BytesOut    atomic.Uint64
	OwnSent     atomic.Uint64 // this node's records written to a peer's stream
	Rejected    atomic.Uint64 // records rejected as invalid by the validator or the router
	Ignored     atomic.Uint64 // records the validator ignored: stale, replayed, over the flood budget, a banned author's
	Throttled   atomic.Uint64 // times the router throttled a peer
	Dropped     atomic.Uint64 // RPCs dropped on a full outbound queue
	Undelivered atomic.Uint64 // records dropped because the receiver lagged

	bye atomic.Pointer[goodbye] // the leave record Close waits to see written

	reasonsMu sync.Mutex
	reasons   map[string]uint64 // Rejected and Ignored, by the router's reason
}

// Reasons returns how many records the router rejected or ignored, by its
// reason ("validation ignored", "validation throttled", "blacklisted
// peer", ...).
func (t *Traffic) Reasons() map[string]uint64 {
	t.reasonsMu.Lock()
	defer t.reasonsMu.Unlock()
	return maps.Clone(t.reasons)
}

// maxReasons bounds the distinct reasons kept (the router's are a handful).
const maxReasons = 32

// goodbye is a leave record being sent; sent closes once it was written to
// a peer's stream.
type goodbye struct {
	data []byte
	once sync.Once
	sent chan struct{}
}

type bucket struct {
	tokens float64
	at     time.Time
}

// NewGossip starts GossipSub on h for the run's progress topic, with
// peer scoring, flood protection and the record validator. self returns
// this node's current record (Peer, RunID and Seq are filled in by Gossip).
func NewGossip(h host.Host, runID string, tracker *Tracker, self func() Record, log *slog.Logger) (*Gossip, error) {
	g := &Gossip{h: h, runID: runID, tracker: tracker, self: self, log: log, clk: clock.Real, budget: DefaultBudget,
		pending: make(chan struct{}, 1), joined: make(chan struct{}, 1), buckets: map[peer.ID]*bucket{},
		// Sequence numbers grow across restarts: a restarted node's first
		// record is newer than the ones it sent before.
		seq: uint64(time.Now().UnixMicro())}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	topic := Topic(runID)
	score, thresholds := scoreParams(topic)
	gp := pubsub.DefaultGossipSubParams()
	gp.HeartbeatInterval = 700 * time.Millisecond
	// Records are small (~500 B) but every mesh peer may send each one:
	// ask them not to once we have it.
	gp.IDontWantMessageThreshold = 256
	ps, err := pubsub.NewGossipSub(g.ctx, h,
		pubsub.WithGossipSubProtocols([]protocol.ID{ProtocolFor(runID)}, features),
		pubsub.WithGossipSubParams(gp),
		pubsub.WithMessageSignaturePolicy(pubsub.StrictSign),
		pubsub.WithMaxMessageSize(maxMessage),
		pubsub.WithPeerScore(score, thresholds),
		pubsub.WithPeerExchange(true),
		pubsub.WithPeerGater(pubsub.NewPeerGaterParams(0.33, pubsub.ScoreParameterDecay(2*time.Minute),
			pubsub.ScoreParameterDecay(10*time.Minute))),
		pubsub.WithValidateQueueSize(1024),
		pubsub.WithPeerOutboundQueueSize(256),
		pubsub.WithRawTracer(counter{&g.traffic, h.ID()}),
		pubsub.WithPeerScoreInspect(func(m map[peer.ID]float64) { g.scores.Store(&m) }, time.Second),
		pubsub.WithSubscriptionFilter(pubsub.NewAllowlistSubscriptionFilter(topic)),
	)
	if err != nil {
		g.cancel()
		return nil, fmt.Errorf("progress: gossipsub: %w", err)
	}
	g.ps = ps
	if err := ps.RegisterTopicValidator(topic, g.validate, pubsub.WithValidatorInline(true)); err != nil {
		g.cancel()
		return nil, fmt.Errorf("progress: validator: %w", err)
	}
	if g.topic, err = ps.Join(topic); err != nil {
		g.cancel()
		return nil, fmt.Errorf("progress: join %s: %w", topic, err)
	}
	if g.sub, err = g.topic.Subscribe(pubsub.WithBufferSize(1024)); err != nil {
		g.cancel()
		return nil, fmt.Errorf("progress: subscribe %s: %w", topic, err)
	}
	events, err := g.topic.EventHandler()
	if err != nil {
		g.cancel()
		return nil, fmt.Errorf("progress: topic events: %w", err)
	}
	h.SetStreamHandler(LegacyProtocol, g.handleLegacy)
	g.wg.Add(2)
	go g.receive()
	go g.watch(events)
	return g, nil
}

// features: the run's protocol speaks GossipSub v1.2 (mesh, peer
// exchange, IDONTWANT).
func features(f pubsub.GossipSubFeature, _ protocol.ID) bool {
	switch f {
	case pubsub.GossipSubFeatureMesh, pubsub.GossipSubFeaturePX, pubsub.GossipSubFeatureIdontwant:
		return true
	}
	return false
}

// scoreParams: a peer that delivers invalid records loses score fast (each
// costs 100 points, decaying over minutes) and below -80 is ignored
// altogether; time in the mesh and first deliveries earn a little; broken
// promises of gossip are penalized. Every peer of a test or simulation
// shares one IP, so colocation is not scored.
func scoreParams(topic string) (*pubsub.PeerScoreParams, *pubsub.PeerScoreThresholds) {
	p := &pubsub.PeerScoreParams{
		Topics: map[string]*pubsub.TopicScoreParams{topic: {
			TopicWeight:                     1,
			TimeInMeshWeight:                0.1,
			TimeInMeshQuantum:               time.Second,
			TimeInMeshCap:                   10,
			FirstMessageDeliveriesWeight:    0.1,
			FirstMessageDeliveriesDecay:     pubsub.ScoreParameterDecay(time.Minute),
			FirstMessageDeliveriesCap:       50,
			InvalidMessageDeliveriesWeight:  -100,
			InvalidMessageDeliveriesDecay:   pubsub.ScoreParameterDecay(10 * time.Minute),
			MeshMessageDeliveriesDecay:      pubsub.ScoreParameterDecay(time.Minute),
			MeshFailurePenaltyDecay:         pubsub.ScoreParameterDecay(time.Minute),
			MeshMessageDeliveriesCap:        0,
			MeshMessageDeliveriesThreshold:  0,
			MeshMessageDeliveriesWindow:     10 * time.Millisecond,
			MeshMessageDeliveriesActivation: time.Minute,
		}},
		AppSpecificScore:          func(peer.ID) float64 { return 0 },
		BehaviourPenaltyWeight:    -0.1,
		BehaviourPenaltyThreshold: 20,
		BehaviourPenaltyDecay:     pubsub.ScoreParameterDecay(10 * time.Minute),
		DecayInterval:             time.Second,
		DecayToZero:               0.01,
		RetainScore:               10 * time.Minute,
	}
	t := &pubsub.PeerScoreThresholds{
		GossipThreshold:             -10,
		PublishThreshold:            -50,
		GraylistThreshold:           -80,
		AcceptPXThreshold:           0.5,
		OpportunisticGraftThreshold: 2,
	}
	return p, t
}

// Close says goodbye on the topic (when Run was under way), stops the
// router and waits for the receiver. It is idempotent.
func (g *Gossip) Close() {
	var bye bool
	if !g.open(func() { g.closed, bye = true, g.running }) {
		return
	}
	if bye {
		r := g.next()
		r.Left = true
		if b, err := r.Encode(); err == nil {
			ctx, cancel := context.WithTimeout(g.ctx, time.Second)
			bye := &goodbye{data: b, sent: make(chan struct{})}
			g.traffic.bye.Store(bye)
			if len(g.topic.ListPeers()) > 0 && g.topic.Publish(ctx, b) == nil {
				// The router sends from its own goroutines: wait (a
				// second at most) until it wrote the goodbye to a peer's
				// stream before it stops.
				select {
				case <-bye.sent:
				case <-ctx.Done():
				}
			}
			cancel()
		}
	}
	g.h.RemoveStreamHandler(LegacyProtocol)
	g.sub.Cancel()
	_ = g.topic.Close()
	g.cancel()
	g.wg.Wait()
}

// open runs f under g's lock unless g is closed; it reports whether it ran.
func (g *Gossip) open(f func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	f()
	return true
}

// Poke asks for a publish soon (the record changed).
func (g *Gossip) Poke() {
	select {
	case g.pending <- struct{}{}:
	default:
	}
}

// SetBudget sets the swarm's record budget (records a second a node
// receives at most; DefaultBudget when 0 or negative).
func (g *Gossip) SetBudget(perSecond float64) {
	if perSecond <= 0 {
		perSecond = DefaultBudget
	}
	g.mu.Lock()
	g.budget = perSecond
	g.mu.Unlock()
}

// Gap is the least time between two routine publishes of this node with
// live peers in the run: (live-FreePeers)/budget, at least minGap and at
// most MaxEvery. A swarm of FreePeers or fewer is paced by minGap alone,
// as the trainer's decisions at demo size expect.
func Gap(live int, budget float64, minGap time.Duration) time.Duration {
	d := time.Duration(float64(max(0, live-FreePeers)) / budget * float64(time.Second))
	return min(max(d, minGap), max(MaxEvery, minGap))
}

// FreePeers is the swarm size up to which the budget does not pace.
const FreePeers = 8

// Run publishes the record every interval (or every Gap when that is
// longer: the record says so in EveryMS) and on Poke: a change of epoch,
// shard, state, closing or pause after minGap, any other change after
// Gap. A node also publishes after minGap when a peer new to it joins its
// shard (welcome), at most once a second, so that the joiner learns its
// shard's holders without waiting for their next routine publish. The
// first publish waits (at most interval) for a first peer on the topic,
// so that it reaches someone. It returns when ctx ends.
func (g *Gossip) Run(ctx context.Context, interval, minGap time.Duration) {
	var clk clock.Clock
	if !g.open(func() { g.running, clk = true, g.clk }) {
		return
	}
	if len(g.topic.ListPeers()) == 0 && wake(ctx, clk, interval, g.joined) == ended {
		return
	}
	g.PushNow(ctx)
	for {
		g.mu.Lock()
		gap := Gap(g.tracker.Len(), g.budget, minGap)
		g.every = max(interval, gap)
		clk, lastAt := g.clk, g.lastAt
		g.mu.Unlock()
		switch wake(ctx, clk, g.every-clk.Since(lastAt), g.pending) {
		case ended:
			return
		case woken:
			if !g.hold(ctx, clk, lastAt, gap, minGap) {
				return
			}
		}
		g.PushNow(ctx)
	}
}

// hold waits until a publish is due after a change: gap after the last
// publish for a routine change, minGap for an urgent one. A change that
// comes while it waits is looked at too: an urgent one cuts the wait
// short. It returns false when ctx ends.
func (g *Gossip) hold(ctx context.Context, clk clock.Clock, lastAt time.Time, gap, minGap time.Duration) bool {
	for {
		wait := gap
		if g.urgent(g.self()) {
			wait = minGap
		}
		d := wait - clk.Since(lastAt)
		if d <= 0 {
			return true
		}
		switch wake(ctx, clk, d, g.pending) {
		case ended:
			return false
		case timedOut:
			return true
		}
	}
}

// Outcomes of wake.
const (
	timedOut = iota // d passed
	woken           // ch signalled first
	ended           // ctx ended first
)

// wake waits on clk for d, for a signal on ch or for ctx to end, whichever
// comes first, and says which.
func wake(ctx context.Context, clk clock.Clock, d time.Duration, ch <-chan struct{}) int {
	t := clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ended
	case <-t.C():
		return timedOut
	case <-ch:
		return woken
	}
}

// urgent reports whether r differs from the last published record in what
// others act on at once.
func (g *Gossip) urgent(r Record) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	l := g.last
	if g.welcome && g.clk.Since(g.welcomed) >= welcomeEvery {
		g.welcome, g.welcomed = false, g.clk.Now()
		return true
	}
	if r.Shard != l.Shard || r.State != l.State || r.Paused != l.Paused {
		return true
	}
	// Epoch changes, closings and rounds happen on every node of a shard
	// (or of the swarm) at once: each node publishing them at once would be
	// one burst of live records at every node. A few heralds of each shard
	// and epoch do (the first shard's close the epoch for everyone); the
	// others' records follow at their pace.
	return (r.Epoch != l.Epoch || r.Closing != l.Closing || r.Round != l.Round) &&
		(g.tracker.Len() <= FreePeers || Herald(g.h.ID().String(), r.Epoch, g.tracker.ShardLen(r.Shard)))
}

// Heralds is about how many holders of a shard publish an epoch's change
// at once (Herald); every node does in a swarm of FreePeers or fewer.
const Heralds = 8

// Herald reports whether the node named peer publishes its move to epoch
// at once, being one of live holders of its shard: always up to FreePeers,
// otherwise about Heralds of them for each epoch, a different few each
// epoch, chosen by a hash every node can compute. Which nodes herald is no
// secret and needs none: a record is believed for what it says, not for
// who sent it first, and the others' records follow at their pace.
func Herald(peer string, epoch uint64, live int) bool {
	if live <= FreePeers {
		return true
	}
	h := sha256.New()
	h.Write([]byte(peer))
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], epoch)
	h.Write(b[:])
	sum := h.Sum(nil)
	return binary.BigEndian.Uint64(sum[:8])%uint64((live+Heralds-1)/Heralds) == 0
}

// next fills in this node's current record and stores it in the tracker.
func (g *Gossip) next() Record {
	r := g.self()
	g.mu.Lock()
	g.seq++
	r.Seq = g.seq
	r.EveryMS = g.every.Milliseconds()
	now := g.clk.Now()
	g.mu.Unlock()
	r.Peer = g.h.ID().String()
	r.RunID = g.runID
	g.tracker.Update(r, now)
	return r
}

// Current returns this node's record as it would be published now, and
// stores it in the tracker.
func (g *Gossip) Current() Record { return g.next() }

// PushNow publishes the current record on the topic.
func (g *Gossip) PushNow(ctx context.Context) {
	g.mu.Lock()
	closed := g.closed
	g.mu.Unlock()
	if closed {
		return
	}
	r := g.next()
	b, err := r.Encode()
	if err != nil {
		g.log.Error("progress record", "err", err)
		return
	}
	g.mu.Lock()
	g.last, g.lastAt = r, g.clk.Now()
	g.mu.Unlock()
	if err := g.topic.Publish(ctx, b); err != nil {
		if ctx.Err() == nil && g.ctx.Err() == nil {
			g.log.Debug("progress publish failed", "err", err)
		}
		return
	}
	g.traffic.Published.Add(1)
}

// validate is the topic validator: it runs on every record before the
// router delivers or forwards it. from is the peer that sent it to us (its
// author or a forwarder); a rejection lowers from's score and is counted
// against it.
func (g *Gossip) validate(_ context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	if from == g.h.ID() {
		return pubsub.ValidationAccept // our own publish
	}
	g.mu.Lock()
	refuse, limits, now := g.refuse, g.limits, g.clk.Now()
	g.mu.Unlock()
	if refuse.Banned(from) {
		return pubsub.ValidationReject
	}
	author, err := peer.IDFromBytes(m.Message.GetFrom())
	if err == nil && author != from && refuse.Banned(author) {
		// A banned peer's record forwarded by another: dropped and not
		// passed on, without blame on the forwarder. Kept, it would put
		// the banned peer back among the live holders this node waits for.
		return pubsub.ValidationIgnore
	}
	rec, why := checkMessage(m.Data, author, err, g.runID, limits)
	if why != "" {
		refuse.Refuse(from, protoProgress, why, rec.err)
		return pubsub.ValidationReject
	}
	if !g.allow(author) {
		return pubsub.ValidationIgnore // flood: dropped, not forwarded
	}
	if held, ok := g.tracker.Get(rec.rec.Peer, now); ok && held.Seq >= rec.rec.Seq {
		return pubsub.ValidationIgnore // stale or replayed
	}
	m.ValidatorData = rec.rec
	return pubsub.ValidationAccept
}

// checked is a record that passed the checks or the error it failed.
type checked struct {
	rec *Record
	err error
}

// checkMessage checks one topic message's data against its signed author
// and the run: the refusal reason (empty when it passes) and what it found.
func checkMessage(data []byte, author peer.ID, authorErr error, runID string, l Limits) (checked, string) {
	if len(data) > MaxRecordSize {
		return checked{err: fmt.Errorf("record: %d bytes, limit %d", len(data), MaxRecordSize)}, whyOversize
	}
	if authorErr != nil {
		return checked{err: fmt.Errorf("message author: %w", authorErr)}, whyMalformed
	}
	rec, err := Decode(data)
	if err != nil {
		return checked{err: err}, whyMalformed
	}
	switch {
	case rec.Peer != author.String():
		return checked{err: fmt.Errorf("record names peer %.60q, signed by %s", rec.Peer, author)}, whyPeer
	case rec.RunID != runID:
		return checked{err: fmt.Errorf("record of run %.60q", rec.RunID)}, whyRun
	}
	if err := rec.Check(l); err != nil {
		return checked{err: err}, whyRange
	}
	return checked{rec: rec}, ""
}

// allow takes a token from author's bucket.
func (g *Gossip) allow(author peer.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	b, ok := g.buckets[author]
	if !ok {
		if len(g.buckets) >= 2*MaxPeers {
			for p, o := range g.buckets {
				if now.Sub(o.at) > floodBurst*floodEvery {
					delete(g.buckets, p)
				}
			}
			if len(g.buckets) >= 2*MaxPeers {
				return false
			}
		}
		b = &bucket{tokens: floodBurst, at: now}
		g.buckets[author] = b
	}
	b.tokens = min(floodBurst, b.tokens+float64(now.Sub(b.at))/float64(floodEvery))
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// receive stores the records the topic delivers until Close.
func (g *Gossip) receive() {
	defer g.wg.Done()
	for {
		m, err := g.sub.Next(g.ctx)
		if err != nil {
			return
		}
		if m.ReceivedFrom == g.h.ID() {
			continue
		}
		rec, ok := m.ValidatorData.(*Record)
		if !ok {
			continue
		}
		g.traffic.Delivered.Add(1)
		if rec.State == StateJoining && rec.Shard >= 0 && !rec.Left && !g.tracker.Has(rec.Peer) {
			g.mu.Lock()
			mine := g.last.Shard == rec.Shard && g.running
			g.welcome = g.welcome || mine
			g.mu.Unlock()
			if mine {
				g.Poke()
			}
		}
		g.store(*rec)
	}
}

// watch signals joined when a peer appears on the topic, until Close.
func (g *Gossip) watch(events *pubsub.TopicEventHandler) {
	defer g.wg.Done()
	defer events.Cancel()
	for {
		ev, err := events.NextPeerEvent(g.ctx)
		if err != nil {
			return
		}
		if ev.Type == pubsub.PeerJoin {
			select {
			case g.joined <- struct{}{}:
			default:
			}
		}
	}
}

func (g *Gossip) store(rec Record) {
	if rec.Left {
		g.tracker.Forget(rec.Peer)
		return
	}
	g.mu.Lock()
	now := g.clk.Now()
	g.mu.Unlock()
	g.tracker.Update(rec, now)
}

// handleLegacy reads one record pushed over LegacyProtocol, bound to the
// stream's remote peer.
func (g *Gossip) handleLegacy(s network.Stream) {
	defer s.Close()
	from := s.Conn().RemotePeer()
	g.mu.Lock()
	refuse, limits := g.refuse, g.limits
	g.mu.Unlock()
	if refuse.Banned(from) {
		s.Reset()
		return
	}
	_ = s.SetDeadline(clock.WallDeadline(streamTimeout))
	rec, err := ReadRecord(s)
	if err != nil {
		s.Reset()
		if !errors.Is(err, network.ErrReset) {
			refuse.Refuse(from, protoProgress, whyMalformed, err)
		}
		return
	}
	switch {
	case rec.Peer != from.String():
		refuse.Refuse(from, protoProgress, whyPeer, fmt.Errorf("record names peer %.60q", rec.Peer))
	case rec.RunID != g.runID:
		refuse.Refuse(from, protoProgress, whyRun, fmt.Errorf("record of run %.60q", rec.RunID))
	default:
		if err := rec.Check(limits); err != nil {
			refuse.Refuse(from, protoProgress, whyRange, err)
			return
		}
		g.store(*rec)
	}
}

// ReadRecord reads one length-prefixed record (LegacyProtocol).
func ReadRecord(r io.Reader) (*Record, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("record length: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > MaxRecordSize {
		return nil, fmt.Errorf("record length %d outside 1..%d", n, MaxRecordSize)
	}
	b, err := guard.ReadFull(r, int(n))
	if err != nil {
		return nil, fmt.Errorf("record body: %w", err)
	}
	return Decode(b)
}

// Traffic returns the topic's counters at this node.
func (g *Gossip) Traffic() *Traffic { return &g.traffic }

// Score returns the router's score of p as last inspected (scores are
// refreshed every second).
func (g *Gossip) Score(p peer.ID) (float64, bool) {
	m := g.scores.Load()
	if m == nil {
		return 0, false
	}
	s, ok := (*m)[p]
	return s, ok
}

// MeshPeers returns the peers this node exchanges full records with on
// the topic (its GossipSub mesh and fanout).
func (g *Gossip) MeshPeers() []peer.ID { return g.topic.ListPeers() }

// SetLimits makes g refuse records whose numbers the run does not allow
// (Record.Check).
func (g *Gossip) SetLimits(l Limits) {
	g.mu.Lock()
	g.limits = l
	g.mu.Unlock()
}

// SetClock makes g stamp the records it stores and pace Run on c (nil: the
// wall clock): the clock of whoever reads the tracker's live records. Call
// it before Run.
func (g *Gossip) SetClock(c clock.Clock) {
	g.mu.Lock()
	g.clk = clock.Or(c)
	g.mu.Unlock()
}

// SetRefusals makes g count and log the records it refuses in r.
func (g *Gossip) SetRefusals(r *guard.Refusals) {
	g.mu.Lock()
	g.refuse = r
	g.mu.Unlock()
}

// counter is the router's tracer: it counts the topic's traffic.
type counter struct {
	t    *Traffic
	self peer.ID
}

func (c counter) RecvRPC(rpc *pubsub.RPC) {
	c.t.MsgsIn.Add(uint64(len(rpc.GetPublish())))
	c.t.BytesIn.Add(uint64(proto.Size(&rpc.RPC)))
}

func (c counter) SendRPC(rpc *pubsub.RPC, _ peer.ID) {
	c.t.MsgsOut.Add(uint64(len(rpc.GetPublish())))
	c.t.BytesOut.Add(uint64(proto.Size(&rpc.RPC)))
}

// SendRPCCompleted counts this node's records once written to a stream.
func (c counter) SendRPCCompleted(rpc *pubsub.RPC, _ peer.ID, _ time.Duration) {
	for _, m := range rpc.GetPublish() {
		if peer.ID(m.GetFrom()) != c.self {
			continue
		}
		c.t.OwnSent.Add(1)
		if bye := c.t.bye.Load(); bye != nil && bytes.Equal(m.GetData(), bye.data) {
			bye.once.Do(func() { close(bye.sent) })
		}
	}
}

func (counter) OnNewOutboundStream(peer.ID, protocol.ID) {}
func (counter) OnClosedOutboundStream(peer.ID)           {}
func (counter) Join(string)                              {}
func (counter) Leave(string)                             {}
func (counter) Graft(peer.ID, string)                    {}
func (counter) Prune(peer.ID, string)                    {}
func (counter) ValidateMessage(*pubsub.Message)          {}
func (counter) DeliverMessage(*pubsub.Message)           {}
func (counter) DuplicateMessage(*pubsub.Message)         {}

// RejectMessage counts a record the validator or the router turned away
// (Rejected, or Ignored when the validator ignored it), and by the
// router's reason.
func (c counter) RejectMessage(_ *pubsub.Message, reason string) {
	if reason == pubsub.RejectValidationIgnored {
		c.t.Ignored.Add(1)
	} else {
		c.t.Rejected.Add(1)
	}
	c.t.reasonsMu.Lock()
	defer c.t.reasonsMu.Unlock()
	if c.t.reasons == nil {
		c.t.reasons = map[string]uint64{}
	}
	if _, ok := c.t.reasons[reason]; ok || len(c.t.reasons) < maxReasons {
		c.t.reasons[reason]++
	}
}

func (c counter) ThrottlePeer(peer.ID)                 { c.t.Throttled.Add(1) }
func (c counter) DropRPC(*pubsub.RPC, peer.ID)         { c.t.Dropped.Add(1) }
func (c counter) UndeliverableMessage(*pubsub.Message) { c.t.Undelivered.Add(1) }
