// Package trainer is a node's part in swarm training: it claims a shard of
// the run (swarm/claims), downloads the shard's state from its holders
// (swarm/statesync), passes micro-batches through the pipeline of shards
// (swarm/pipeline), tells the other nodes how far it got (swarm/progress)
// and, at the end of each epoch, averages with the other holders of its
// shard (averaging) before the optimizer step they all take. An epoch is
// one collaborative optimizer step (defined in swarm/epochs).
//
// What happens at an epoch's end is decided by swarm/epochs, a pure state
// machine: when the epoch is due, whether to catch up and from whom, when a
// gradient round is pointless, when to average the whole state, when the
// node may move, when to evaluate. The trainer gathers its input (live
// progress records, this node's counters, the time) and carries out the
// actions: closing and reopening epochs, averaging, state sync, the
// optimizer steps and the clipping across shards, evaluation.
//
// Goroutines (all started by Run, ended by its context):
//   - the gossip loop (progress.Gossip.Run) pushes this node's record;
//   - announceLoop refreshes the shard's DHT provider record;
//   - epochLoop drives the decision core and carries out its actions, one
//     at a time; during a gradient round a watcher asks the core whether to
//     abort it;
//   - rebalanceLoop (unless the shard is pinned) asks the core whether the
//     node may move and the claims plan where;
//   - driveLoop, several on a first-shard node, draws micro-batches and
//     sends them through the pipeline;
//   - libp2p stream handlers serve pipeline requests (handle), state
//     snapshots (statesync) and averaging rounds.
//
// Lock order: stepMu (engine state: Forward/Backward read, step, snapshot
// and loading state write) before mu (counters, epoch, the decision core,
// cond), before the tracker's own lock; srcMu and rngMu are leaves.
//
// It needs a libp2p host and a few hooks into the node daemon (run peers,
// DHT provider records); node/training attaches it to a node.
package trainer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/averaging"
	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/internal/guard"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/data"
	"github.com/swarm-train/swarm/swarm/epochs"
	"github.com/swarm-train/swarm/swarm/pipeline"
	"github.com/swarm-train/swarm/swarm/progress"
	"github.com/swarm-train/swarm/swarm/statesync"
)

// Config is what a Trainer needs. Host, Manifest, Engine and RunPeers are
// required.
type Config struct {
	Manifest *run.Manifest
	Engine   engine.Engine
	Host     host.Host
	// RunPeers lists the verified peers of the run (the node's membership).
	RunPeers func() []peer.ID
	// Announce stores a DHT provider record; FindProviders looks them up.
	// Both may be nil (a swarm without a DHT: claims are then known only
	// through progress records).
	Announce      func(ctx context.Context, c cid.Cid) error
	FindProviders func(ctx context.Context, c cid.Cid) ([]peer.AddrInfo, error)
	// Device names the compute device for status ("cpu", a GPU model).
	Device string
	// Shard forces a shard (tests, demos); -1 lets the node choose.
	Shard int
	// DataDir is where MNIST lives ("" = $SWARM_DATA or the module cache).
	DataDir string
	// JoinDelay is the largest random delay before choosing a shard.
	JoinDelay time.Duration
	// RebalanceEvery is the mean interval between rebalancing checks (0: 20s).
	RebalanceEvery time.Duration
	// InFlight is the number of micro-batches a first-shard node keeps in
	// the pipeline at once, at most MaxInFlight (0: adapt it to the
	// pipeline's round trip, between 2 and 8; see flightCtl).
	InFlight int
	// HopTimeout bounds one micro-batch's trip from a stage to the end of
	// the pipeline and back (0: 20s).
	HopTimeout time.Duration
	// RecordTTL is how long a peer's progress record counts without a
	// refresh (0: 8s); records are pushed every TTL/6 and on every change.
	RecordTTL time.Duration
	// FaultNaN makes this node send NaN activations and gradients: a fault
	// injection for tests of exclusion. Never set it otherwise.
	FaultNaN bool
	// Fault is a comma-separated list of Byzantine behaviours (fault.go)
	// for the process tests of the trust rules. Never set it otherwise.
	Fault  string
	Logger *slog.Logger
	// WaitRunning, when set, blocks while the volunteer's limits pause
	// training (gpu.Governor.WaitRunning): first-shard nodes call it before
	// each micro-batch they draw, and requests from other stages are
	// answered busy while it would block.
	WaitRunning func(ctx context.Context) error
	// Rate is the compute rate (FLOP/s) announced before the node has
	// measured itself: swarm bench's cached result or a quick measurement
	// (0: 1e9).
	Rate float64
	// Refusals counts and logs refused peer input of every training
	// protocol and names offenders (nil: refuse silently).
	Refusals *guard.Refusals
}

func (c *Config) defaults() error {
	if c.Manifest == nil || c.Engine == nil || c.Host == nil || c.RunPeers == nil {
		return errors.New("trainer: Manifest, Engine, Host and RunPeers are required")
	}
	if err := c.Manifest.Validate(); err != nil {
		return fmt.Errorf("trainer: %w", err)
	}
	if c.Shard >= len(c.Manifest.Shards) {
		return fmt.Errorf("trainer: shard %d: the run has %d shards", c.Shard, len(c.Manifest.Shards))
	}
	if c.RebalanceEvery == 0 {
		c.RebalanceEvery = 20 * time.Second
	}
	if c.InFlight < 0 || c.InFlight > MaxInFlight {
		return fmt.Errorf("trainer: InFlight %d: want 0 (adapt) to %d", c.InFlight, MaxInFlight)
	}
	if c.HopTimeout <= 0 {
		c.HopTimeout = 20 * time.Second
	}
	if c.RecordTTL <= 0 {
		c.RecordTTL = 8 * time.Second
	}
	if c.Device == "" {
		c.Device = "cpu"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Trainer runs one node's share of a run.
type Trainer struct {
	cfg     Config
	m       *run.Manifest
	runID   string
	h       host.Host
	log     *slog.Logger
	tracker *progress.Tracker
	gossip  *progress.Gossip
	states  *statesync.Server
	avg     *averaging.Averager
	bal     *pipeline.Balancer
	// pipeSlots caps the pipeline requests served at once, per peer and
	// in all; pipeRead bounds reading one (pipeReadTimeout).
	pipeSlots *pipeline.Slots
	pipeRead  time.Duration
	flops     []float64
	start     time.Time

	rngMu sync.Mutex
	rng   *rand.Rand

	// stepMu: Forward/Backward hold it for reading, the optimizer step and
	// snapshots for writing.
	stepMu sync.RWMutex

	// epochsCfg is the run as the decision core sees it; core decides
	// when epochs end and what their end does (t.mu).
	epochsCfg epochs.Config
	core      *epochs.Machine

	mu       sync.Mutex
	cond     *sync.Cond // signalled when epoch, state or inflight change
	shard    engine.Shard
	index    int
	state    string
	epoch    uint64
	samples  int // samples finished in this epoch (local mode: since the last outer step)
	micro    int // micro-batches behind the accumulated gradient
	drawn    int // samples this node started in this epoch and has not finished (first shard)
	norms    []progress.EpochNorm
	closing  bool
	inflight int
	driving  int // micro-batches this node drew and has not finished (first shard)
	flight   flightCtl
	ahead    uint64 // highest epoch seen in a request from a peer
	// trained: this node stepped on its shard since it joined it (state
	// sync then needs donors that agree; agree.go).
	trained bool
	// distrusted are state-sync donors banned for the run.
	distrusted map[peer.ID]bool
	faults     map[string]bool // Config.Fault
	done       bool
	accuracy   float64
	evalLoss   float64
	lossEMA    float64
	movedAt    time.Time
	inner      int // local mode: inner steps since the last outer step
	// pending: an overlapped outer step is averaging; pendingInner is
	// inner when its deltas were taken.
	pending      bool
	pendingInner int
	anchor       []float32
	outerMom     []float32

	// measurements
	busy        time.Duration // wall time during which the engine computed (beginCompute)
	computing   int           // engine calls running now
	computeFrom time.Time     // when the running ones began
	flightBusy  time.Duration // busy when the last micro-batch finished (flightCtl)
	processed   int64         // samples through this shard, all time
	tpWindow    []tpPoint
	lastAvg     avgInfo
	src         data.Source
	srcMu       sync.Mutex
	nextMB      uint64
	kick        chan struct{}
	wg          sync.WaitGroup
	closeOnce   sync.Once
	cancel      context.CancelFunc
	ctr         counters // behind the Prometheus collectors (metrics.go)
}

type tpPoint struct {
	t time.Time
	n int64
}

type avgInfo struct {
	Round     uint64  `json:"round"`
	GroupSize int     `json:"group_size"`
	Fraction  float64 `json:"fraction"`
	Mode      string  `json:"mode"`
	Seconds   float64 `json:"seconds"`
}

// New builds a trainer and registers its protocols on the host; Run starts it.
func New(cfg Config) (*Trainer, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	m := cfg.Manifest
	id, err := m.ID()
	if err != nil {
		return nil, err
	}
	t := &Trainer{
		cfg: cfg, m: m, runID: id.String(), h: cfg.Host, log: cfg.Logger.With("component", "trainer"),
		tracker: progress.NewTracker(cfg.RecordTTL), bal: pipeline.NewBalancer(rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())), nil),
		rng: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())), index: -1, state: progress.StateJoining,
		accuracy: -1, kick: make(chan struct{}, 1), start: time.Now(), flight: newFlightCtl(),
		pipeSlots: pipeline.NewSlots(pipePerPeer, pipeTotal), pipeRead: pipeReadTimeout,
	}
	t.cond = sync.NewCond(&t.mu)
	if t.faults, err = parseFaults(cfg.Fault); err != nil {
		return nil, err
	}
	t.epochsCfg = epochs.Config{Self: t.h.ID().String(), Epochs: uint64(t.totalEpochs()), TargetBatch: m.Training.TargetBatch,
		BatchSize: m.Training.BatchSize, GroupSize: m.Averaging.GroupSize, Local: !t.sync(), LocalSteps: m.Averaging.LocalSteps}
	t.core = epochs.New(t.epochsCfg)
	for i := range m.Shards {
		f, err := m.FLOPsPerSample(i)
		if err != nil {
			return nil, err
		}
		t.flops = append(t.flops, f)
	}
	codec, err := averaging.ParseCodec(m.Averaging.Compression)
	if err != nil {
		return nil, err
	}
	t.avg, err = averaging.New(t.h, averaging.Config{
		Peers:           t.averagingPeers,
		TargetGroupSize: m.Averaging.GroupSize,
		MinGroupSize:    m.Averaging.MinGroupSize,
		MatchWindow:     matchWindow(m),
		Compression:     codec,
		MaxWeight:       float64(m.Training.TargetBatch),
		Logger:          cfg.Logger,
		Refusals:        cfg.Refusals,
		Aggregation:     averaging.AggregationNamed(m.Averaging.Aggregation),
		ClipTau:         m.Averaging.ClipTau,
		ClipIters:       m.Averaging.ClipIters,
		NormK:           m.Averaging.NormK,
		AuditParts:      m.Averaging.AuditParts,
	})
	if err != nil {
		return nil, fmt.Errorf("trainer: averaging: %w", err)
	}
	t.gossip = progress.NewGossip(t.h, t.runID, t.tracker, cfg.RunPeers, t.record, cfg.Logger)
	t.gossip.SetRefusals(cfg.Refusals)
	t.gossip.SetLimits(t.recordLimits())
	t.states = statesync.NewServer(t.h, t.snapshot)
	t.states.SetRefusals(cfg.Refusals)
	t.states.SetEpoch(t.stateEpoch)
	if t.faults[FaultDonorChunks] {
		t.states.CorruptChunks()
	}
	t.h.SetStreamHandler(pipeline.Protocol, t.handle)
	return t, nil
}

// matchWindow keeps matchmaking short next to the averaging timeout.
func matchWindow(m *run.Manifest) time.Duration {
	return min(time.Second, time.Duration(m.Averaging.TimeoutMS)*time.Millisecond/3)
}

// Close stops the trainer and removes its protocol handlers. It is idempotent.
func (t *Trainer) Close() error {
	t.closeOnce.Do(func() {
		t.mu.Lock()
		cancel := t.cancel
		t.cond.Broadcast()
		t.mu.Unlock()
		if cancel != nil {
			cancel()
		}
		t.wg.Wait()
		t.h.RemoveStreamHandler(pipeline.Protocol)
		t.gossip.Close()
		t.states.Close()
		_ = t.avg.Close()
		t.mu.Lock()
		if t.shard != nil {
			_ = t.shard.Close()
			t.shard = nil
		}
		t.mu.Unlock()
	})
	return nil
}

// Run trains until ctx ends (a finished run keeps serving evaluation and
// state to others). It returns ctx's error or a fatal setup error.
func (t *Trainer) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	t.mu.Lock()
	t.cancel = cancel
	t.mu.Unlock()
	defer cancel()
	src, err := data.NewSource(t.m, t.h.ID().String(), data.WithDataDir(t.cfg.DataDir))
	if err != nil {
		return fmt.Errorf("trainer: data: %w", err)
	}
	t.src = src
	t.goLoop(ctx, func(ctx context.Context) { t.gossip.Run(ctx, t.cfg.RecordTTL/6, 5*time.Millisecond) })

	// Hear from the swarm before choosing, then wait a random moment so
	// nodes that start together spread over the shards.
	if err := sleepCtx(ctx, t.cfg.RecordTTL/4+t.randDur(t.cfg.JoinDelay)); err != nil {
		return err
	}
	index := t.cfg.Shard
	if index < 0 {
		index = t.chooseShard()
	}
	if err := t.join(ctx, index); err != nil {
		return err
	}
	t.goLoop(ctx, t.announceLoop)
	t.goLoop(ctx, t.epochLoop)
	if t.cfg.Shard < 0 {
		t.goLoop(ctx, t.rebalanceLoop)
	}
	for range t.driveLoops() {
		t.goLoop(ctx, t.driveLoop)
	}
	<-ctx.Done()
	t.mu.Lock()
	t.cond.Broadcast()
	t.mu.Unlock()
	t.wg.Wait()
	return ctx.Err()
}

func (t *Trainer) goLoop(ctx context.Context, f func(context.Context)) {
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		f(ctx)
	}()
}

func (t *Trainer) randDur(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	t.rngMu.Lock()
	defer t.rngMu.Unlock()
	return time.Duration(t.rng.Int64N(int64(d)))
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// finite reports whether every value is finite.
func finite(v []float32) bool {
	for _, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return false
		}
	}
	return true
}
