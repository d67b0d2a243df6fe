// Package training is the service that makes a node train: it builds the
// swarm trainer (swarm/trainer) on the node's gated run host and attaches
// it to the daemon through node.Config.Services. It lives outside node so
// that the daemon core knows nothing of engines or trainers; cmd/swarm
// picks the engine and hands it in.
package training

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/swarm-train/swarm/gpu"
	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/node"
	"github.com/swarm-train/swarm/node/api"
	"github.com/swarm-train/swarm/swarm/trainer"
)

// Service is the node.Service that makes a node train: it builds a
// swarm/trainer.Trainer on the node's host, feeds it the node's run peers
// and DHT provider records, registers its collectors (swarm_training_*) on
// the node's registry, and fills the training fields of the status answer
// (epoch, shards, the peers' shards and devices); the trainer's whole view
// is also under services.training.
//
// Training pauses while any of the volunteer's pause rules holds it
// (gpu.Gate, combined in one place): manual (swarm pause, the dashboard),
// active-hours, cpu-busy and, with a GPU sampler, gpu (a gpu.Governor
// samples the GPUs). Status says which rules hold under services.pause.
type Service struct {
	// Config is the trainer's configuration; Host, RunPeers, Announce,
	// FindProviders, Logger and WaitRunning are filled in from the node.
	Config trainer.Config
	// Engine is the engine's name for status (native, torch-cpu, torch-cuda).
	Engine string
	// Limits are the volunteer's GPU limits; they apply when Sampler is set.
	Limits gpu.Limits
	// Sampler reads the GPUs lent to training (nil: no GPU in use, never
	// pause). The service closes it.
	Sampler gpu.Sampler
	// SampleEvery is the governor's sampling interval (0: 5 s).
	SampleEvery time.Duration
	// ActiveHours is the daily window of local time training runs in (the
	// zero value: all hours).
	ActiveHours gpu.ActiveHours
	// PauseOtherCPUPct holds training while other processes use more than
	// this share of the CPU (0: never); it resumes after Limits.ResumeAfter
	// below the threshold less 10 points.
	PauseOtherCPUPct int
	// PauseOnInput holds training while the machine is in use: keyboard
	// or mouse input within this period (0: never; see gpu.InputIdle).
	PauseOnInput time.Duration
	// RuleEvery is how often the active-hours and cpu-busy rules are
	// checked (0: 5 s).
	RuleEvery time.Duration
	// Data, when set, is the run's data set service (attached before this
	// one): the trainer reads the data from its folder and starts once it
	// holds the whole data set.
	Data *Data

	// inputUnavailable is why the in-use rule cannot see input here.
	inputUnavailable string

	mu     sync.Mutex
	t      *trainer.Trainer
	gov    *gpu.Governor
	gate   *gpu.Gate
	done   chan struct{}
	err    error
	cancel context.CancelFunc // stops the governor's loops
	wg     sync.WaitGroup

	// The trainer's status, computed once for both the typed fields and
	// services.training of one status answer (it hashes the parameters).
	lastMu sync.Mutex
	last   trainer.Status
	lastAt time.Time

	stall stallWatch // training held up by connectivity (stall.go)
}

// trainerStatus is t.Status(), reused for 200 ms.
func (s *Service) trainerStatus(t *trainer.Trainer) trainer.Status {
	s.lastMu.Lock()
	defer s.lastMu.Unlock()
	if clk := s.clk(); clk.Since(s.lastAt) > 200*time.Millisecond {
		s.last, s.lastAt = t.Status(), clk.Now()
	}
	return s.last
}

// clk is the service's clock: the trainer's (Config.Clock, nil: the wall
// clock), which the pause rules and the governor share.
func (s *Service) clk() clock.Clock { return clock.Or(s.Config.Clock) }

// Start implements node.Service.
func (s *Service) Start(ctx context.Context, n *node.Node) (err error) {
	defer func() {
		if err != nil && s.Sampler != nil {
			_ = s.Sampler.Close()
		}
	}()
	if !n.Trains() {
		return errors.New("training: a bootstrap node does not train")
	}
	if id, err := s.Config.Manifest.ID(); err != nil || !id.Equals(n.RunID()) {
		return fmt.Errorf("training: the manifest's run ID does not match the node's run %s", n.RunID())
	}
	cfg := s.Config
	cfg.Host = n.RunHost() // training protocols serve and reach admitted run peers only
	if cfg.Refusals == nil {
		cfg.Refusals = n.Refusals()
	}
	cfg.RunPeers = func() []peer.ID {
		ais := n.RunPeers()
		out := make([]peer.ID, len(ais))
		for i, ai := range ais {
			out[i] = ai.ID
		}
		return out
	}
	cfg.Announce = n.Announce
	cfg.WorkPeers = n.SetWorkPeers
	cfg.FindProviders = n.FindProviders
	if s.Data != nil {
		cfg.DataDir = s.Data.Dir()
	}
	if cfg.Logger == nil {
		cfg.Logger = n.Logger()
	}
	if cfg.Device == "" {
		cfg.Device = "cpu"
	}
	s.Config.Device = cfg.Device
	clk := s.clk()
	gate := gpu.NewGate()
	cfg.WaitRunning = gate.WaitRunning
	var watcher *gpu.RuleWatcher
	if s.ActiveHours.IsSet() || s.PauseOtherCPUPct > 0 || s.PauseOnInput > 0 {
		watcher = &gpu.RuleWatcher{Gate: gate, Hours: s.ActiveHours}
		if s.PauseOtherCPUPct > 0 {
			if watcher.CPU, err = gpu.NewCPUBusy(s.PauseOtherCPUPct, s.Limits.ResumeAfter); err != nil {
				return fmt.Errorf("training: %w", err)
			}
		}
		if s.PauseOnInput > 0 {
			if watcher.Input, err = gpu.NewInputIdle(s.PauseOnInput); err != nil {
				return fmt.Errorf("training: %w", err)
			}
			if _, err := gpu.ReadInputCount(); err != nil {
				s.inputUnavailable = err.Error()
				n.Logger().Warn("pause-on-input: this machine shows no keyboard or mouse activity; the rule never holds", "why", err)
			}
		}
		watcher.Step(clk.Now()) // a node started outside its hours never trains a batch
	}
	var gov *gpu.Governor
	if s.Sampler != nil {
		gm, err := gpu.NewMetrics(n.Registerer())
		if err != nil {
			return fmt.Errorf("training: gpu metrics: %w", err)
		}
		if gov, err = gpu.NewGovernor(s.Limits, gm); err != nil {
			return fmt.Errorf("training: %w", err)
		}
		gov.OnDecision(func(d gpu.Decision) {
			reason := ""
			if d.State == gpu.Paused {
				if reason = d.Reason; reason == "" {
					reason = "the GPU limits"
				}
			}
			gate.Set(clk.Now(), gpu.RuleGPU, reason)
		})
	}
	t, err := trainer.New(cfg)
	if err != nil {
		return err
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "swarm", Subsystem: "training", Name: "device_info",
		Help:        "1, labelled with the device this node trains on (GPU model or CPU) and the engine.",
		ConstLabels: prometheus.Labels{"device": cfg.Device, "engine": s.Engine}})
	info.Set(1)
	if err := errors.Join(t.RegisterMetrics(n.Registerer()), n.Registerer().Register(info)); err != nil {
		_ = t.Close()
		return fmt.Errorf("training: metrics: %w", err)
	}
	s.mu.Lock()
	s.t, s.gov, s.gate, s.done = t, gov, gate, make(chan struct{})
	s.mu.Unlock()
	n.AddStatus("training", func() any { return s.trainerStatus(t) })
	if gov != nil {
		n.AddStatus("gpu", func() any { return gov.Status() })
	}
	n.AddStatus("pause", func() any { return s.PauseStatus() })
	n.FillStatus(func(st *api.Status) { s.fill(n, st) })
	self := n.Host().ID().String()
	version := n.Config().AppVersion
	n.SetSummary(func() (api.RunSummary, bool) {
		ts := s.trainerStatus(t)
		sum := api.RunSummary{Shard: ts.Shard, State: ts.State, Epoch: ts.Epoch, Loss: ts.Loss, Processed: ts.Processed, Credit: ts.Credit.Samples,
			BusySeconds: ts.BusySeconds, Device: cfg.Device, Engine: s.Engine, Version: version}
		for _, p := range ts.Peers {
			if p.PeerID == self {
				sum.SamplesPerS = p.Throughput
			}
		}
		return sum, true
	})
	gctx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		logPauses(gctx, gate, n)
	}()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.watchStalls(gctx, n, t)
	}()
	if watcher != nil {
		every := s.RuleEvery
		if every <= 0 {
			every = 5 * time.Second
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			watcher.Run(gctx, clk, every)
		}()
	}
	if gov != nil {
		every := s.SampleEvery
		if every <= 0 {
			every = 5 * time.Second
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			gov.Watch(gctx, s.Sampler, every, clk, ownChild)
		}()
	}
	go func() {
		defer close(s.done)
		if s.Data != nil {
			if err := s.Data.Wait(ctx); err != nil {
				return // the node is closing
			}
		}
		if err := t.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			n.Logger().Error("training stopped", "err", err)
			s.mu.Lock()
			s.err = err
			s.mu.Unlock()
		}
	}()
	return nil
}

// logPauses logs every rule that starts or stops holding training.
func logPauses(ctx context.Context, gate *gpu.Gate, n *node.Node) {
	held := map[string]bool{}
	for {
		ch := gate.Changed()
		now := map[string]bool{}
		for _, h := range gate.Holds() {
			now[h.Rule] = true
			if !held[h.Rule] {
				n.Logger().Warn("training paused", "rule", h.Rule, "reason", h.Reason)
			}
		}
		for r := range held {
			if !now[r] {
				n.Logger().Info("pause rule cleared", "rule", r, "paused", len(now) > 0)
			}
		}
		held = now
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

// SetManual sets (pause) or clears (resume) a pause rule by hand; only the
// manual rule may be (gpu.CheckSettable names why the others may not).
func (s *Service) SetManual(rule string, pause bool) (api.Pause, error) {
	if rule == "" {
		rule = gpu.RuleManual
	}
	if err := gpu.CheckSettable(rule); err != nil {
		return api.Pause{}, err
	}
	s.mu.Lock()
	gate := s.gate
	s.mu.Unlock()
	if gate == nil {
		return api.Pause{}, node.ErrNotTraining
	}
	reason := ""
	if pause {
		reason = "paused by the volunteer (swarm pause or the dashboard); swarm resume continues"
	}
	gate.Set(s.clk().Now(), rule, reason)
	return s.PauseStatus(), nil
}

// PauseStatus is the pause part of status (services.pause).
func (s *Service) PauseStatus() api.Pause {
	s.mu.Lock()
	gate := s.gate
	s.mu.Unlock()
	p := api.Pause{State: "running", Holds: []api.Hold{}, ActiveHours: s.ActiveHours.String(), PauseOtherCPUPct: s.PauseOtherCPUPct}
	if s.PauseOnInput > 0 {
		p.PauseOnInput = s.PauseOnInput.String()
		if s.inputUnavailable != "" {
			p.PauseOnInput += " (unavailable: " + s.inputUnavailable + ")"
		}
	}
	if gate == nil {
		return p
	}
	for _, h := range gate.Holds() {
		p.Holds = append(p.Holds, api.Hold{Rule: h.Rule, Reason: h.Reason, Since: h.Since.UTC().Format(time.RFC3339)})
	}
	if len(p.Holds) > 0 {
		p.State = "paused"
	}
	return p
}

// fill sets the training fields of a status answer from the trainer's view.
func (s *Service) fill(n *node.Node, st *api.Status) {
	s.mu.Lock()
	t, gov := s.t, s.gov
	s.mu.Unlock()
	if t == nil {
		return
	}
	ts := s.trainerStatus(t)
	st.Engine, st.Device = s.Engine, s.Config.Device
	st.State, st.Shard, st.Epoch, st.Epochs = ts.State, ts.Shard, ts.Epoch, ts.Epochs
	st.SamplesPerS, st.Loss, st.Credit = ts.SamplesPerS, ts.Loss, ts.Credit.Samples
	if a := ts.Averaging; a.GroupSize > 0 {
		st.Averaging = &api.Averaging{Round: a.Round, GroupSize: a.GroupSize, Fraction: a.Fraction, Seconds: a.Seconds}
	}
	st.Stall = s.stall.current()
	st.Shards = make([]api.Shard, 0, len(ts.Shards))
	for _, sh := range ts.Shards {
		st.Shards = append(st.Shards, api.Shard{Index: sh.Index, Peers: append([]string{}, sh.Peers...), Throughput: sh.Throughput,
			NoHolder: sh.NoHolder, LastSeenEpoch: sh.LastSeenEpoch})
	}
	if gov != nil {
		gs := gov.Status()
		st.Governor = &api.Governor{State: string(gs.State), Reason: gs.Reason}
	}
	// Peers: the training peers' records annotate the connected and run
	// peers; a training peer not connected right now is listed too.
	recs := make(map[string]trainer.PeerStatus, len(ts.Peers))
	for _, p := range ts.Peers {
		if p.PeerID != st.PeerID {
			recs[p.PeerID] = p
		}
	}
	annotate := func(list []api.Peer) {
		for i := range list {
			if r, ok := recs[list[i].PeerID]; ok {
				shard := r.Shard
				list[i].Shard, list[i].Device, list[i].State = &shard, r.Device, r.State
				list[i].Epoch, list[i].Throughput = r.Epoch, r.Throughput
				list[i].Credit, list[i].CreditCheck = r.Credit, r.CreditCheck
			}
		}
	}
	annotate(st.Peers)
	annotate(st.RunPeers)
	listed := make(map[string]bool, len(st.Peers))
	for _, p := range st.Peers {
		listed[p.PeerID] = true
	}
	for _, p := range ts.Peers {
		if p.PeerID == st.PeerID || listed[p.PeerID] {
			continue
		}
		shard := p.Shard
		ap := api.Peer{PeerID: p.PeerID, Addrs: []string{}, Shard: &shard, Device: p.Device, State: p.State, Epoch: p.Epoch, Throughput: p.Throughput,
			Credit: p.Credit, CreditCheck: p.CreditCheck}
		if id, err := peer.Decode(p.PeerID); err == nil {
			ap.Addrs = addrStrings(n.Host().Peerstore().Addrs(id))
		}
		st.Peers = append(st.Peers, ap)
	}
}

// Trainer returns the running trainer (nil before Start).
func (s *Service) Trainer() *trainer.Trainer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.t
}

// Governor returns the GPU limits' governor (nil without a sampler).
func (s *Service) Governor() *gpu.Governor {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gov
}

// Close implements node.Service: it stops the trainer and the governor, then
// closes the sampler and the engine (a torch engine's workers end with it).
func (s *Service) Close() error {
	s.mu.Lock()
	t, done := s.t, s.done
	s.mu.Unlock()
	var err error
	if t != nil {
		err = t.Close()
		<-done
	}
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	if s.Sampler != nil {
		err = errors.Join(err, s.Sampler.Close())
	}
	if t != nil && s.Config.Engine != nil {
		err = errors.Join(err, s.Config.Engine.Close())
	}
	return err
}

// ownChild reports whether pid is a child of this process (the torch
// engine's workers), so its GPU use is not counted as other processes'.
func ownChild(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// "pid (comm) state ppid ...": comm may hold spaces and parentheses.
	i := strings.LastIndex(string(b), ") ")
	if i < 0 {
		return false
	}
	f := strings.Fields(string(b)[i+2:])
	if len(f) < 2 {
		return false
	}
	ppid, err := strconv.Atoi(f[1])
	return err == nil && ppid == os.Getpid()
}

func addrStrings(addrs []ma.Multiaddr) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}
