package trainer

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/engine/native"
	"github.com/swarm-train/swarm/internal/testutil"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/data"
	"github.com/swarm-train/swarm/swarm/pipeline"
	"github.com/swarm-train/swarm/swarm/progress"
	"github.com/swarm-train/swarm/swarm/train"
)

// smallMNIST is a CI-sized mlp-mnist run.
func smallMNIST(shards, hidden, steps int) *run.Manifest {
	m := run.NewMLPMNIST(shards)
	m.Model.Hidden = []int{hidden, hidden}
	m.Shards = run.EvenShards(m.Model.Units(), shards)
	m.Training = run.TrainingSpec{BatchSize: 64, TargetBatch: 256, Steps: steps}
	m.Optimizer.WarmupSteps = 10
	m.Optimizer.DecaySteps = steps
	m.Optimizer.LR = 3e-3
	m.Averaging.GroupSize = 2
	m.Averaging.MinGroupSize = 2
	return m
}

type swarmT struct {
	t     *testing.T
	m     *run.Manifest
	mu    sync.Mutex
	hosts []host.Host
	tr    []*Trainer
	stop  []context.CancelFunc
	done  []chan error
}

func (s *swarmT) peers() []peer.ID {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []peer.ID
	for _, h := range s.hosts {
		out = append(out, h.ID())
	}
	return out
}

func (s *swarmT) add(shard int, mut func(*Config)) *Trainer { return s.addOn(nil, shard, mut) }

// addOn starts a trainer on host h (nil: a new host).
func (s *swarmT) addOn(h host.Host, shard int, mut func(*Config)) *Trainer {
	t := s.t
	if h == nil {
		var err error
		if h, err = libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0")); err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		for _, o := range s.hosts {
			o.Peerstore().AddAddrs(h.ID(), h.Addrs(), time.Hour)
			h.Peerstore().AddAddrs(o.ID(), o.Addrs(), time.Hour)
			// Connected, as a node's membership connects the run peers it
			// verified before its trainer starts: the progress topic
			// reaches the peers a node is connected to.
			if err := h.Connect(context.Background(), peer.AddrInfo{ID: o.ID(), Addrs: o.Addrs()}); err != nil {
				t.Fatal(err)
			}
		}
		s.hosts = append(s.hosts, h)
		s.mu.Unlock()
	}
	level := slog.LevelWarn
	if os.Getenv("SWARM_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	cfg := Config{Manifest: s.m, Engine: native.New(native.WithThreads(1)), Host: h, RunPeers: s.peers, Shard: shard,
		JoinDelay: 500 * time.Millisecond, RecordTTL: 3 * time.Second, RebalanceEvery: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("node", len(s.hosts)-1)}
	if mut != nil {
		mut(&cfg)
	}
	tr, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx) }()
	s.tr = append(s.tr, tr)
	s.stop = append(s.stop, cancel)
	s.done = append(s.done, done)
	t.Cleanup(func() {
		cancel()
		<-done
		tr.Close()
		h.Close()
	})
	return tr
}

// allOnline reports whether every node is online on its shard.
func (s *swarmT) allOnline() bool {
	for _, tr := range s.tr {
		tr.mu.Lock()
		st := tr.state
		tr.mu.Unlock()
		if st != progress.StateOnline {
			return false
		}
	}
	return true
}

// TestTwoShardsTwoNodes: four nodes choose shards by themselves (ending
// 2-2), train a small MLP through the pipeline with collaborative epochs,
// and reach a useful test accuracy; the holders of each shard end with
// identical parameters.
func TestTwoShardsTwoNodes(t *testing.T) {
	steps := 150
	if testing.Short() {
		steps = 40
	}
	s := &swarmT{t: t, m: smallMNIST(2, 64, steps)}
	for range 4 {
		s.add(-1, nil)
	}
	// The node that evaluated: only first-shard holders do, and the nodes
	// chose their shards themselves.
	var st Status
	testutil.Eventually(t, 3*time.Minute, testutil.Says("the run to finish and report accuracy"), func() bool {
		for _, tr := range s.tr {
			if st = tr.Status(); st.Accuracy >= 0 && st.Epoch >= uint64(steps) {
				return true
			}
		}
		return false
	})
	t.Logf("accuracy %.4f loss %.3f epochs %d shards %+v", st.Accuracy, st.Loss, st.Epoch, st.Shards)
	for _, sh := range st.Shards {
		if len(sh.Peers) != 2 {
			t.Errorf("shard %d has %d holders, want 2", sh.Index, len(sh.Peers))
		}
	}
	want := 0.9
	if testing.Short() {
		want = 0.8
	}
	if st.Accuracy < want {
		t.Fatalf("accuracy %.4f, want >= %.2f", st.Accuracy, want)
	}
	// Holders of one shard stepped with the same averaged gradients: compare
	// once every node took the run's last step.
	testutil.Eventually(t, time.Minute, testutil.Says("every node to finish the run"), func() bool {
		for _, tr := range s.tr {
			if tr.Status().Epoch < uint64(steps) {
				return false
			}
		}
		return true
	})
	byShard := map[int][]*Trainer{}
	for i, tr := range s.tr {
		byShard[tr.index] = append(byShard[tr.index], tr)
		// Busy time is wall time with the engine running: micro-batches
		// computed at once count once.
		if st := tr.Status(); st.Utilization <= 0 || st.Utilization > 1 {
			t.Errorf("node %d: utilisation %.3f, want within (0, 1]", i, st.Utilization)
		}
	}
	holdersAgree(t, byShard)
}

// holdersAgree fails t when the two holders of a shard differ by more than
// 1e-4 in any parameter.
func holdersAgree(t *testing.T, byShard map[int][]*Trainer) {
	t.Helper()
	for idx, trs := range byShard {
		a, b := trs[0].shard.Params(), trs[1].shard.Params()
		var diff float64
		for i := range a {
			diff = max(diff, float64(abs32(a[i]-b[i])))
		}
		if diff > 1e-4 {
			t.Errorf("shard %d: holders' parameters differ by up to %g", idx, diff)
		}
	}
}

func abs32(x float32) float32 {
	if x < 0 {
		return -x
	}
	return x
}

// TestLocalStepsMode: DiLoCo mode trains too, with and without averaging
// overlapped with training; holders of a shard end the run with the same
// parameters.
func TestLocalStepsMode(t *testing.T) {
	for _, overlap := range []bool{false, true} {
		t.Run(fmt.Sprintf("overlap=%v", overlap), func(t *testing.T) { testLocalSteps(t, overlap, false) })
	}
}

// TestLocalStepsCompressed: local mode with deltas compressed to 5% of
// their values at 4 bits (error feedback; outer lr 1 without momentum, as
// run init sets for it) still trains, its delta rounds move less than a
// twentieth of an uncompressed round's bytes, and holders end on one model.
func TestLocalStepsCompressed(t *testing.T) {
	if testing.Short() {
		// make test's race pass (-short) already runs local mode twice;
		// this one runs in the full pass (about 5 s; 2 min under -race on
		// a loaded machine).
		t.Skip("local mode with compressed deltas: full pass only")
	}
	testLocalSteps(t, true, true)
}

func testLocalSteps(t *testing.T, overlap, topk bool) {
	// 30 outer rounds. The outer momentum of long runs (0.9) needs hundreds
	// of rounds to settle: with it 30 rounds ended anywhere in 0.74-0.86
	// (overlapped) and the test measured the noise; with 0.5, six runs
	// ended in 0.92-0.93 (0.91-0.93 with outer lr 1 and no momentum).
	const steps = 300
	m := smallMNIST(2, 64, steps)
	m.Averaging.Mode, m.Averaging.LocalSteps, m.Averaging.OuterLR, m.Averaging.OuterMomentum = run.ModeLocal, 10, 0.7, 0.5
	m.Averaging.Overlap = overlap
	if topk {
		m.Averaging.DeltaCodec, m.Averaging.DeltaKeep, m.Averaging.DeltaBits = run.DeltaTopK, 0.05, 4
		m.Averaging.OuterLR, m.Averaging.OuterMomentum = 1, 0
	}
	s := &swarmT{t: t, m: m}
	// The run takes about a second once it starts: hold training until all
	// four nodes are online, or the first two may finish it alone.
	gate := make(chan struct{})
	for i := range 4 {
		s.add(i%2, func(c *Config) {
			c.WaitRunning = func(ctx context.Context) error {
				select {
				case <-gate:
					return nil
				default:
				}
				select {
				case <-gate:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		})
	}
	testutil.Eventually(t, time.Minute, testutil.Says("all four nodes online"), s.allOnline)
	close(gate)
	// The first node's own evaluation: another first-shard holder may
	// finish a moment earlier.
	testutil.Eventually(t, 6*time.Minute, testutil.Says("the local-steps run to finish"), func() bool {
		return s.tr[0].Status().Accuracy >= 0
	})
	st := s.tr[0].Status()
	t.Logf("local steps: accuracy %.4f, rounds %d, last averaging %+v", st.Accuracy, st.Epoch, st.Averaging)
	for i, tr := range s.tr {
		t.Logf("node %d: %d outer rounds, %d averaged with a peer; delta rounds %d, %d bytes; outer-state rounds %d, %d bytes; %d values",
			i, tr.meters.avgRounds.Load(), tr.meters.avgGrouped.Load(), tr.meters.deltaRounds.Load(), tr.meters.deltaBytes.Load(),
			tr.meters.stateRounds.Load(), tr.meters.stateBytes.Load(), tr.meters.deltaValues.Load())
		if d := tr.meters.deltaRounds.Load(); topk && d > 0 {
			// Uncompressed, a member of a group of two sends and receives 4
			// bytes a value for each half of the vector: 8 bytes a value.
			if per, fp32 := tr.meters.deltaBytes.Load()/int64(d), 8*tr.meters.deltaValues.Load(); per*20 > fp32 {
				t.Errorf("node %d: %d bytes a delta round, more than 1/20 of uncompressed fp32's %d", i, per, fp32)
			}
		}
	}
	if st.Accuracy < 0.85 {
		t.Fatalf("accuracy %.4f, want >= 0.85", st.Accuracy)
	}
	// Averaged with a peer: most outer rounds of every node. Not each one:
	// on a loaded machine a node's last round sometimes found its peer
	// already past it (group of 1), which the run survives by design.
	for i, tr := range s.tr {
		rounds, grouped := tr.meters.avgRounds.Load(), tr.meters.avgGrouped.Load()
		if rounds == 0 || grouped*5 < rounds*4 {
			t.Errorf("node %d averaged %d of %d outer rounds with a peer, want at least 80%%", i, grouped, rounds)
		}
	}
	testutil.Eventually(t, time.Minute, testutil.Says("every node to finish the run"), func() bool {
		for _, tr := range s.tr {
			if st := tr.Status(); st.Epoch < uint64(st.Epochs) {
				return false
			}
		}
		return true
	})
	// Holders that averaged the last round completely end on one model.
	for idx := range 2 {
		a, b := s.tr[idx], s.tr[idx+2]
		sa, sb := a.Status(), b.Status()
		if sa.Averaging.GroupSize < 2 || sa.Averaging.Fraction < 1 || sb.Averaging.GroupSize < 2 || sb.Averaging.Fraction < 1 {
			t.Logf("shard %d: last round not averaged completely by both (%+v, %+v)", idx, sa.Averaging, sb.Averaging)
			continue
		}
		pa, pb := a.shard.Params(), b.shard.Params()
		var diff float64
		for i := range pa {
			diff = max(diff, float64(abs32(pa[i]-pb[i])))
		}
		if diff > 1e-5 {
			t.Errorf("shard %d: holders end %g apart", idx, diff)
		}
	}
}

// TestGlobalNormClipMatchesSingleNode: with the clip active, one epoch of a
// two-shard swarm (one holder a shard) steps each shard exactly as a single
// process stepping the whole model on the same micro-batch: the scale comes
// from the global gradient norm, not from each shard's own.
func TestGlobalNormClipMatchesSingleNode(t *testing.T) {
	m := smallMNIST(2, 32, 1)
	m.Training.TargetBatch = m.Training.BatchSize
	m.Optimizer.ClipNorm = 0.05 // far below the first gradient's norm
	m.Optimizer.WarmupSteps, m.Optimizer.LR = 0, 0.05
	s := &swarmT{t: t, m: m}
	// The second shard's holder first, so the first micro-batch the first
	// shard draws finds it online (a failed one would be replaced by the
	// next micro-batch of the stream, not the one the reference uses).
	second := s.add(1, nil)
	testutil.Eventually(t, time.Minute, testutil.Says("the second shard's holder to be online"), func() bool {
		return second.Status().State == progress.StateOnline
	})
	first := s.add(0, nil)
	testutil.Eventually(t, time.Minute, testutil.Says("both shards to take the run's one step"), func() bool {
		for _, tr := range s.tr {
			if tr.Status().Epoch < 1 {
				return false
			}
		}
		return true
	})

	// The reference: both shards in one process, the first node's first
	// micro-batch (the trainer draws it from the same per-node stream).
	src, err := data.NewSource(m, first.h.ID().String())
	if err != nil {
		t.Fatal(err)
	}
	b := src.Next(m.Training.BatchSize)
	eng := native.New(native.WithThreads(1))
	step := func(global bool) [][]float32 {
		var shards []engine.Shard
		for i := range m.Shards {
			sh, err := eng.NewShard(m, i)
			if err != nil {
				t.Fatal(err)
			}
			defer sh.Close()
			shards = append(shards, sh)
		}
		if _, err := train.ForwardBackward(shards, b); err != nil {
			t.Fatal(err)
		}
		norm := train.GradNorm(shards)
		var out [][]float32
		for _, sh := range shards {
			if !global {
				norm = math.Sqrt(sh.GradNormSq())
			}
			if err := sh.Step(m.Optimizer.LRAt(0), float32(train.ClipScale(norm, m.Optimizer.ClipNorm))); err != nil {
				t.Fatal(err)
			}
			out = append(out, append([]float32(nil), sh.Params()...))
		}
		return out
	}
	want, perShard := step(true), step(false)
	for _, tr := range s.tr {
		tr.stepMu.RLock()
		got := append([]float32(nil), tr.shard.Params()...)
		tr.stepMu.RUnlock()
		var dWant, dPerShard float64
		for i := range got {
			dWant = max(dWant, math.Abs(float64(got[i]-want[tr.index][i])))
			dPerShard = max(dPerShard, math.Abs(float64(got[i]-perShard[tr.index][i])))
		}
		t.Logf("shard %d: max |swarm - single| %.3g, max |swarm - per-shard clip| %.3g", tr.index, dWant, dPerShard)
		if dWant > 1e-6 {
			t.Errorf("shard %d: parameters differ from the single-node step by up to %g", tr.index, dWant)
		}
		// The guard is against the 1e-6 tolerance above: per-shard clipping
		// must land at least ten times farther off. How far it lands depends
		// on the micro-batch, drawn from a stream seeded by the random peer
		// ID (7.9e-5 to 8.2e-3 seen), so 1e-4 failed now and then.
		if dPerShard < 1e-5 {
			t.Errorf("shard %d: per-shard clipping gives the same step (%g apart): the test would not see the difference", tr.index, dPerShard)
		}
	}
}

// TestPausedNodeShown: while its volunteer's limits hold a node, its peers
// and its own status show it paused; once released it trains on.
func TestPausedNodeShown(t *testing.T) {
	s := &swarmT{t: t, m: smallMNIST(2, 32, 100000)}
	var mu sync.Mutex
	paused, changed := false, make(chan struct{})
	pause := func(p bool) {
		mu.Lock()
		defer mu.Unlock()
		paused = p
		close(changed)
		changed = make(chan struct{})
	}
	s.add(0, nil)
	held := s.add(1, func(c *Config) {
		c.WaitRunning = func(ctx context.Context) error {
			for {
				mu.Lock()
				p, ch := paused, changed
				mu.Unlock()
				if !p {
					return nil
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-ch:
				}
			}
		}
	})
	id := s.hosts[1].ID().String()
	shownBy := func(tr *Trainer) string {
		for _, p := range tr.Status().Peers {
			if p.PeerID == id {
				return p.State
			}
		}
		return ""
	}
	testutil.Eventually(t, time.Minute, testutil.Says("the swarm to take a step"), func() bool { return s.tr[0].Status().Epoch >= 1 })
	pause(true)
	testutil.Eventually(t, 30*time.Second, testutil.Says("its peer to show the held node paused"), func() bool {
		return shownBy(s.tr[0]) == progress.StatePaused && held.Status().State == progress.StatePaused
	})
	pause(false)
	testutil.Eventually(t, 30*time.Second, testutil.Says("the node to show online again"), func() bool { return shownBy(s.tr[0]) == progress.StateOnline })
	from := s.tr[0].Status().Epoch
	testutil.Eventually(t, time.Minute, testutil.Says("training to go on"), func() bool { return s.tr[0].Status().Epoch > from })
}

// TestLowPrecisionActivations: a run whose activations cross shards in
// bf16 sends half the bytes a sample of fp32, in int8 blocks (a scale per
// 64 values) about a quarter, topk keeping a quarter of each sample's
// values (a bitmap and the kept values in bf16; the gradient at the kept
// places only) under a sixth, and still trains.
func TestLowPrecisionActivations(t *testing.T) {
	for _, c := range []struct {
		precision string
		keep      float64
		rank      int
		perValue  float64 // wire bytes a hidden value, at most
	}{
		{run.ActivationsBF16, 0, 0, 2},
		{run.ActivationsInt8, 0, 0, 1 + 4.0/pipeline.Int8Block},
		{run.ActivationsTopK, 0.25, 0, 1.0/8 + 2*0.25},
		// A learned projection to 8 of the 64 hidden values, in bf16.
		{run.ActivationsBF16, 0, 8, 2 * 8.0 / 64},
	} {
		name := c.precision
		if c.rank > 0 {
			name += fmt.Sprintf("-rank%d", c.rank)
		}
		t.Run(name, func(t *testing.T) {
			const steps, hidden = 100, 64
			m := smallMNIST(2, hidden, steps)
			m.Training.Activations, m.Training.ActivationKeep, m.Training.ActivationRank = c.precision, c.keep, c.rank
			s := &swarmT{t: t, m: m}
			s.add(0, nil)
			s.add(1, nil)
			testutil.Eventually(t, 3*time.Minute, testutil.Says("the run to finish and report accuracy"), func() bool {
				return s.tr[0].Status().Accuracy >= 0
			})
			st := s.tr[0].Status()
			t.Logf("%s activations: accuracy %.4f after %d epochs", c.precision, st.Accuracy, st.Epoch)
			if st.Accuracy < 0.85 {
				t.Fatalf("accuracy %.4f, want >= 0.85", st.Accuracy)
			}
			// First shard: a sample's request carries hidden activations
			// (and a target); the second shard answers with as many
			// gradient values.
			for i, tr := range s.tr {
				perSample := float64(tr.stage.sent.Load()) / float64(tr.meters.samples())
				t.Logf("node %d: %.1f bytes a sample", i, perSample)
				if want := c.perValue * hidden; perSample > want+8 { // + the target, + headers spread over 64 samples
					t.Errorf("node %d sent %.1f bytes a sample; %s is %.0f for the values", i, perSample, c.precision, want)
				}
			}
		})
	}
}

// TestShardLeftBehind: when the swarm's epoch runs ahead in another shard
// only, the holders of the shard left behind have nobody to catch up from;
// they step until level rather than restoring each other's state forever.
// A record of a phantom second-shard holder two epochs ahead sets the scene
// (as a holder that raced ahead and stopped answering would).
func TestShardLeftBehind(t *testing.T) {
	m := smallMNIST(2, 32, 100000)
	m.Averaging.TimeoutMS = 1000 // each round waits this long for the phantom
	s := &swarmT{t: t, m: m}
	s.add(0, nil)
	s.add(0, nil)
	s.add(1, nil)
	epochs := func() (lo, hi uint64) {
		lo = math.MaxUint64
		for _, tr := range s.tr {
			e := tr.Status().Epoch
			lo, hi = min(lo, e), max(hi, e)
		}
		return lo, hi
	}
	testutil.Eventually(t, time.Minute, testutil.Says("the swarm to take steps"), func() bool { lo, _ := epochs(); return lo >= 3 })
	sk, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	phantom, err := peer.IDFromPrivateKey(sk)
	if err != nil {
		t.Fatal(err)
	}
	_, hi := epochs()
	ahead := hi + 2
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for seq := uint64(1); ctx.Err() == nil; seq++ {
			rec := progress.Record{Peer: phantom.String(), RunID: s.tr[0].runID, Seq: seq, Shard: 1,
				State: progress.StateOnline, Epoch: ahead, Accuracy: -1}
			for _, tr := range s.tr {
				tr.tracker.Update(rec, time.Now())
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	testutil.Eventually(t, 45*time.Second, testutil.Says(fmt.Sprintf("every node past the phantom's epoch %d", ahead)), func() bool {
		lo, _ := epochs()
		return lo > ahead
	})
}

// TestConcurrentEvaluations: evaluation micro-batches from several senders
// at once reach the last shard; each answer counts its own predictions.
// (Two first-shard nodes evaluating at the end of a run once reported
// 0.957 and 0.978 for one model.)
func TestConcurrentEvaluations(t *testing.T) {
	s := &swarmT{t: t, m: smallMNIST(2, 32, 100000)}
	held := func(c *Config) { // no training: the model stays put
		c.WaitRunning = func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
	}
	a := s.add(0, held)
	// The last shard pauses at the end of each evaluation Forward, so that
	// evaluations overlapping there show.
	s.add(1, func(c *Config) { c.Engine = slowEval{c.Engine} })
	testutil.Eventually(t, time.Minute, testutil.Says("both nodes online"), func() bool { return s.allOnline() && len(a.holders(1, false)) > 0 })
	ev := a.drive.evalSet()
	a.mu.Lock()
	sh, epoch := a.shard, a.epoch
	a.mu.Unlock()
	eval := func(i int) (uint32, error) {
		res, err := a.stage.process(context.Background(), sh, 0, epoch, pipeline.KindEval, ev.Batch(i*evalBatch, evalBatch), nil, ev.Batch(i*evalBatch, evalBatch).Targets)
		if err != nil {
			return 0, err
		}
		return res.Correct, nil
	}
	const batches = 8
	var want [batches]uint32
	for i := range batches {
		c, err := eval(i)
		if err != nil {
			t.Fatal(err)
		}
		want[i] = c
	}
	var wg sync.WaitGroup
	const senders, rounds = 3, 2 * batches
	errs := make(chan error, senders*rounds)
	for g := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				i := (r + g*3) % batches
				c, err := eval(i)
				switch {
				case err != nil:
					errs <- err
				case c != want[i]:
					errs <- fmt.Errorf("batch %d: %d correct at once with another evaluation, %d alone", i, c, want[i])
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// slowEval is the native engine with a pause at the end of each
// evaluation Forward.
type slowEval struct{ engine.Engine }

func (e slowEval) NewShard(m *run.Manifest, index int) (engine.Shard, error) {
	sh, err := e.Engine.NewShard(m, index)
	if err != nil {
		return nil, err
	}
	return slowEvalShard{sh}, nil
}

type slowEvalShard struct{ engine.Shard }

func (s slowEvalShard) Forward(b *engine.Batch, in []float32, train bool) ([]float32, float32, engine.Tape, error) {
	out, loss, tape, err := s.Shard.Forward(b, in, train)
	if !train {
		time.Sleep(2 * time.Millisecond)
	}
	return out, loss, tape, err
}

// TestJoinTheRunsOnlyHolder: the first volunteer of a run trained alone
// far past epoch 1; nothing corroborates its epoch, yet a second volunteer
// joins it (state synced at its epoch, never the initial weights at epoch
// 1) once it has watched the holder advance (epochs.SoleWatch), and the two
// then train one model together.
func TestJoinTheRunsOnlyHolder(t *testing.T) {
	m := smallMNIST(1, 32, 100000)
	s := &swarmT{t: t, m: m}
	first := s.add(0, nil)
	testutil.Eventually(t, time.Minute, testutil.Says("the first holder to train alone past epoch 30"), func() bool { return first.Status().Epoch >= 30 })
	joinedAt := time.Now()
	second := s.add(0, nil)
	var at uint64
	testutil.Eventually(t, time.Minute, testutil.Says("the second volunteer to join the first"), func() bool {
		st := second.Status()
		at = st.Epoch
		return st.State == progress.StateOnline && st.Epoch >= 30
	})
	t.Logf("joined online at epoch %d after %s (the first holder at %d)", at, time.Since(joinedAt).Round(time.Millisecond), first.Status().Epoch)
	testutil.Eventually(t, time.Minute, testutil.Says("the two to average together"), func() bool {
		a, b := first.Status().Averaging, second.Status().Averaging
		return a.GroupSize >= 2 && b.GroupSize >= 2
	})
}

// TestTextRunReportsPerplexity: a language model's finished run reports the
// node's validation loss and its perplexity (exp of the loss) in the
// status; an MLP run reports neither.
func TestTextRunReportsPerplexity(t *testing.T) {
	corpus, err := data.ReadCorpus("")
	if err != nil {
		t.Fatal(err)
	}
	m, err := run.NewLlama(run.PresetLlamaTiny, data.Charset(corpus), 1)
	if err != nil {
		t.Fatal(err)
	}
	m.Model.NLayer, m.Model.NEmbd, m.Model.FFNHidden, m.Model.BlockSize = 1, 16, 32, 16
	m.Shards = run.EvenShards(1, 1)
	m.Training = run.TrainingSpec{BatchSize: 8, TargetBatch: 8, Steps: 3}
	m.Optimizer.WarmupSteps, m.Optimizer.DecaySteps = 1, 3
	m.Averaging.GroupSize, m.Averaging.MinGroupSize = 2, 2
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	s := &swarmT{t: t, m: m}
	s.add(0, nil)
	s.add(0, nil)
	var st Status
	testutil.Eventually(t, 2*time.Minute, testutil.Says("the text run to finish and evaluate"), func() bool {
		for _, tr := range s.tr {
			if st = tr.Status(); st.ValLoss != nil {
				return true
			}
		}
		return false
	})
	if st.ValPerplexity == nil || math.Abs(*st.ValPerplexity-math.Exp(*st.ValLoss)) > 1e-9**st.ValPerplexity || *st.ValLoss <= 0 {
		t.Fatalf("validation loss %v, perplexity %v", *st.ValLoss, st.ValPerplexity)
	}
	t.Logf("validation loss %.4f, perplexity %.2f after %d epochs", *st.ValLoss, *st.ValPerplexity, st.Epoch)
}

// TestDelayedUpdates: with averaging.delayed_updates four nodes on two
// shards train to a useful accuracy, most steps are delayed (their rounds
// averaged while the next epoch computed), and the holders of each shard
// end with identical parameters (the last epoch is not delayed).
func TestDelayedUpdates(t *testing.T) {
	const steps = 60 // seconds: the accuracy cost is measured in BENCHMARKS.md
	m := smallMNIST(2, 64, steps)
	m.Averaging.DelayedUpdates = true
	s := &swarmT{t: t, m: m}
	for i := range 4 {
		s.add(i%2, nil)
	}
	testutil.Eventually(t, 3*time.Minute, testutil.Says("every node to finish the run"), func() bool {
		for _, tr := range s.tr {
			if tr.Status().Epoch < uint64(steps) {
				return false
			}
		}
		return true
	})
	var acc float64
	testutil.Eventually(t, time.Minute, testutil.Says("a first-shard node to report accuracy"), func() bool {
		for _, tr := range s.tr {
			if st := tr.Status(); st.Accuracy >= 0 {
				acc = st.Accuracy
				return true
			}
		}
		return false
	})
	if acc < 0.8 {
		t.Errorf("accuracy %.4f, want >= 0.8", acc)
	}
	byShard := map[int][]*Trainer{}
	for i, tr := range s.tr {
		byShard[tr.index] = append(byShard[tr.index], tr)
		tr.mu.Lock()
		n := tr.delayedSteps
		tr.mu.Unlock()
		t.Logf("node %d (shard %d): %d of %d steps delayed", i, tr.index, n, steps)
		// Every epoch but the last detaches its round; a node that fell
		// behind catches up instead of stepping now and then.
		if n < steps/2 {
			t.Errorf("node %d: %d of %d steps delayed, want at least half", i, n, steps)
		}
	}
	holdersAgree(t, byShard)
	t.Logf("accuracy %.4f", acc)
}

// WorkPeers lists the holders of the node's own shard first, then of the
// previous and next shard; itself and farther shards are left out.
func TestWorkPeers(t *testing.T) {
	ids := make([]peer.ID, 6)
	for i := range ids {
		ids[i] = testutil.Host(t).ID()
	}
	recs := []progress.Record{
		{Peer: ids[0].String(), Shard: 2}, {Peer: ids[1].String(), Shard: 1}, {Peer: ids[2].String(), Shard: 3},
		{Peer: ids[3].String(), Shard: 2}, {Peer: ids[4].String(), Shard: 5}, {Peer: ids[5].String(), Shard: 2},
	}
	got := WorkPeers(recs, 2, ids[5])
	want := []peer.ID{ids[0], ids[3], ids[1], ids[2]}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("WorkPeers = %v, want %v", got, want)
	}
	if got := WorkPeers(recs, 0, ids[5]); fmt.Sprint(got) != fmt.Sprint([]peer.ID{ids[1]}) {
		t.Fatalf("WorkPeers of shard 0 = %v, want the holder of shard 1", got)
	}
}
