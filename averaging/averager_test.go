package averaging

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/swarm-train/swarm/internal/sparseq"
)

// newHosts starts n libp2p hosts on 127.0.0.1 (TCP, noise) that know each
// other's addresses.
func newHosts(t testing.TB, n int) []host.Host {
	t.Helper()
	hs := make([]host.Host, n)
	for i := range hs {
		h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
			libp2p.DisableRelay(), libp2p.NoTransports, libp2p.Transport(tcpTransport()), libp2p.ResourceManager(nullRM()),
			libp2p.ForceReachabilityPublic()) // loopback: no NAT detection
		if err != nil {
			t.Fatal(err)
		}
		hs[i] = h
		t.Cleanup(func() { _ = h.Close() })
	}
	for _, a := range hs {
		for _, b := range hs {
			if a != b {
				a.Peerstore().AddAddrs(b.ID(), b.Addrs(), peerstore.PermanentAddrTTL)
			}
		}
	}
	// Connect every pair first, as a running node is connected to its shard's
	// peers through the DHT; first connections on a loaded 2-core machine take
	// longer than the matchmaking request timeout used in tests.
	var wg sync.WaitGroup
	for i, a := range hs {
		for _, b := range hs[i+1:] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				if err := a.Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
					t.Errorf("connect: %v", err)
				}
			}()
		}
	}
	wg.Wait()
	return hs
}

func ids(hs []host.Host) []peer.ID {
	out := make([]peer.ID, len(hs))
	for i, h := range hs {
		out[i] = h.ID()
	}
	return out
}

type testPeer struct {
	h    host.Host
	a    *Averager
	vec  []float32
	w    float64
	orig []float32
}

// testConfig is tuned for loopback tests.
func testConfig(all []peer.ID) Config {
	return Config{
		Peers:            func(context.Context, string) []peer.ID { return all },
		TargetGroupSize:  len(all),
		MatchWindow:      slow * 700 * time.Millisecond,
		MatchTimeout:     slow * 2100 * time.Millisecond,
		RequestTimeout:   slow * 150 * time.Millisecond,
		AllreduceTimeout: slow * 10 * time.Second,
		SenderTimeout:    slow * 2 * time.Second,
		ReducerTimeout:   slow * 4 * time.Second,
		PartSize:         1000,
	}
}

// roomyMatch widens matchmaking for tests that need every peer in the
// group: the group starts as soon as it reaches the target size, so on a
// healthy machine the longer window and request timeout cost nothing, while
// on a loaded one a peer whose join or ack is late is still counted.
func roomyMatch(c *Config) {
	c.MatchWindow = slow * 5 * time.Second
	c.MatchTimeout = 3 * c.MatchWindow
	c.RequestTimeout = slow * time.Second
}

func newPeers(t testing.TB, n, vecLen int, mod func(i int, c *Config)) []*testPeer {
	return newPeersOn(t, n, vecLen, func(i int, _ host.Host, c *Config) {
		if mod != nil {
			mod(i, c)
		}
	})
}

// newPeersOn is newPeers with the host at hand for mod.
func newPeersOn(t testing.TB, n, vecLen int, mod func(i int, h host.Host, c *Config)) []*testPeer {
	hs := newHosts(t, n)
	all := ids(hs)
	rng := rand.New(rand.NewPCG(uint64(n), uint64(vecLen)))
	ps := make([]*testPeer, n)
	for i, h := range hs {
		cfg := testConfig(all)
		cfg.Registerer = prometheus.NewRegistry()
		mod(i, h, &cfg)
		a, err := New(h, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = a.Close() })
		v := make([]float32, vecLen)
		for j := range v {
			v[j] = float32(rng.NormFloat64())
		}
		ps[i] = &testPeer{h: h, a: a, vec: v, w: 1 + float64(rng.IntN(5)), orig: append([]float32(nil), v...)}
	}
	return ps
}

type stepOut struct {
	res Result
	err error
	dur time.Duration
}

func stepAll(ps []*testPeer, key string, round uint64, skip map[int]bool, opts ...StepOption) []stepOut {
	out := make([]stepOut, len(ps))
	var wg sync.WaitGroup
	for i, p := range ps {
		if skip[i] {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			out[i].res, out[i].err = p.a.Step(context.Background(), key, round, p.vec, p.w, opts...)
			out[i].dur = time.Since(start)
		}()
	}
	wg.Wait()
	return out
}

// checkAgainstReport verifies that every span of p's result equals the
// weighted mean of the original vectors of the contributors it names.
func checkAgainstReport(t *testing.T, ps []*testPeer, i int, res Result, tol float64) {
	t.Helper()
	byID := map[peer.ID]*testPeer{}
	for _, q := range ps {
		byID[q.h.ID()] = q
	}
	p := ps[i]
	covered := 0
	for _, sp := range res.Spans {
		if sp.Start != covered {
			t.Fatalf("peer %d: spans not contiguous at %d (got start %d)", i, covered, sp.Start)
		}
		covered = sp.End
		var wsum float64
		for _, c := range sp.Contributors {
			wsum += byID[c].w
		}
		for k := sp.Start; k < sp.End; k++ {
			var want float64
			for _, c := range sp.Contributors {
				q := byID[c]
				want += q.w * float64(q.orig[k])
			}
			want /= wsum
			if d := math.Abs(float64(p.vec[k]) - want); d > tol*(1+math.Abs(want)) {
				t.Fatalf("peer %d value %d: got %v want %v (contributors %d)", i, k, p.vec[k], want, len(sp.Contributors))
			}
		}
	}
	if covered != len(p.vec) {
		t.Fatalf("peer %d: spans cover %d of %d", i, covered, len(p.vec))
	}
}

func TestAllreduceExactMean(t *testing.T) {
	sizes := []int{2, 4, 8, 16}
	if testing.Short() {
		sizes = []int{2, 4, 8}
	}
	for _, n := range sizes {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			ps := newPeers(t, n, 10007, func(_ int, c *Config) { roomyMatch(c) })
			out := stepAll(ps, "run/shard0", 1, nil)
			var wsum float64
			for _, p := range ps {
				wsum += p.w
			}
			for i, o := range out {
				if o.err != nil {
					t.Fatalf("peer %d: %v", i, o.err)
				}
				if o.res.Mode != ModeGroup || len(o.res.Members) != n || o.res.Fraction != 1 {
					t.Fatalf("peer %d: mode %s, %d members, fraction %v, excluded %v", i, o.res.Mode, len(o.res.Members), o.res.Fraction, o.res.Excluded)
				}
				checkAgainstReport(t, ps, i, o.res, 1e-5)
				if len(o.res.Spans) != 1 || len(o.res.Spans[0].Contributors) != n {
					t.Fatalf("peer %d: spans %v", i, o.res.Spans)
				}
			}
			for k := range ps[0].vec { // identical bytes everywhere
				for i := 1; i < n; i++ {
					if ps[i].vec[k] != ps[0].vec[k] {
						t.Fatalf("peer %d differs from peer 0 at %d", i, k)
					}
				}
			}
		})
	}
}

// TestWithGroupSizeStartsWithoutWaiting: the candidates include a peer that
// never steps, so the configured target (8) cannot be reached; with the
// per-step group size set to the peers that do step, the group starts when
// they have all joined, long before the matchmaking window ends.
func TestWithGroupSizeStartsWithoutWaiting(t *testing.T) {
	const window = 20 * time.Second
	ps := newPeers(t, 4, 5000, func(_ int, c *Config) {
		c.TargetGroupSize = 8
		c.MatchWindow, c.MatchTimeout, c.RequestTimeout = window, 3*window, slow*300*time.Millisecond
	})
	out := stepAll(ps, "run/shard0", 7, map[int]bool{3: true}, WithGroupSize(3))
	for i, o := range out[:3] {
		if o.err != nil {
			t.Fatalf("peer %d: %v", i, o.err)
		}
		if o.res.Mode != ModeGroup || len(o.res.Members) != 3 || o.res.Fraction != 1 {
			t.Fatalf("peer %d: mode %s, %d members, fraction %v", i, o.res.Mode, len(o.res.Members), o.res.Fraction)
		}
		if o.res.MatchTime >= window {
			t.Fatalf("peer %d: matchmaking took %v, the whole window", i, o.res.MatchTime)
		}
		checkAgainstReport(t, ps, i, o.res, 1e-5)
	}
}

// TestWithWantedAndLeftOut: three peers that want each other start their
// group as soon as all three joined (the fourth, late, is not waited for);
// the fourth, stepping the same round after them, finds every candidate
// past it and fails at once with ErrLeftOut, not at its deadline.
func TestWithWantedAndLeftOut(t *testing.T) {
	const window = 20 * time.Second
	ps := newPeers(t, 4, 5000, func(_ int, c *Config) {
		c.MatchWindow, c.MatchTimeout, c.RequestTimeout = window, 3*window, slow*300*time.Millisecond
	})
	all := ids([]host.Host{ps[0].h, ps[1].h, ps[2].h})
	out := make([]stepOut, 3)
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := slices.DeleteFunc(slices.Clone(all), func(p peer.ID) bool { return p == all[i] })
			out[i].res, out[i].err = ps[i].a.Step(context.Background(), "run/shard0", 7, ps[i].vec, ps[i].w,
				WithGroupSize(3), WithWanted(want, 4))
		}()
	}
	wg.Wait()
	for i, o := range out {
		if o.err != nil {
			t.Fatalf("peer %d: %v", i, o.err)
		}
		if len(o.res.Members) != 3 || o.res.MatchTime >= window {
			t.Fatalf("peer %d: %d members after %v of matchmaking", i, len(o.res.Members), o.res.MatchTime)
		}
		checkAgainstReport(t, ps, i, o.res, 1e-5)
	}
	start := time.Now()
	_, err := ps[3].a.Step(context.Background(), "run/shard0", 7, ps[3].vec, ps[3].w, WithGroupSize(4))
	if !errors.Is(err, ErrLeftOut) || !errors.Is(err, ErrNoGroup) {
		t.Fatalf("late step: %v, want ErrLeftOut", err)
	}
	if took := time.Since(start); took >= window/2 {
		t.Fatalf("the late step took %v to learn it was left out", took)
	}
}

// TestWithAbortEndsMatchmaking: a step whose partners never come ends its
// matchmaking when the caller aborts it, not at the end of the window, and
// does not fall back to gossip; the vector is left as it was.
func TestWithAbortEndsMatchmaking(t *testing.T) {
	const window = 30 * time.Second
	ps := newPeers(t, 2, 1000, func(_ int, c *Config) {
		c.MatchWindow, c.MatchTimeout = window, 2*window
		c.Gossip = true
	})
	abort := make(chan struct{})
	time.AfterFunc(200*time.Millisecond, func() { close(abort) })
	start := time.Now()
	res, err := ps[0].a.Step(context.Background(), "run/shard0", 3, ps[0].vec, 1, WithAbort(abort))
	took := time.Since(start)
	if !errors.Is(err, ErrNoGroup) {
		t.Fatalf("aborted step: err %v, want ErrNoGroup", err)
	}
	if took >= window/2 {
		t.Fatalf("aborted step took %v, the matchmaking window is %v", took, window)
	}
	if res.Fraction != 0 || res.Mode == ModeGossip {
		t.Fatalf("aborted step: mode %s fraction %v, want nothing averaged", res.Mode, res.Fraction)
	}
	for i, v := range ps[0].vec {
		if v != ps[0].orig[i] {
			t.Fatalf("value %d changed by an aborted step: %v, was %v", i, v, ps[0].orig[i])
		}
	}
}

// Sparse deltas (local mode's compressed pseudo-gradients): each peer's
// vector is what sparseq.Compressor left of it; the all-reduce ends with the
// same vector everywhere, the weighted mean of the compressed inputs up to
// the rounding of the returned parts, for a small fraction of the bytes.
func TestAllreduceSparse(t *testing.T) {
	const n = 3*sparseq.Block + 123
	ps := newPeers(t, 3, n, func(_ int, c *Config) { roomyMatch(c); c.PartSize = sparseq.Block })
	var wsum float64
	for _, p := range ps {
		c, err := sparseq.NewCompressor(0.02, 4)
		if err != nil {
			t.Fatal(err)
		}
		c.Compress(p.vec)
		p.orig = append(p.orig[:0], p.vec...)
		wsum += p.w
	}
	out := stepAll(ps, "run/shard0/delta", 1, nil, WithCompression(CodecSparse4))
	want := make([]float64, n)
	for _, p := range ps {
		for k, x := range p.orig {
			want[k] += p.w * float64(x) / wsum
		}
	}
	for i, o := range out {
		if o.err != nil || o.res.Fraction != 1 {
			t.Fatalf("peer %d: %v (fraction %v)", i, o.err, o.res.Fraction)
		}
		// 2% of the values at 4 bits and their indices: far below fp32's
		// 4 bytes a value each way.
		if b := o.res.BytesSent + o.res.BytesReceived; b > 8*n/10 {
			t.Errorf("peer %d: %d bytes for %d values", i, b, n)
		}
	}
	for b := 0; b < n; b += sparseq.Block {
		var amax float64
		for k := b; k < min(b+sparseq.Block, n); k++ {
			amax = max(amax, math.Abs(want[k]))
		}
		for k := b; k < min(b+sparseq.Block, n); k++ {
			// The returned part is quantized again: half a step of 4 bits.
			if d := math.Abs(float64(ps[0].vec[k]) - want[k]); d > amax/14*1.001+1e-7 {
				t.Fatalf("value %d: %v, want %v (block max %v)", k, ps[0].vec[k], want[k], amax)
			}
			for i := 1; i < len(ps); i++ {
				if ps[i].vec[k] != ps[0].vec[k] {
					t.Fatalf("peer %d differs from peer 0 at %d", i, k)
				}
			}
		}
	}
}
