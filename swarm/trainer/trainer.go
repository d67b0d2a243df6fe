// Package trainer is a node's part in swarm training: it claims a shard of
// the run (swarm/claims), downloads the shard's state from its holders
// (swarm/statesync), passes micro-batches through the pipeline of shards
// (swarm/pipeline), tells the other nodes how far it got (swarm/progress)
// and, at the end of each epoch (one optimizer step of the swarm, as the
// README defines it under Architecture, "Epoch"), averages with the other
// holders of its shard (averaging) before the optimizer step they all take.
//
// What happens at an epoch's end is decided by swarm/epochs, a pure state
// machine: when the epoch is due, whether to catch up and from whom, when a
// gradient round is pointless, when to average the whole state, when the
// node may move, when to evaluate. The trainer gathers its input (live
// progress records, this node's counters, the time) and carries out the
// actions: closing and reopening epochs, averaging, state sync, the
// optimizer steps and the clipping across shards, evaluation.
//
// # Collaborators
//
// The Trainer composes parts that each own their state:
//
//   - the stage server (stage.go, stageServer) serves the previous stage's
//     requests, runs micro-batches through this stage and forwards them to
//     a holder of the next, retrying others and banning peers that fail or
//     send bad data, with receipts both ways for the work (credit.go); it
//     owns the next stage's balancer, the request slots, the micro-batch
//     IDs and the bytes it sent;
//   - the first-shard driver (driver.go, driver) draws micro-batches from
//     the node's own order of the data and keeps several in flight, as many
//     as the in-flight controller (flight.go) finds keep the engine busy; it
//     owns the data stream, the controller and its count in flight;
//   - the meters (meters.go) own the busy time, samples and throughput, the
//     loss average, the last averaging round and the counts behind the
//     Prometheus collectors (metrics.go) and Status (status.go);
//   - local mode's outer optimizer (outer.go) is pure functions of the
//     anchor, the momentum and the averaged delta; local.go applies them.
//
// The Trainer itself owns the epoch state: the shard and its index and
// state, the epoch and its counters, whether it is closing, the
// micro-batches admitted in it, the local-mode anchor, and the decision
// core. It carries out the core's actions (epoch.go, local.go) and its
// verdicts (bans, agree.go), reports what peers did wrong to it (trust.go:
// pipeline values far above the other senders', far-future requests,
// averaging outliers), claims and moves between shards (claim.go), takes
// state by agreement, with a held-out check of a state a single donor offers
// (agree.go, heldout.go), and serves snapshots. The stage server and the driver reach it only through
// stageGate and driverGate (gate.go): the epoch gate that admits
// micro-batches, and the engine under the engine lock.
//
// # Goroutines
//
// All are started by Run and end with its context:
//   - the gossip loop (progress.Gossip.Run) pushes this node's record;
//   - announceLoop refreshes the shard's DHT provider record;
//   - creditLoop checks a peer's credit claim against its receipts now
//     and then (credit.go);
//   - epochLoop drives the decision core and carries out its actions, one
//     at a time; during a gradient round a watcher asks the core whether to
//     abort it;
//   - rebalanceLoop (unless the shard is pinned) asks the core whether the
//     node may move and the claims plan where;
//   - the driver's loops (driver.run; as many as micro-batches may be in
//     flight, on every node, drawing only while it is online on shard 0)
//     draw micro-batches and send them through the pipeline;
//   - libp2p stream handlers serve pipeline requests (stageServer.handle),
//     state snapshots (statesync), receipts (swarm/credit) and averaging
//     rounds.
//
// # Locks
//
// stepMu (the engine's state: forward and backward hold it for reading;
// optimizer steps, snapshots and state loads for writing) comes before mu
// (the epoch state, the decision core and cond, which signals changes of
// the epoch, state and micro-batches in flight), which comes before the
// leaves: the driver's mu (taken by admitDraw), the meters' mu, the
// tracker's lock, rngMu and the driver's srcMu. The stage server has no
// lock; its balancer, slots and the credit service lock themselves, as
// leaves.
//
// # Time
//
// Every wait, timeout, expiry and measurement runs on Config.Clock
// (internal/clock; nil: the wall clock), which the trainer hands to its
// gossip, state server and balancer: tests drive them with clock.Manual.
// Stream deadlines and contexts' timeouts stay on the wall clock.
//
// It needs a libp2p host and a few hooks into the node daemon (run peers,
// DHT provider records); node/training attaches it to a node.
package trainer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/averaging"
	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/internal/bulk"
	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/internal/guard"
	"github.com/swarm-train/swarm/internal/sparseq"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/credit"
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
	// WorkPeers, when set, is told every few seconds which peers this
	// node works with, most needed first: its shard's holders (averaging,
	// state-sync donors), then the previous and next stages' (pipeline).
	// The node keeps connections to those and lets the rest go.
	WorkPeers func([]peer.ID)
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
	// BulkListen, if set, is the TCP address ("host:port") of a bulk
	// listener (internal/bulk): averaging transfers between peers that
	// both have one go over direct AES-GCM connections, not libp2p
	// streams. The trainer owns it.
	BulkListen string
	// HopTimeout bounds one micro-batch's trip from a stage to the end of
	// the pipeline and back (0: 20s).
	HopTimeout time.Duration
	// CreditEvery is how often one peer's credit claim is checked against
	// its receipts (0: 10 s).
	CreditEvery time.Duration
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
	// Checkpoints is the node's checkpoint policy (durable.go; the zero
	// value: no checkpoints).
	Checkpoints Checkpoints
	// Clock is the time of every wait, timeout, expiry and measurement of
	// the trainer, its progress records, state server and balancer (nil:
	// the wall clock). Stream deadlines and contexts' timeouts stay on the
	// wall clock.
	Clock clock.Clock
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
	if c.CreditEvery <= 0 {
		c.CreditEvery = creditEvery
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
	credit  *credit.Service // this node's receipts (nil without a host key)
	tracker *progress.Tracker
	gossip  *progress.Gossip
	states  *statesync.Server
	avg     *averaging.Averager
	bulk    *bulk.Service // nil without Config.BulkListen
	flops   []float64
	clk     clock.Clock

	// The collaborators (each locks its own state).
	stage  *stageServer
	drive  *driver
	meters *meters

	rngMu sync.Mutex
	rng   *rand.Rand

	// stepMu is the engine lock: Forward/Backward hold it for reading, the
	// optimizer steps, snapshots and state loads for writing (see Locks in
	// the package doc).
	stepMu sync.RWMutex

	// epochsCfg is the run as the decision core sees it; core decides
	// when epochs end and what their end does (t.mu).
	epochsCfg epochs.Config
	core      *epochs.Machine

	// mu guards the epoch state below and the decision core.
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
	inflight int // micro-batches admitted and not released (closeEpoch waits for them)
	// trained: this node stepped on its shard since it joined it (state
	// sync then needs donors that agree; agree.go).
	trained bool
	// heldEpoch is the epoch the shard's parameters belong to (sync mode:
	// the step of epoch E makes them E+1's before the epoch reopens);
	// written under stepMu and mu, read under either.
	heldEpoch uint64
	// lastSeen is, per shard, the highest epoch a holder of it was seen at
	// (status: a shard with no holder).
	lastSeen map[int]uint64
	// unheldLogged: the shard the driver last said it waits for (-1: none).
	unheldLogged int
	dur          durable
	// distrusted are the peers banned for the run for a lie (a state-sync
	// donor, a verdict of the decision core, a reducer the averager caught);
	// banned are the latest of them, which this node's record names
	// (progress.Record.Banned).
	distrusted map[peer.ID]bool
	banned     []string
	// soleWatch watches the run's only holder before a joiner takes its
	// state beyond the corroborated epoch (agree.go).
	soleWatch epochs.SoleWatch
	faults    map[string]bool // Config.Fault
	done      bool
	accuracy  float64
	evalLoss  float64
	movedAt   time.Time
	openedAt  time.Time // when the epoch (round) now running opened
	inner     int       // local mode: inner steps since the last outer step
	// pending: an overlapped outer step is averaging; pendingInner is
	// inner when its deltas were taken.
	pending      bool
	pendingInner int
	// pace (local mode) sizes rounds and the inner steps that may overlap
	// an outer round from the times measured (swarm/epochs, pace.go; t.mu).
	pace *epochs.Pace
	// anchor and outerMom are local mode's outer state (outer.go),
	// written under stepMu by the outer step and catch-up.
	anchor   []float32
	outerMom []float32
	// outerSum fingerprints anchor and outerMom (outerFingerprint) as of
	// the start of round outerAt; set with them, read under mu.
	outerSum uint64
	outerAt  uint64
	// deltaComp (delta_codec topk) compresses local mode's deltas with
	// error feedback, sent with deltaCodec; used under stepMu by the outer
	// step, and reset when the anchor is replaced: by catch-up (under
	// stepMu), or by the outer step when a claim set deltaStale (under mu).
	deltaComp  *sparseq.Compressor
	deltaCodec averaging.Codec
	deltaStale bool
	// accum keeps the open epoch's gradient aside during a delayed step
	// (stepMu).
	accum []float32
	// gradient buffers reused across epochs (gradBuf)
	bufMu sync.Mutex
	bufs  [][]float32
	// delayedSteps counts the steps of rounds that averaged while the
	// next epoch computed (t.mu).
	delayedSteps int

	kick      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	cancel    context.CancelFunc
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
	clk := clock.Or(cfg.Clock)
	t := &Trainer{
		cfg: cfg, m: m, runID: id.String(), h: cfg.Host, log: cfg.Logger.With("component", "trainer"), clk: clk, meters: newMeters(clk),
		tracker: progress.NewTracker(cfg.RecordTTL),
		rng:     rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())), index: -1, state: progress.StateJoining,
		accuracy: -1, kick: make(chan struct{}, 1), lastSeen: map[int]uint64{}, unheldLogged: -1,
	}
	t.cond = sync.NewCond(&t.mu)
	t.stage = newStageServer(&cfg, clk, t.log, pipeline.NewBalancer(rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())), clk), t)
	t.drive = newDriver(clk, t.log, cfg.HopTimeout, cfg.InFlight, t)
	if t.faults, err = parseFaults(cfg.Fault); err != nil {
		return nil, err
	}
	t.stage.gradFlip = t.faults[FaultGradFlip]
	t.epochsCfg = epochs.Config{Self: t.h.ID().String(), Epochs: uint64(t.totalEpochs()), TargetBatch: m.Training.TargetBatch,
		BatchSize: m.Training.BatchSize, GroupSize: m.Averaging.GroupSize, Local: !t.sync(), LocalSteps: m.Averaging.LocalSteps,
		Delayed: m.Averaging.DelayedUpdates}
	t.core = epochs.New(t.epochsCfg)
	t.pace = epochs.NewPace(m.Averaging.LocalSteps, m.Averaging.MaxLocalSteps)
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
	if m.Averaging.DeltaCodec == run.DeltaTopK {
		if t.deltaComp, err = sparseq.NewCompressor(m.Averaging.DeltaKeep, m.Averaging.DeltaBits); err != nil {
			return nil, fmt.Errorf("trainer: averaging.delta_keep/delta_bits: %w", err)
		}
		if t.deltaCodec, err = averaging.SparseCodec(m.Averaging.DeltaBits); err != nil {
			return nil, fmt.Errorf("trainer: averaging.delta_bits: %w", err)
		}
	}
	if cfg.BulkListen != "" {
		if t.bulk, err = bulk.New(t.h, bulk.Config{Listen: cfg.BulkListen, Logger: cfg.Logger}); err != nil {
			return nil, fmt.Errorf("trainer: %w", err)
		}
		cfg.Logger.Info("bulk listener for averaging transfers", "addr", t.bulk.Addr())
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
		AuditRate:       m.Averaging.AuditRate,
		LieAsReducer:    t.faults[FaultReduceLie],
		OnAccusation:    t.reducerLied,
		Bulk:            t.bulk,
	})
	if err != nil {
		t.closeBulk()
		return nil, fmt.Errorf("trainer: averaging: %w", err)
	}
	if t.gossip, err = progress.NewGossip(t.h, t.runID, t.tracker, t.record, cfg.Logger); err != nil {
		_ = t.avg.Close()
		t.closeBulk()
		return nil, fmt.Errorf("trainer: %w", err)
	}
	t.gossip.SetClock(clk)
	t.gossip.SetRefusals(cfg.Refusals)
	t.gossip.SetLimits(t.recordLimits())
	t.states = statesync.NewServer(t.h, t.snapshot)
	t.states.SetClock(clk)
	t.states.SetRefusals(cfg.Refusals)
	t.states.SetEpoch(t.stateEpoch)
	if t.checkpointsOn() {
		t.states.SetCheckpoints(t.servedCheckpoint)
	}
	if t.faults[FaultDonorChunks] {
		t.states.CorruptChunks()
	}
	if err := t.startCredit(); err != nil {
		t.gossip.Close()
		t.states.Close()
		_ = t.avg.Close()
		t.closeBulk()
		return nil, fmt.Errorf("trainer: credit: %w", err)
	}
	t.stage.credit = t.credit
	t.h.SetStreamHandler(pipeline.Protocol, t.stage.handle)
	return t, nil
}

func (t *Trainer) sync() bool { return syncMode(t.m) }

// matchWindow keeps matchmaking short next to the averaging timeout.
func matchWindow(m *run.Manifest) time.Duration {
	return min(time.Second, time.Duration(m.Averaging.TimeoutMS)*time.Millisecond/3)
}

func (t *Trainer) closeBulk() {
	if t.bulk != nil {
		_ = t.bulk.Close()
	}
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
		// The loops are over: the micro-batches in flight are abandoned
		// (their gradient is never applied) and the state is the one of
		// an epoch, which the shutdown checkpoint keeps.
		t.dur.wg.Wait()
		t.saveCheckpoint("shutdown")
		t.h.RemoveStreamHandler(pipeline.Protocol)
		t.stage.pool.closeAll()
		t.h.RemoveStreamHandler(credit.Protocol)
		t.gossip.Close()
		t.states.Close()
		_ = t.avg.Close()
		t.closeBulk()
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
	// Hear from the swarm before choosing (while the data loads), then
	// wait a random moment so nodes that start together spread over the
	// shards; a node that kept a checkpoint knows its shard and does not
	// wait.
	t.goLoop(ctx, func(ctx context.Context) { t.gossip.Run(ctx, t.cfg.RecordTTL/6, 5*time.Millisecond) })
	resume, resumeEpoch := -1, uint64(0)
	if t.cfg.Shard < 0 {
		resume, resumeEpoch = t.resumeShard()
	}
	delay := t.randDur(t.cfg.JoinDelay)
	if resume >= 0 {
		delay = 0
	}
	choose := t.clk.Now().Add(t.cfg.RecordTTL/4 + delay)
	src, err := data.NewSource(t.m, t.h.ID().String(), data.WithDataDir(t.cfg.DataDir))
	if err != nil {
		return fmt.Errorf("trainer: data: %w", err)
	}
	t.drive.src = src
	if err := clock.Sleep(ctx, t.clk, t.clk.Until(choose)); err != nil {
		return err
	}
	index := t.cfg.Shard
	if index < 0 {
		index = t.chooseShard()
		if resume >= 0 && t.mayResumeOn(resume) {
			index = resume
			t.log.Info("taking the shard of this node's newest checkpoint", "shard", index, "epoch", resumeEpoch)
		}
	}
	if err := t.join(ctx, index); err != nil {
		return err
	}
	t.goLoop(ctx, t.announceLoop)
	t.goLoop(ctx, t.creditLoop)
	t.goLoop(ctx, t.epochLoop)
	if t.cfg.WorkPeers != nil {
		t.goLoop(ctx, t.workLoop)
	}
	if t.cfg.Shard < 0 {
		t.goLoop(ctx, t.rebalanceLoop)
	}
	for range t.drive.loops() {
		t.goLoop(ctx, t.drive.run)
	}
	if t.faults[FaultRequestEpoch] {
		t.goLoop(ctx, t.farEpochLoop)
	}
	<-ctx.Done()
	t.mu.Lock()
	t.cond.Broadcast()
	t.mu.Unlock()
	t.wg.Wait()
	return ctx.Err()
}

// workLoop tells the node which peers this node works with (workPeers)
// every quarter of the record TTL.
func (t *Trainer) workLoop(ctx context.Context) {
	tick := t.clk.NewTicker(t.cfg.RecordTTL / 4)
	defer tick.Stop()
	for {
		t.cfg.WorkPeers(t.workPeers())
		select {
		case <-ctx.Done():
			return
		case <-tick.C():
		}
	}
}

// workPeers lists the live holders of this node's shard, then of the
// previous and the next shard, from the progress records.
func (t *Trainer) workPeers() []peer.ID {
	t.mu.Lock()
	own := t.index
	t.mu.Unlock()
	return WorkPeers(t.tracker.Live(t.clk.Now()), own, t.h.ID())
}

// WorkPeers orders the peers of recs that a holder of shard own works
// with: own's holders first, then the holders of own-1 and own+1; self
// and peers of other shards are left out.
func WorkPeers(recs []progress.Record, own int, self peer.ID) []peer.ID {
	var out []peer.ID
	for _, want := range []int{own, own - 1, own + 1} {
		if want < 0 {
			continue
		}
		for _, r := range recs {
			if r.Shard != want || r.Peer == self.String() {
				continue
			}
			if p, err := peer.Decode(r.Peer); err == nil {
				out = append(out, p)
			}
		}
	}
	return out
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

// gradBuf returns an empty buffer with room for n values for an epoch's
// gradient (closeFor, averageGrad), reused across epochs: two of a shard's
// size an epoch would otherwise be allocated, cleared and collected.
func (t *Trainer) gradBuf(n int) []float32 {
	t.bufMu.Lock()
	defer t.bufMu.Unlock()
	for i := len(t.bufs) - 1; i >= 0; i-- {
		if b := t.bufs[i]; cap(b) >= n {
			t.bufs = append(t.bufs[:i], t.bufs[i+1:]...)
			return b[:0]
		}
	}
	return make([]float32, 0, n)
}

// putGradBuf gives back a buffer gradBuf returned (nil: nothing); its
// holder must not use it again.
func (t *Trainer) putGradBuf(b []float32) {
	if cap(b) == 0 {
		return
	}
	t.bufMu.Lock()
	if len(t.bufs) < 4 {
		t.bufs = append(t.bufs, b[:0])
	}
	t.bufMu.Unlock()
}
