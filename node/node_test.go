package node

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/goleak"

	"github.com/swarm-train/swarm/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testConfig is an ephemeral node on 127.0.0.1 (TCP, port 0).
func testConfig(run string, boot ...string) Config {
	cfg := DefaultConfig()
	cfg.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.Bootstrap = boot
	cfg.API = ""
	cfg.RunName = run
	cfg.PortMapping = false
	cfg.DiscoveryInterval = 2 * time.Second
	return cfg
}

// startNode runs a node until the test ends.
func startNode(t testing.TB, cfg Config) *Node {
	t.Helper()
	return startWith(t, cfg, nil)
}

// startWith runs a node that logs to log (nil: nowhere) until the test
// ends, and waits until it is ready (10 s at most).
func startWith(t testing.TB, cfg Config, log *slog.Logger) *Node {
	t.Helper()
	n, err := New(cfg, log)
	if err != nil {
		t.Fatalf("new node: %v", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- n.Run(context.Background()) }()
	t.Cleanup(func() {
		n.Close()
		if err := <-errc; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	select {
	case <-n.Ready():
	case err := <-errc:
		t.Fatalf("run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("node not ready after 10 s")
	}
	return n
}

func startBootstrap(t testing.TB) (*Node, string) {
	t.Helper()
	cfg := testConfig("")
	cfg.Role = RoleBootstrap
	b := startNode(t, cfg)
	return b, b.Addrs()[0].String()
}

func runPeerSet(n *Node) map[peer.ID]bool {
	set := map[peer.ID]bool{}
	for _, ai := range n.RunPeers() {
		set[ai.ID] = true
	}
	return set
}

// allFound reports whether every node of group lists exactly the others.
func allFound(group []*Node) (bool, string) {
	for i, n := range group {
		got := runPeerSet(n)
		for j, o := range group {
			if i != j && !got[o.Host().ID()] {
				return false, fmt.Sprintf("node %d has %d of %d run peers (missing node %d)", i, len(got), len(group)-1, j)
			}
		}
	}
	return true, ""
}

func TestRunDiscovery(t *testing.T) {
	nA, nB := 20, 5
	if testing.Short() {
		nA, nB = 6, 3
	}
	_, bootAddr := startBootstrap(t)
	var runA, runB []*Node
	start := time.Now()
	for i := 0; i < nA; i++ {
		runA = append(runA, startNode(t, testConfig("run-a", bootAddr)))
	}
	for i := 0; i < nB; i++ {
		runB = append(runB, startNode(t, testConfig("run-b", bootAddr)))
	}
	msg := ""
	// A bound for failure, not a speed target: the clock started before
	// 25 nodes were started one by one, which alone took seconds with the
	// machine loaded (10 s were once not enough for the last discovery
	// round); the time taken is logged.
	testutil.Eventually(t, 30*time.Second, func() string { return msg }, func() bool {
		okA, mA := allFound(runA)
		okB, mB := allFound(runB)
		msg = mA + mB
		return okA && okB
	})
	t.Logf("%d+%d nodes found their runs in %v", nA, nB, time.Since(start).Round(time.Millisecond))
	// Peers of the other run are never listed, even after more queries.
	for _, n := range runA {
		n.RefreshRunPeers()
	}
	time.Sleep(500 * time.Millisecond)
	inB := map[peer.ID]bool{}
	for _, n := range runB {
		inB[n.Host().ID()] = true
	}
	for i, n := range runA {
		for _, ai := range n.RunPeers() {
			if inB[ai.ID] {
				t.Errorf("node %d of run-a lists %s of run-b", i, ai.ID)
			}
		}
		if got := len(n.RunPeers()); got != nA-1 {
			t.Errorf("node %d of run-a lists %d run peers, want %d", i, got, nA-1)
		}
	}
	for i, n := range runB {
		if got := len(n.RunPeers()); got != nB-1 {
			t.Errorf("node %d of run-b lists %d run peers, want %d", i, got, nB-1)
		}
	}
}

func TestDiscoveryWithoutBootstrap(t *testing.T) {
	boot, bootAddr := startBootstrap(t)
	var group []*Node
	for i := 0; i < 4; i++ {
		group = append(group, startNode(t, testConfig("run", bootAddr)))
	}
	testutil.Eventually(t, 10*time.Second, func() string { _, m := allFound(group); return m }, func() bool {
		ok, _ := allFound(group)
		return ok
	})
	if err := boot.Close(); err != nil {
		t.Fatalf("close bootstrap: %v", err)
	}
	// The joiner knows one ordinary peer only.
	joiner := startNode(t, testConfig("run", group[0].Addrs()[0].String()))
	group = append(group, joiner)
	testutil.Eventually(t, 10*time.Second, func() string { _, m := allFound(group); return m }, func() bool {
		ok, _ := allFound(group)
		return ok
	})
}

// In a run of more peers than a node's dial target, each node's discovery
// dials at most dialTarget of them (others may dial it, and the DHT's
// queries connect to some), protects at most that many members from the
// connection manager, and every node still finds run peers.
func TestRunConnectionsBounded(t *testing.T) {
	_, bootAddr := startBootstrap(t)
	const n = 11
	var nodes []*Node
	for range n {
		cfg := testConfig("bounded", bootAddr)
		cfg.ConnsLow, cfg.ConnsHigh = 8, 64 // dialTarget 8
		nodes = append(nodes, startNode(t, cfg))
	}
	target := nodes[0].dialTarget()
	if target != 8 {
		t.Fatalf("dial target %d, want 8", target)
	}
	testutil.Eventually(t, 60*time.Second, testutil.Says("every node with run peers"), func() bool {
		for _, nd := range nodes {
			if len(nd.RunPeers()) < min(target, n-1)/2 {
				return false
			}
		}
		return true
	})
	for _, nd := range nodes {
		nd.RefreshRunPeers()
	}
	total := 0
	for i, nd := range nodes {
		if d := nd.runs.dialled.Load(); d > int64(target) {
			t.Errorf("node %d's discovery dialled %d run peers, at most %d", i, d, target)
		}
		nd.runs.mu.Lock()
		guarded := len(nd.runs.guarded)
		nd.runs.mu.Unlock()
		if guarded > target {
			t.Errorf("node %d protects %d members, at most %d", i, guarded, target)
		}
		total += len(nd.RunPeers())
	}
	t.Logf("%d nodes, dial target %d: %.1f run peers each on average", n, target, float64(total)/n)
}

// SetWorkPeers protects the peers named, at most protectMax, and releases
// the ones it no longer names.
func TestSetWorkPeers(t *testing.T) {
	_, bootAddr := startBootstrap(t)
	cfg := testConfig("work", bootAddr)
	cfg.ConnsLow, cfg.ConnsHigh = 8, 64 // protectMax 8
	nd := startNode(t, cfg)
	var ps []peer.ID
	for range 12 {
		ps = append(ps, testutil.Host(t).ID())
	}
	cm := nd.Host().ConnManager()
	nd.SetWorkPeers(ps)
	for i, p := range ps {
		if got, want := cm.IsProtected(p, workProtectionTag), i < nd.protectMax(); got != want {
			t.Errorf("peer %d protected %v, want %v", i, got, want)
		}
	}
	nd.SetWorkPeers(ps[1:2])
	if cm.IsProtected(ps[0], workProtectionTag) || !cm.IsProtected(ps[1], workProtectionTag) {
		t.Error("SetWorkPeers did not release the peer it no longer names, or dropped the one it names")
	}
	if got := nd.WorkPeers(); len(got) != 1 || got[0] != ps[1] {
		t.Errorf("WorkPeers %v, want [%s]", got, ps[1])
	}
}
