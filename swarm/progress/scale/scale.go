// Package scale simulates one run of many peers in one process: libp2p
// mocknet hosts, each with the real progress gossip (GossipSub topic,
// validator, pacing) and tracker, but no trainer. Each node dials a few
// random peers when it starts (bounded connectivity) and the mesh does the
// rest. A script of joins, departures and kills measures what a node pays
// for progress (messages, bytes, connections, CPU, memory) and what the
// swarm gets (how soon a joiner sees its shard's holders, how soon an epoch
// close reaches 95% of nodes, how fast averaging groups form per shard).
package scale

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/swarm-train/swarm/averaging"
	"github.com/swarm-train/swarm/swarm/progress"
)

// Config is one simulation.
type Config struct {
	N        int           // peers of the run at the start
	Shards   int           // shards of the run (node i holds shard i mod Shards)
	Degree   int           // peers a node dials when it starts
	Budget   float64       // progress.Gossip's budget (records/s); 0: progress.DefaultBudget
	TTL      time.Duration // tracker TTL (the trainer's 8 s)
	Interval time.Duration // heartbeat at small sizes (the trainer's TTL/6)
	MinGap   time.Duration // least gap between publishes (the trainer's 5 ms)
	Change   time.Duration // each node's record changes this often (samples done)
	Window   time.Duration // steady-state measurement
	Trials   int           // epoch closes measured
	Joiners  int           // nodes that join after the start
	Leavers  int           // nodes that leave cleanly
	Kills    int           // nodes whose host dies without a word
	Match    bool          // run a matchmaking round per shard with the averaging matchmaker
	Group    int           // target averaging group size
	Seed     uint64
	Log      func(format string, args ...any)
}

// Defaults fills zero fields with the trainer's values and a 10-shard run.
func (c Config) Defaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.Shards <= 0 {
		c.Shards = 10
	}
	if c.Degree <= 0 {
		c.Degree = 8
	}
	def(&c.TTL, 8*time.Second)
	def(&c.Interval, c.TTL/6)
	def(&c.MinGap, 5*time.Millisecond)
	def(&c.Change, 100*time.Millisecond)
	def(&c.Window, 15*time.Second)
	if c.Trials <= 0 {
		c.Trials = 3
	}
	if c.Group <= 0 {
		c.Group = 8
	}
	if c.Log == nil {
		c.Log = func(string, ...any) {}
	}
	return c
}

// Result is what one simulation measured. Per-node figures are medians
// over the nodes (p95 where named).
type Result struct {
	N      int `json:"n"`
	Shards int `json:"shards"`
	Degree int `json:"degree"`
	// Steady state, per node.
	MsgsIn      float64 `json:"msgs_in_s"`      // records received a second (duplicates included)
	Delivered   float64 `json:"delivered_s"`    // distinct records accepted a second
	Published   float64 `json:"published_s"`    // own records published a second
	BytesIn     float64 `json:"bytes_in_s"`     // progress topic RPC bytes received a second
	BytesOut    float64 `json:"bytes_out_s"`    // and sent
	BytesInP95  float64 `json:"bytes_in_p95_s"` // p95 over nodes
	Conns       float64 `json:"conns"`          // connections held
	ConnsMax    int     `json:"conns_max"`
	Mesh        float64 `json:"mesh"`         // topic peers
	CPUms       float64 `json:"cpu_ms_s"`     // process CPU ms a second, per node
	HeapKiB     float64 `json:"heap_kib"`     // Go heap in use per node
	Coverage    float64 `json:"coverage"`     // median share of live peers a node holds a record of
	StartS      float64 `json:"start_s"`      // bring-up until 95% of nodes hold 95% of records
	JoinP50     float64 `json:"join_p50_s"`   // joiner sees every holder of its shard
	JoinMax     float64 `json:"join_max_s"`   // slowest joiner
	Epoch95     float64 `json:"epoch95_s"`    // an epoch close known to 95% of nodes (median of trials)
	Leave95     float64 `json:"leave95_s"`    // a clean departure known to 95%
	Kill95      float64 `json:"kill95_s"`     // a killed node dropped by 95% (its records expire)
	MatchP50    float64 `json:"match_p50_s"`  // matchmaking time per peer
	MatchP95    float64 `json:"match_p95_s"`  //
	GroupedFrac float64 `json:"grouped_frac"` // peers that ended in a group
	Groups      int     `json:"groups"`       // groups formed
	// Router trouble over the whole run, summed over nodes.
	Rejected    uint64   `json:"rejected"`
	Throttled   uint64   `json:"throttled"`
	Dropped     uint64   `json:"dropped"`
	Undelivered uint64   `json:"undelivered"`
	ScoreMin    float64  `json:"score_min"` // lowest score a node gives a peer
	Failures    []string `json:"failures,omitempty"`
}

type node struct {
	h       host.Host
	g       *progress.Gossip
	tr      *progress.Tracker
	shard   int
	state   atomic.Value // string
	epoch   atomic.Uint64
	samples atomic.Int64
	cancel  context.CancelFunc
	done    chan struct{}
	gone    bool // left or killed
}

type sim struct {
	cfg   Config
	mn    mocknet.Mocknet
	rng   *rand.Rand
	runID string
	mu    sync.Mutex
	nodes []*node
	log   *slog.Logger
	epoch atomic.Uint64
}

// Run runs one simulation and returns what it measured.
func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg = cfg.Defaults()
	s := &sim{cfg: cfg, mn: mocknet.New(), rng: rand.New(rand.NewPCG(cfg.Seed, 1)), runID: "scale-run",
		log: slog.New(slog.DiscardHandler)}
	defer s.close()
	res := Result{N: cfg.N, Shards: cfg.Shards, Degree: cfg.Degree}
	t0 := time.Now()
	for i := range cfg.N {
		if _, err := s.add(ctx, i%cfg.Shards, progress.StateOnline); err != nil {
			return res, err
		}
		if (i+1)%100 == 0 {
			cfg.Log("%d peers up (%.1f s)", i+1, time.Since(t0).Seconds())
		}
	}
	if err := s.converge(ctx, 0.95, 0.95, 5*time.Minute); err != nil {
		res.Failures = append(res.Failures, err.Error())
	}
	res.StartS = time.Since(t0).Seconds()
	cfg.Log("converged in %.1f s", res.StartS)
	if cfg.N <= 0 {
		return res, nil
	}
	s.steady(ctx, &res)
	cfg.Log("steady: %.0f msgs/s, %.0f B/s in, %.0f conns, %.1f CPU ms/s per node", res.MsgsIn, res.BytesIn, res.Conns, res.CPUms)
	var epochs []float64
	for i := range cfg.Trials {
		if i > 0 {
			// Let the swarm settle into the new epoch first.
			_ = sleep(ctx, 2*time.Second)
		}
		d, err := s.epochClose(ctx)
		if err != nil {
			res.Failures = append(res.Failures, err.Error())
			continue
		}
		epochs = append(epochs, d.Seconds())
	}
	res.Epoch95 = quantile(epochs, 0.5)
	cfg.Log("epoch close at 95%%: %.3f s", res.Epoch95)
	var joins []float64
	for j := range cfg.Joiners {
		d, err := s.join(ctx, j%cfg.Shards)
		if err != nil {
			res.Failures = append(res.Failures, err.Error())
			continue
		}
		joins = append(joins, d.Seconds())
	}
	res.JoinP50, res.JoinMax = quantile(joins, 0.5), quantile(joins, 1)
	cfg.Log("joiners: p50 %.2f s, max %.2f s", res.JoinP50, res.JoinMax)
	if cfg.Leavers > 0 {
		d, err := s.depart(ctx, cfg.Leavers, false)
		if err != nil {
			res.Failures = append(res.Failures, err.Error())
		}
		res.Leave95 = d.Seconds()
	}
	if cfg.Kills > 0 {
		d, err := s.depart(ctx, cfg.Kills, true)
		if err != nil {
			res.Failures = append(res.Failures, err.Error())
		}
		res.Kill95 = d.Seconds()
	}
	s.trouble(&res)
	if cfg.Match {
		if err := s.match(ctx, &res); err != nil {
			res.Failures = append(res.Failures, err.Error())
		}
	}
	return res, nil
}

func (s *sim) close() {
	s.mu.Lock()
	nodes := s.nodes
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, n := range nodes {
		if !n.gone {
			wg.Go(n.stop)
		}
	}
	wg.Wait()
	_ = s.mn.Close()
}

func (n *node) stop() {
	n.cancel()
	<-n.done
	n.g.Close()
}

// add starts a node holding shard: a host, links and connections to
// Degree random live nodes, and its gossip.
func (s *sim) add(ctx context.Context, shard int, state string) (*node, error) {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(s.rng.Uint32())
	}
	sk, _, err := crypto.KeyPairFromStdKey(ptr(ed25519.NewKeyFromSeed(seed)))
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	i := len(s.nodes)
	s.mu.Unlock()
	addr, err := ma.NewMultiaddr(fmt.Sprintf("/ip4/10.%d.%d.%d/tcp/4001", i>>16&255, i>>8&255, i&255))
	if err != nil {
		return nil, err
	}
	h, err := s.mn.AddPeer(sk, addr)
	if err != nil {
		return nil, err
	}
	n := &node{h: h, tr: progress.NewTracker(s.cfg.TTL), shard: shard, done: make(chan struct{})}
	n.state.Store(state)
	n.epoch.Store(s.epoch.Load())
	n.g, err = progress.NewGossip(h, s.runID, n.tr, n.record, s.log)
	if err != nil {
		return nil, err
	}
	n.g.SetBudget(s.cfg.Budget)
	n.g.SetLimits(progress.Limits{Shards: s.cfg.Shards, MaxSamples: 1 << 20, MaxEpoch: 1 << 20})
	live := s.live()
	for _, j := range s.rng.Perm(len(live))[:min(s.cfg.Degree, len(live))] {
		o := live[j]
		if _, err := s.mn.LinkPeers(h.ID(), o.h.ID()); err != nil {
			return nil, err
		}
		if _, err := s.mn.ConnectPeers(h.ID(), o.h.ID()); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	s.nodes = append(s.nodes, n)
	s.mu.Unlock()
	nctx, cancel := context.WithCancel(ctx)
	n.cancel = cancel
	go func() {
		defer close(n.done)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.g.Run(nctx, s.cfg.Interval, s.cfg.MinGap)
		}()
		// The record changes every Change (samples done), as a trainer's
		// does with each micro-batch.
		tick := time.NewTicker(s.cfg.Change)
		defer tick.Stop()
		for {
			select {
			case <-nctx.Done():
				wg.Wait()
				return
			case <-tick.C:
				n.samples.Add(8)
				n.g.Poke()
			}
		}
	}()
	return n, nil
}

func ptr[T any](v T) *T { return &v }

func (n *node) record() progress.Record {
	return progress.Record{Shard: n.shard, State: n.state.Load().(string), Device: "sim", Rate: 1e12, Throughput: 80,
		Epoch: n.epoch.Load(), Samples: int(n.samples.Load() % (1 << 20)), Accuracy: -1}
}

// live returns the nodes that have not left or died.
func (s *sim) live() []*node {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*node
	for _, n := range s.nodes {
		if !n.gone {
			out = append(out, n)
		}
	}
	return out
}

// converge waits until a share nodesFrac of live nodes hold live records
// of a share recsFrac of the live nodes.
func (s *sim) converge(ctx context.Context, nodesFrac, recsFrac float64, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		live := s.live()
		ok := 0
		for _, n := range live {
			if float64(len(n.tr.Live(time.Now()))) >= recsFrac*float64(len(live)) {
				ok++
			}
		}
		if float64(ok) >= nodesFrac*float64(len(live)) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v only %d of %d nodes hold %.0f%% of the records", limit, ok, len(live), 100*recsFrac)
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

type counts struct{ in, delivered, published, bytesIn, bytesOut uint64 }

func snapshot(n *node) counts {
	t := n.g.Traffic()
	return counts{t.MsgsIn.Load(), t.Delivered.Load(), t.Published.Load(), t.BytesIn.Load(), t.BytesOut.Load()}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// steady measures the per-node costs over Window.
func (s *sim) steady(ctx context.Context, res *Result) {
	live := s.live()
	before := make([]counts, len(live))
	for i, n := range live {
		before[i] = snapshot(n)
	}
	cpu0, t0 := cpuTime(), time.Now()
	_ = sleep(ctx, s.cfg.Window)
	el := time.Since(t0).Seconds()
	cpu := (cpuTime() - cpu0).Seconds()
	var in, del, pub, bin, bout, conns, mesh, cover []float64
	for i, n := range live {
		a, b := snapshot(n), before[i]
		in = append(in, float64(a.in-b.in)/el)
		del = append(del, float64(a.delivered-b.delivered)/el)
		pub = append(pub, float64(a.published-b.published)/el)
		bin = append(bin, float64(a.bytesIn-b.bytesIn)/el)
		bout = append(bout, float64(a.bytesOut-b.bytesOut)/el)
		c := len(n.h.Network().Conns())
		conns = append(conns, float64(c))
		res.ConnsMax = max(res.ConnsMax, c)
		mesh = append(mesh, float64(len(n.g.MeshPeers())))
		cover = append(cover, float64(len(n.tr.Live(time.Now())))/float64(len(live)))
	}
	res.MsgsIn, res.Delivered, res.Published = quantile(in, 0.5), quantile(del, 0.5), quantile(pub, 0.5)
	res.BytesIn, res.BytesOut, res.BytesInP95 = quantile(bin, 0.5), quantile(bout, 0.5), quantile(bin, 0.95)
	res.Conns, res.Mesh, res.Coverage = quantile(conns, 0.5), quantile(mesh, 0.5), quantile(cover, 0.5)
	res.CPUms = cpu * 1000 / el / float64(len(live))
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	res.HeapKiB = float64(m.HeapInuse) / 1024 / float64(len(live))
	s.trouble(res)
}

// trouble sums the routers' troubles and finds the lowest score.
func (s *sim) trouble(res *Result) {
	res.Rejected, res.Throttled, res.Dropped, res.Undelivered = 0, 0, 0, 0
	for _, n := range s.live() {
		t := n.g.Traffic()
		res.Rejected += t.Rejected.Load()
		res.Throttled += t.Throttled.Load()
		res.Dropped += t.Dropped.Load()
		res.Undelivered += t.Undelivered.Load()
		for _, p := range n.h.Network().Peers() {
			if sc, ok := n.g.Score(p); ok {
				res.ScoreMin = min(res.ScoreMin, sc)
			}
		}
	}
}

// epochClose closes an epoch as a sync-mode swarm does: the first shard's
// holders move to the next epoch at once (they close it on the same
// records), and every other node follows once its tracker shows the
// swarm there, that is two holders in the new epoch (epochs.SwarmEpoch
// believes no fewer). It measures from the close until 95% of the nodes
// hold two such records, then moves the rest.
func (s *sim) epochClose(ctx context.Context) (time.Duration, error) {
	live := s.live()
	e := s.epoch.Add(1)
	for _, n := range live {
		if n.shard == 0 {
			n.epoch.Store(e)
			n.g.Poke()
		}
	}
	d, err := s.until(ctx, live, 0.95, 30*time.Second, func(n *node) bool {
		seen := 0
		for _, r := range n.tr.Live(time.Now()) {
			if r.Epoch >= e && r.Peer != n.h.ID().String() {
				seen++
			}
		}
		return seen >= 2
	})
	for _, n := range live {
		if n.epoch.Load() < e {
			n.epoch.Store(e)
			n.g.Poke()
		}
	}
	if err != nil {
		return 0, fmt.Errorf("epoch %d: %w", e, err)
	}
	return d, nil
}

// until returns how long it took for a share frac of nodes to satisfy ok.
func (s *sim) until(ctx context.Context, nodes []*node, frac float64, limit time.Duration, ok func(*node) bool) (time.Duration, error) {
	t0 := time.Now()
	done := make([]bool, len(nodes))
	n := 0
	for {
		for i, nd := range nodes {
			if !done[i] && ok(nd) {
				done[i] = true
				n++
			}
		}
		if float64(n) >= frac*float64(len(nodes)) {
			return time.Since(t0), nil
		}
		if time.Since(t0) > limit {
			return 0, fmt.Errorf("after %v only %d of %d nodes", limit, n, len(nodes))
		}
		if err := sleep(ctx, 5*time.Millisecond); err != nil {
			return 0, err
		}
	}
}

// join starts a node that joins shard and measures how long it takes to
// hold a live record of every live holder of its shard.
func (s *sim) join(ctx context.Context, shard int) (time.Duration, error) {
	var holders []string
	for _, n := range s.live() {
		if n.shard == shard {
			holders = append(holders, n.h.ID().String())
		}
	}
	n, err := s.add(ctx, shard, progress.StateJoining)
	if err != nil {
		return 0, err
	}
	d, err := s.until(ctx, []*node{n}, 1, 60*time.Second, func(n *node) bool {
		for _, h := range holders {
			if _, ok := n.tr.Get(h, time.Now()); !ok {
				return false
			}
		}
		return true
	})
	n.state.Store(progress.StateOnline)
	n.g.Poke()
	if err != nil {
		return 0, fmt.Errorf("joiner of shard %d (%d holders): %w", shard, len(holders), err)
	}
	return d, nil
}

// depart stops k random nodes, cleanly (a leave record) or by killing
// their host, and measures until 95% of the others hold none of their
// records.
func (s *sim) depart(ctx context.Context, k int, kill bool) (time.Duration, error) {
	live := s.live()
	var gone []*node
	for _, i := range s.rng.Perm(len(live))[:min(k, len(live)-1)] {
		gone = append(gone, live[i])
	}
	s.mu.Lock()
	for _, n := range gone {
		n.gone = true
	}
	s.mu.Unlock()
	t0 := time.Now()
	for _, n := range gone {
		if kill {
			n.cancel()
			<-n.done
			// The host dies: its connections close, nothing more is said.
			_ = n.h.Close()
			n.g.Close()
		} else {
			n.stop()
		}
	}
	what := "departure"
	if kill {
		what = "kill"
	}
	ts := time.Now()
	d, err := s.until(ctx, s.live(), 0.95, 3*progress.MaxEvery+30*time.Second, func(n *node) bool {
		for _, g := range gone {
			if _, ok := n.tr.Get(g.h.ID().String(), time.Now()); ok {
				return false
			}
		}
		return true
	})
	if err != nil {
		return 0, fmt.Errorf("%s of %d: %w", what, len(gone), err)
	}
	// From the first stop: a clean stop waits until its goodbye is sent.
	return d + ts.Sub(t0), nil
}

// match runs one averaging round in every shard at once with the real
// matchmaker: each node's candidates are its shard's holders as its
// tracker knows them (links to them are made first: a node connects to
// the peers it averages with).
func (s *sim) match(ctx context.Context, res *Result) error {
	live := s.live()
	byShard := map[int][]*node{}
	for _, n := range live {
		byShard[n.shard] = append(byShard[n.shard], n)
	}
	for _, ns := range byShard {
		for i, a := range ns {
			for _, b := range ns[i+1:] {
				if len(s.mn.LinksBetweenPeers(a.h.ID(), b.h.ID())) == 0 {
					if _, err := s.mn.LinkPeers(a.h.ID(), b.h.ID()); err != nil {
						return err
					}
				}
			}
		}
	}
	avs := make([]*averaging.Averager, len(live))
	defer func() {
		for _, a := range avs {
			if a != nil {
				_ = a.Close()
			}
		}
	}()
	for i, n := range live {
		n := n
		a, err := averaging.New(n.h, averaging.Config{
			Peers: func(context.Context, string) []peer.ID {
				var out []peer.ID
				for _, r := range n.tr.Live(time.Now()) {
					if r.Shard == n.shard {
						if id, err := peer.Decode(r.Peer); err == nil {
							out = append(out, id)
						}
					}
				}
				return out
			},
			TargetGroupSize: s.cfg.Group, MatchWindow: time.Second, RequestTimeout: 500 * time.Millisecond, MatchTimeout: 10 * time.Second,
		})
		if err != nil {
			return err
		}
		avs[i] = a
	}
	times := make([]float64, len(live))
	members := make([]int, len(live))
	var wg sync.WaitGroup
	for i, a := range avs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("shard-%d", live[i].shard)
			r, err := a.Step(ctx, key, 1, make([]float32, 256), 1, averaging.WithoutGossip())
			times[i] = r.MatchTime.Seconds()
			if err == nil && r.Mode == averaging.ModeGroup {
				members[i] = len(r.Members)
			}
		}()
	}
	wg.Wait()
	grouped := 0
	for _, m := range members {
		if m > 0 {
			grouped++
		}
	}
	res.MatchP50, res.MatchP95 = quantile(times, 0.5), quantile(times, 0.95)
	res.GroupedFrac = float64(grouped) / float64(len(live))
	// Each member of a group of m reports it: count groups by members.
	groups := 0.0
	for _, m := range members {
		if m > 0 {
			groups += 1 / float64(m)
		}
	}
	res.Groups = int(math.Round(groups))
	if grouped == 0 {
		return errors.New("matchmaking: no group formed")
	}
	return nil
}

// quantile returns the q-quantile of xs (nearest rank; 0 when empty).
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}
