// Package averaging averages flat float32 vectors among the peers that hold
// the same shard: decentralised matchmaking into groups, butterfly all-reduce
// inside a group with defined fault semantics, Moshpit regrouping across
// rounds, and pairwise gossip when no group forms.
//
// The protocol logic lives in pure state machines (matcher in match.go,
// reducer in reduce.go) that take events and the time and return what to
// send; this file is the libp2p transport around them.
package averaging

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/swarm-train/swarm/internal/bulk"
	"github.com/swarm-train/swarm/internal/fvec"
	"github.com/swarm-train/swarm/internal/guard"
)

// Errors returned by Step.
var (
	ErrNoGroup = errors.New("averaging: no group formed and gossip found no partner")
	// ErrLeftOut (with ErrNoGroup) says why no group formed: the
	// candidates formed their groups without this peer.
	ErrLeftOut  = errors.New("averaging: left out: the candidates grouped without this peer")
	ErrBusy     = errors.New("averaging: a step for this key is already running")
	ErrBadInput = errors.New("averaging: invalid input")
	ErrClosed   = errors.New("averaging: closed")
)

// Config configures an Averager. Zero fields take the defaults noted.
type Config struct {
	// Peers returns the candidate peers for a key (required). Their addresses
	// must already be in the host's peerstore.
	Peers func(ctx context.Context, key string) []peer.ID
	// TargetGroupSize is the group size matchmaking aims for (default 8);
	// MinGroupSize the smallest group that may start (default 2).
	TargetGroupSize, MinGroupSize int
	// KeyBits is the number of Moshpit key bits (default 0: no regrouping).
	// With n peers and groups of g, log2(n/g) bits make the groups of
	// successive rounds cross like the rows and columns of a grid.
	KeyBits int
	// MatchWindow is one matchmaking attempt (default 1s); MatchTimeout the
	// whole matchmaking phase (default 3 windows); RequestTimeout the wait for
	// a join answer (default window/4).
	MatchWindow, MatchTimeout, RequestTimeout time.Duration
	// AllreduceTimeout bounds an all-reduce round (default 60s);
	// SenderTimeout drops a sender without progress (default 10s);
	// ReducerTimeout gives up on a silent reducer (default 2×SenderTimeout).
	AllreduceTimeout, SenderTimeout, ReducerTimeout time.Duration
	// PartSize is the number of values per streamed part (default 128Ki).
	PartSize int
	// Bandwidth is this peer's relative bandwidth: its share of the vector
	// to reduce is proportional to it (default 1).
	Bandwidth float64
	// ClientMode: this peer cannot accept connections; it reduces nothing
	// and never leads.
	ClientMode bool
	// Compression is the codec for parts on the wire.
	Compression Codec
	// Gossip enables the fallback; GossipTimeout bounds it (default MatchTimeout).
	Gossip        bool
	GossipTimeout time.Duration
	// MaxFrame bounds incoming frames (default: encoded PartSize + 64 KiB).
	MaxFrame int
	// MaxWeight is the largest weight a peer may declare (default
	// DefaultMaxWeight); a trainer sets the run's target batch. Larger
	// weights from peers are refused; a larger weight of our own is clamped
	// to it, so that honest peers with one config never refuse each other.
	MaxWeight float64
	// Aggregation is how each reducer combines its part (default
	// AggregateMean, streamed). The robust ones keep every sender's part
	// until it is final; see aggregate.go. ClipTau (default DefaultClipTau)
	// is CenteredClip's τ as a multiple of the median distance of the inputs
	// from their coordinate median; ClipIters (default DefaultClipIters) its
	// iteration cap. NormK > 0 rejects, per part, senders whose norm exceeds
	// NormK × the median norm of the part's contributors (refused as
	// "outlier" and dropped from the round).
	Aggregation Aggregation
	ClipTau     float64
	ClipIters   int
	NormK       float64
	// AuditParts > 0 checks reducers (audit.go): after each round every
	// member re-computes AuditParts of the other reducers' parts, picked at
	// random once the reducers have signed what they returned, and checks
	// one part received from each against its signature; a reducer shown to
	// lie is banned (Refusals.BanFor), reported to OnAccusation, and its
	// share stays local. It costs a second vector-sized buffer and, per
	// audit, the contributors' values of one part over the network. Every
	// member of a run must use the same setting (a reducer that does not answer audits
	// is not trusted). At most 16; the host's identity must be able to sign
	// (Ed25519 or secp256k1, as libp2p's default). AuditTimeout bounds the
	// audit after a round (default 10s).
	AuditParts   int
	AuditTimeout time.Duration
	// AuditRate, in (0, 1), audits that share of rounds, drawn by the group
	// together once every result is out so that no reducer can tell an
	// unaudited round in advance (audit_draw.go); 0 or 1 audits every round.
	// Every member of a run must use the same setting.
	AuditRate float64
	// Bulk, if set, carries reduce transfers over direct TCP connections
	// (internal/bulk) to peers that have one too; others are served on
	// libp2p streams as before. The caller owns it and closes it after the
	// Averager.
	Bulk *bulk.Service
	// LieAsReducer is fault injection for the process tests of Byzantine
	// peers (the node's hidden --fault reduce-lie): as a reducer, this peer
	// returns every part's aggregate flipped and ×10, committed to as is,
	// which audits must catch. Never set it otherwise.
	LieAsReducer bool
	// OnAccusation is called once per reducer and round shown to lie, with
	// the evidence, after the round (nil: none).
	OnAccusation func(Accusation)
	Registerer   prometheus.Registerer
	Logger       *slog.Logger
	// Refusals counts and logs refused peer input and names offenders
	// (nil: refuse silently).
	Refusals *guard.Refusals
}

func (c Config) withDefaults() (Config, error) {
	if c.Peers == nil {
		return c, fmt.Errorf("%w: Config.Peers is required", ErrBadInput)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.TargetGroupSize == 0 {
		c.TargetGroupSize = 8
	}
	if c.MinGroupSize == 0 {
		c.MinGroupSize = 2
	}
	def(&c.MatchWindow, time.Second)
	def(&c.MatchTimeout, 3*c.MatchWindow)
	def(&c.RequestTimeout, c.MatchWindow/4)
	def(&c.AllreduceTimeout, 60*time.Second)
	def(&c.SenderTimeout, 10*time.Second)
	def(&c.ReducerTimeout, 2*c.SenderTimeout)
	def(&c.GossipTimeout, c.MatchTimeout)
	def(&c.AuditTimeout, 10*time.Second)
	if c.PartSize == 0 {
		c.PartSize = 128 << 10
	}
	if c.Bandwidth == 0 {
		c.Bandwidth = 1
	}
	if c.MaxFrame == 0 {
		c.MaxFrame = 4*c.PartSize + 64<<10
	}
	if c.MaxWeight == 0 {
		c.MaxWeight = DefaultMaxWeight
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ClipTau == 0 {
		c.ClipTau = DefaultClipTau
	}
	if c.ClipIters == 0 {
		c.ClipIters = DefaultClipIters
	}
	switch {
	case c.TargetGroupSize < 2 || c.TargetGroupSize > MaxGroupSize:
		return c, fmt.Errorf("%w: TargetGroupSize %d not in [2, %d]", ErrBadInput, c.TargetGroupSize, MaxGroupSize)
	case c.MinGroupSize < 2 || c.MinGroupSize > c.TargetGroupSize:
		return c, fmt.Errorf("%w: MinGroupSize %d not in [2, TargetGroupSize]", ErrBadInput, c.MinGroupSize)
	case c.KeyBits < 0 || c.KeyBits > 24:
		return c, fmt.Errorf("%w: KeyBits %d not in [0, 24]", ErrBadInput, c.KeyBits)
	case c.PartSize < 1 || c.PartSize > 16<<20:
		return c, fmt.Errorf("%w: PartSize %d", ErrBadInput, c.PartSize)
	case !(c.Bandwidth > 0) || c.Bandwidth > MaxBandwidth:
		return c, fmt.Errorf("%w: Bandwidth %v", ErrBadInput, c.Bandwidth)
	case !validWeight(c.MaxWeight):
		return c, fmt.Errorf("%w: MaxWeight %v", ErrBadInput, c.MaxWeight)
	case !c.Aggregation.valid():
		return c, fmt.Errorf("%w: Aggregation %d", ErrBadInput, c.Aggregation)
	case !(c.ClipTau > 0) || c.ClipTau > maxClipTau:
		return c, fmt.Errorf("%w: ClipTau %v not in (0, %g]", ErrBadInput, c.ClipTau, float64(maxClipTau))
	case c.ClipIters < 1 || c.ClipIters > MaxClipIters:
		return c, fmt.Errorf("%w: ClipIters %d not in [1, %d]", ErrBadInput, c.ClipIters, MaxClipIters)
	case c.AuditParts < 0 || c.AuditParts > maxAuditParts:
		return c, fmt.Errorf("%w: AuditParts %d not in [0, %d]", ErrBadInput, c.AuditParts, maxAuditParts)
	case !(c.AuditRate >= 0 && c.AuditRate <= 1):
		return c, fmt.Errorf("%w: AuditRate %v not in [0, 1]", ErrBadInput, c.AuditRate)
	case !(c.NormK == 0 || c.NormK >= 1 && c.NormK <= maxNormK):
		return c, fmt.Errorf("%w: NormK %v (want 0 or in [1, %g])", ErrBadInput, c.NormK, float64(maxNormK))
	case !c.Compression.valid():
		return c, fmt.Errorf("%w: compression %d", ErrBadInput, c.Compression)
	case c.MaxFrame < c.Compression.EncodedLen(c.PartSize)+64:
		return c, fmt.Errorf("%w: MaxFrame %d smaller than one part", ErrBadInput, c.MaxFrame)
	case c.RequestTimeout >= c.MatchWindow:
		return c, fmt.Errorf("%w: RequestTimeout must be shorter than MatchWindow", ErrBadInput)
	}
	return c, nil
}

// Mode says how a step averaged.
type Mode string

const (
	ModeGroup  Mode = "group"
	ModeGossip Mode = "gossip"
	ModeLocal  Mode = "local"
)

// Span is a range [Start, End) of the vector and the peers whose values were
// averaged (weighted) into it. A span whose only contributor is this peer was
// left as it was.
type Span struct {
	Start, End   int
	Contributors []peer.ID
}

// Result reports one step. The vector passed to Step holds the result.
type Result struct {
	Mode    Mode
	GroupID string // hex, empty unless Mode is group
	Members []peer.ID
	// Spans cover the whole vector in order, merging neighbours with the
	// same contributors.
	Spans []Span
	// Fraction is the share of the vector averaged with at least one other peer.
	Fraction float64
	// Excluded names peers left out of the round and why.
	Excluded map[peer.ID]string
	// Accusations are the reducers shown to lie in this round (with
	// Config.AuditParts), whose shares stayed local; Audits and Checks count
	// the parts this peer re-computed and compared with their commitments.
	Accusations    []Accusation
	Audits, Checks int
	// Audited: this round's audit ran (Config.AuditParts, drawn with
	// Config.AuditRate); false for a round drawn unaudited or without audits.
	Audited                  bool
	BytesSent, BytesReceived int64
	MatchTime, ReduceTime    time.Duration
	Total                    time.Duration
	// NextBits are the Moshpit key bits this peer will use for the key's next round.
	NextBits uint32
}

// Averager runs averaging steps on a libp2p host.
type Averager struct {
	h   host.Host
	cfg Config
	log *slog.Logger
	met *metrics

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	sessions map[string]*session      // by key
	rounds   map[[16]byte]*round      // all-reduce rounds this peer reduces in
	audits   map[[16]byte]*auditRound // rounds whose audit is open (Config.AuditParts)
	roundsCh chan struct{}            // closed and replaced when rounds or audits change
	key      crypto.PrivKey           // signs audit commitments and claims
	bits     map[string]uint32        // Moshpit bits per key
	// past is, per key, one more than the latest round whose matchmaking
	// ended here: a join for an earlier round finds this peer grouped.
	past    map[string]uint64
	rng     *mrand.Rand
	caps    streamCaps            // inbound streams open per peer and protocol
	pool    vecPool               // buffers kept between rounds
	notCand map[peer.ID]time.Time // when a non-candidate's join was last counted

	faults faults // fault injection for tests; zero in production
}

// faults makes this peer misbehave on purpose (tests only).
type faults struct {
	sendNaN     bool                         // parts sent to reducers contain NaN
	sendShort   bool                         // parts sent have one value missing
	sendGarbage bool                         // parts sent are random bytes of a bad length
	afterPart   func(reducer peer.ID, k int) // called after sending part k to a reducer
	afterFinal  func(k int)                  // called after this reducer finalised its part k
	// As a reducer (audits): change part k before it is committed and sent
	// to everyone; change what receiver `to` gets of part k; substitute a
	// sender's values of a part before combining them; sign a second
	// commitment for one member; change a claim before signing it.
	lieResult   func(k int, avg []float32)
	lieTo       func(to peer.ID, k int, data []float32)
	alterInput  func(from peer.ID, k int, vals []float32)
	equivocate  bool
	lieClaim    func(c *claim)
	falseAccuse bool   // as an auditor: report every claim as wrong
	beforeAudit func() // called when this member's round is over, before its audit
	// Audit draws: reveal a seed other than the one committed to, or none;
	// send no digest of it.
	wrongSeed, withholdSeed, withholdDigest bool
}

// New creates an Averager and registers its stream handlers on h.
func New(h host.Host, cfg Config) (*Averager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("averaging: metrics: %w", err)
	}
	var seed [32]byte
	_, _ = rand.Read(seed[:])
	var lie func(k int, avg []float32)
	if cfg.LieAsReducer {
		lie = func(_ int, avg []float32) {
			for j := range avg {
				avg[j] *= -10
			}
		}
	}
	a := &Averager{h: h, cfg: cfg, log: cfg.Logger.With("component", "averaging"), met: met,
		sessions: map[string]*session{}, rounds: map[[16]byte]*round{}, audits: map[[16]byte]*auditRound{},
		roundsCh: make(chan struct{}), bits: map[string]uint32{}, past: map[string]uint64{}, rng: mrand.New(mrand.NewChaCha8(seed))}
	a.faults.lieResult = lie
	if cfg.AuditParts > 0 {
		a.key = h.Peerstore().PrivKey(h.ID())
		if err := canSign(a.key, h.ID()); err != nil {
			return nil, fmt.Errorf("%w: AuditParts needs a key that signs: %v", ErrBadInput, err)
		}
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	h.SetStreamHandler(ProtoMatch, a.wrap(ProtoMatch, a.handleJoin))
	h.SetStreamHandler(ProtoGossip, a.wrap(ProtoGossip, a.handleGossip))
	if cfg.AuditParts > 0 {
		h.SetStreamHandler(ProtoAudit, a.wrap(ProtoAudit, a.handleAudit))
	}
	if !cfg.ClientMode {
		h.SetStreamHandler(ProtoReduce, a.wrap(ProtoReduce, a.handleReduce))
		if cfg.Bulk != nil {
			// The same per-peer cap as ProtoReduce's, counted together.
			h.SetStreamHandler(ProtoReduceBulk, a.wrap(ProtoReduce, a.handleReduceBulk))
		}
	}
	return a, nil
}

// wrap tracks handler goroutines so Close can wait for them, and serves
// each peer at most its cap of concurrent streams on proto.
func (a *Averager) wrap(proto string, f func(network.Stream)) network.StreamHandler {
	return func(s network.Stream) {
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			_ = s.Reset()
			return
		}
		a.wg.Add(1)
		a.mu.Unlock()
		defer a.wg.Done()
		if !a.admit(s, proto) {
			_ = s.Reset()
			return
		}
		defer a.caps.release(s.Conn().RemotePeer(), proto)
		f(s)
	}
}

// Close removes the handlers, cancels running steps and waits for every
// goroutine of the Averager. It is idempotent.
func (a *Averager) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	a.mu.Unlock()
	a.h.RemoveStreamHandler(ProtoMatch)
	a.h.RemoveStreamHandler(ProtoGossip)
	a.h.RemoveStreamHandler(ProtoReduce)
	a.h.RemoveStreamHandler(ProtoReduceBulk)
	a.h.RemoveStreamHandler(ProtoAudit)
	a.cancel()
	a.wg.Wait()
	return nil
}

// Bits returns the Moshpit key bits this peer will use next for key.
func (a *Averager) Bits(key string) uint32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.bits[key]
}

func (a *Averager) seedRNG() *mrand.Rand {
	a.mu.Lock()
	defer a.mu.Unlock()
	var seed [32]byte
	for i := 0; i < 32; i += 8 {
		binary.LittleEndian.PutUint64(seed[i:], a.rng.Uint64())
	}
	return mrand.New(mrand.NewChaCha8(seed))
}

// StepOption adjusts one step.
type StepOption func(*stepOpts)

type stepOpts struct {
	codec     Codec
	noGossip  bool
	groupSize int             // 0: Config.TargetGroupSize
	want      []peer.ID       // WithWanted
	room      int             // WithWanted; 0: groupSize
	abort     <-chan struct{} // nil: matchmaking runs its course
}

// WithCompression overrides the configured codec for one step. Every peer of
// a group must use the same codec (matchmaking only groups equal codecs).
func WithCompression(c Codec) StepOption { return func(o *stepOpts) { o.codec = c } }

// WithGroupSize sets the target group size of one step, for a caller that
// knows how many peers will take part (for example, every live holder of a
// shard): the group starts as soon as n peers joined instead of waiting out
// the matchmaking window for a Config.TargetGroupSize that cannot be reached.
// n is clamped to [2, MaxGroupSize]; the minimum group size becomes
// min(Config.MinGroupSize, n).
func WithGroupSize(n int) StepOption {
	return func(o *stepOpts) { o.groupSize = min(max(n, 2), MaxGroupSize) }
}

// WithWanted names the peers a step that leads its group waits for: the
// group starts once all of them joined (and the WithGroupSize target is
// met) rather than once any peers make up the target, and others may join
// meanwhile up to room members, never taking a place a wanted peer needs.
// For a caller that knows who takes part (the shard's holders closing the
// epoch) and who may (holders it no longer waits for): a late peer then
// joins when it can without leaving out one that was on time. room is
// clamped to [the target, MaxGroupSize]; at most MaxGroupSize-1 peers are
// kept of want.
func WithWanted(want []peer.ID, room int) StepOption {
	return func(o *stepOpts) {
		o.want = slices.Clone(want[:min(len(want), MaxGroupSize-1)])
		o.room = min(max(room, 0), MaxGroupSize)
	}
}

// WithAbort ends one step's matchmaking, with ErrNoGroup and no gossip
// fallback, once abort is closed: for a caller that learns the round is
// pointless (the peers it would average with have moved on). A group that
// has already formed averages on.
func WithAbort(abort <-chan struct{}) StepOption { return func(o *stepOpts) { o.abort = abort } }

// WithoutGossip disables the gossip fallback for one step.
func WithoutGossip() StepOption { return func(o *stepOpts) { o.noGossip = true } }

// session is one running Step for a key.
type session struct {
	key    string
	round  uint64
	vecLen int
	codec  Codec
	weight float64
	vec    []float32

	mu      sync.Mutex
	cands   map[peer.ID]bool // who may join us (set with matchCh)
	matched bool             // matchmaking for this round is over
	matchCh chan matchEvent  // set while matchmaking
	held    map[peer.ID]*heldJoin
	done    chan struct{} // closed when matchmaking ends
	gossip  *gossipPhase  // set while gossiping
}

// Step averages vec (in place) with other peers working on key in round, with
// the given weight (for example, the number of samples behind vec). It forms a
// group and runs a butterfly all-reduce; if no group forms in time and gossip
// is enabled, it averages pairwise with one peer; otherwise it leaves vec as
// it is and returns ErrNoGroup with a local Result. Step never blocks past its
// matchmaking, all-reduce and gossip timeouts, nor past ctx.
func (a *Averager) Step(ctx context.Context, key string, round uint64, vec []float32, weight float64, opts ...StepOption) (Result, error) {
	start := time.Now()
	o := stepOpts{codec: a.cfg.Compression}
	for _, f := range opts {
		f(&o)
	}
	if err := a.validateInput(key, vec, weight, o.codec); err != nil {
		return localResult(a.h.ID(), len(vec)), err
	}
	weight = min(weight, a.cfg.MaxWeight)
	sess := &session{key: key, round: round, vecLen: len(vec), codec: o.codec, weight: weight, vec: vec,
		held: map[peer.ID]*heldJoin{}, done: make(chan struct{})}
	bits, release, openErr := a.openSession(sess)
	if openErr != nil {
		return localResult(a.h.ID(), len(vec)), openErr
	}
	defer release()
	ctx, cancel := mergeCancel(ctx, a.ctx)
	defer cancel()

	cands := a.cfg.Peers(ctx, key)
	mctx, stopAbort := abortable(ctx, o.abort)
	g, matchErr := a.match(mctx, sess, groupKey{Key: key, Round: round, Bits: bits}, cands, o)
	aborted := stopAbort()
	matchTime := time.Since(start)
	a.met.duration.WithLabelValues("match").Observe(matchTime.Seconds())
	var res Result
	var err error
	switch {
	case g != nil:
		res = a.allreduce(ctx, g, vec, weight, o.codec)
		next := nextBits(bits, a.cfg.KeyBits, g, a.h.ID(), a.cfg.TargetGroupSize)
		a.mu.Lock()
		a.bits[key] = next
		a.mu.Unlock()
		res.NextBits = next
	case a.cfg.Gossip && !o.noGossip && !aborted && ctx.Err() == nil:
		a.met.failures.WithLabelValues("no_group").Inc()
		res, err = a.gossipStep(ctx, sess, cands)
		if err != nil {
			err = fmt.Errorf("%w (matchmaking: %w)", err, matchErr)
		}
		res.NextBits = bits
	default:
		a.met.failures.WithLabelValues("no_group").Inc()
		res, err = localResult(a.h.ID(), len(vec)), fmt.Errorf("%w: %w", ErrNoGroup, matchErr)
		res.NextBits = bits
	}
	res.MatchTime = matchTime
	res.Total = time.Since(start)
	outcome := "ok"
	if res.Fraction < 1 {
		outcome = "partial"
	}
	if err != nil || res.Fraction == 0 {
		outcome = "failed"
	}
	a.met.rounds.WithLabelValues(string(res.Mode), outcome).Inc()
	a.met.duration.WithLabelValues("step").Observe(res.Total.Seconds())
	a.met.fraction.Observe(res.Fraction)
	return res, err
}

// abortable returns a context for matchmaking that ends with ctx or when
// abort is closed; stop releases it and reports whether abort ended it.
func abortable(ctx context.Context, abort <-chan struct{}) (context.Context, func() bool) {
	if abort == nil {
		return ctx, func() bool { return false }
	}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	var aborted atomic.Bool
	go func() {
		select {
		case <-abort:
			aborted.Store(true)
			cancel()
		case <-done:
		}
	}()
	return mctx, func() bool {
		close(done)
		cancel()
		return aborted.Load()
	}
}

// openSession registers sess as the one running for its key and returns the
// key's Moshpit bits and the func that unregisters it; ErrClosed after Close,
// ErrBusy while another Step or Gossip of the key runs.
func (a *Averager) openSession(sess *session) (bits uint32, release func(), err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return 0, nil, ErrClosed
	}
	if a.sessions[sess.key] != nil {
		return 0, nil, ErrBusy
	}
	a.sessions[sess.key] = sess
	a.wg.Add(1)
	return a.bits[sess.key], func() {
		a.mu.Lock()
		delete(a.sessions, sess.key)
		a.mu.Unlock()
		a.wg.Done()
	}, nil
}

// Gossip averages vec pairwise with one random candidate of key that is also
// gossiping in round, without trying to form a group first.
func (a *Averager) Gossip(ctx context.Context, key string, round uint64, vec []float32, weight float64, opts ...StepOption) (Result, error) {
	o := stepOpts{codec: a.cfg.Compression}
	for _, f := range opts {
		f(&o)
	}
	if err := a.validateInput(key, vec, weight, o.codec); err != nil {
		return localResult(a.h.ID(), len(vec)), err
	}
	weight = min(weight, a.cfg.MaxWeight)
	sess := &session{key: key, round: round, vecLen: len(vec), codec: o.codec, weight: weight, vec: vec, done: make(chan struct{})}
	close(sess.done)
	_, release, err := a.openSession(sess)
	if err != nil {
		return localResult(a.h.ID(), len(vec)), err
	}
	defer release()
	ctx, cancel := mergeCancel(ctx, a.ctx)
	defer cancel()
	start := time.Now()
	res, err := a.gossipStep(ctx, sess, a.cfg.Peers(ctx, key))
	res.Total = time.Since(start)
	return res, err
}

func (a *Averager) validateInput(key string, vec []float32, weight float64, c Codec) error {
	switch {
	case key == "" || len(key) > 1024:
		return fmt.Errorf("%w: key of length %d", ErrBadInput, len(key))
	case len(vec) == 0:
		return fmt.Errorf("%w: empty vector", ErrBadInput)
	case !validWeight(weight):
		return fmt.Errorf("%w: weight %v (want finite and > 0)", ErrBadInput, weight)
	case !c.valid():
		return fmt.Errorf("%w: compression %d", ErrBadInput, c)
	}
	if i := fvec.FirstNonFinite(vec); i >= 0 {
		return fmt.Errorf("%w: vector value %d is %v", ErrBadInput, i, vec[i])
	}
	return nil
}

func localResult(self peer.ID, n int) Result {
	return Result{Mode: ModeLocal, Spans: []Span{{0, n, []peer.ID{self}}}, Members: []peer.ID{self}}
}

// mergeCancel returns a context cancelled when either parent is.
func mergeCancel(ctx, other context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(other, cancel)
	return ctx, func() { stop(); cancel() }
}

// countingStream counts payload bytes through a stream.
type counter struct {
	mu         sync.Mutex
	sent, recv int64
}

func (c *counter) add(sent, recv int) {
	c.mu.Lock()
	c.sent += int64(sent)
	c.recv += int64(recv)
	c.mu.Unlock()
}
