package node

import (
	"context"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/swarm-train/swarm/averaging"
	"github.com/swarm-train/swarm/internal/testutil"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/pipeline"
	"github.com/swarm-train/swarm/swarm/progress"
	"github.com/swarm-train/swarm/swarm/statesync"
)

// trainingProtocols are every protocol the training service registers
// through the node's RunHost.
var trainingProtocols = []protocol.ID{
	pipeline.Protocol, progress.LegacyProtocol, statesync.Protocol,
	averaging.ProtoMatch, averaging.ProtoGossip, averaging.ProtoReduce,
}

func refusals(n *Node, proto protocol.ID, reason string) uint64 {
	for _, c := range n.Refusals().Summary().Refusals {
		if c.Protocol == string(proto) && c.Reason == reason {
			return c.Count
		}
	}
	return 0
}

// A stream of a training protocol from a peer that has not passed the run
// hello is reset before the handler runs, for every protocol; an admitted
// peer's stream reaches the handler.
func TestGateRefusesNonAdmitted(t *testing.T) {
	_, bootAddr := startBootstrap(t)
	a := startNode(t, testConfig("run", bootAddr))
	b := startNode(t, testConfig("run", bootAddr))
	var ran atomic.Int64
	for _, p := range trainingProtocols {
		a.RunHost().SetStreamHandler(p, func(s network.Stream) {
			ran.Add(1)
			_, _ = s.Write([]byte("ok"))
			_ = s.Close()
		})
	}
	outsider := testutil.Host(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ai := peer.AddrInfo{ID: a.Host().ID(), Addrs: a.Host().Addrs()}
	if err := outsider.Connect(ctx, ai); err != nil {
		t.Fatal(err)
	}
	for _, p := range trainingProtocols {
		// The reset may reach the outsider while it still negotiates the
		// protocol (NewStream fails) or once it reads: either way its
		// stream is refused, and counted before the reset.
		s, err := outsider.NewStream(ctx, a.Host().ID(), p)
		if err == nil {
			_, _ = s.Write([]byte("hostile bytes"))
			if b, err := io.ReadAll(s); err == nil {
				t.Errorf("%s: outsider's stream was answered %q", p, b)
			}
		} else if !strings.Contains(err.Error(), "reset") {
			t.Fatalf("%s: open: %v", p, err)
		}
		if n := refusals(a, p, refuseNotAdmitted); n != 1 {
			t.Errorf("%s: %d not-admitted refusals counted, want 1", p, n)
		}
	}
	if ran.Load() != 0 {
		t.Fatalf("a handler ran %d times for a peer that never passed the hello", ran.Load())
	}
	// b opens streams through its own RunHost: the hello runs first if
	// discovery has not run it yet, and a's handlers serve b.
	b.Host().Peerstore().AddAddrs(a.Host().ID(), a.Host().Addrs(), time.Hour)
	for _, p := range trainingProtocols {
		s, err := b.RunHost().NewStream(ctx, a.Host().ID(), p)
		if err != nil {
			t.Fatalf("%s: admitted peer: %v", p, err)
		}
		got, err := io.ReadAll(s)
		if err != nil || string(got) != "ok" {
			t.Fatalf("%s: admitted peer got %q, %v", p, got, err)
		}
	}
	if ran.Load() != int64(len(trainingProtocols)) {
		t.Fatalf("handlers ran %d times for the admitted peer, want %d", ran.Load(), len(trainingProtocols))
	}
}

// tokenRun is a token-admission manifest and its operator key.
func tokenRun(t *testing.T) (*run.Manifest, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "operator.key")
	pub, err := run.GenerateOperatorKey(path)
	if err != nil {
		t.Fatal(err)
	}
	m := run.NewMLPMNIST(2)
	m.Admission = &run.AdmissionSpec{Mode: run.AdmitToken, OperatorKey: hex.EncodeToString(pub)}
	return m, path
}

// tokenConfig is a node config for run m whose identity is known in
// advance, holding a token for it that expires at exp (zero: no token).
func tokenConfig(t *testing.T, m *run.Manifest, keyPath string, exp time.Time, boot string) Config {
	t.Helper()
	home := t.TempDir()
	sk, err := LoadOrCreateIdentity(home)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(sk)
	runID, _ := m.ID()
	cfg := testConfig("", boot)
	cfg.Home = home
	cfg.API = "127.0.0.1:0"
	cfg.RunID = runID
	if !exp.IsZero() {
		key, err := run.LoadOperatorKey(keyPath)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Token, err = run.IssueToken(key, runID.String(), id.String(), exp); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Admission = Admission{Mode: run.AdmitToken, Token: cfg.Token,
		Verify: func(tok string, p peer.ID, now time.Time) (time.Time, error) {
			tk, err := m.VerifyToken(tok, runID.String(), p.String(), now)
			if err != nil {
				return time.Time{}, err
			}
			return tk.Expires, nil
		}}
	return cfg
}

// Two volunteers with valid tokens become run peers; one with an expired
// token and one with none are refused by both, are told why, and cannot
// use a training protocol.
func TestTokenAdmission(t *testing.T) {
	m, keyPath := tokenRun(t)
	_, bootAddr := startBootstrap(t)
	later := time.Now().Add(time.Hour)
	a := startNode(t, tokenConfig(t, m, keyPath, later, bootAddr))
	b := startNode(t, tokenConfig(t, m, keyPath, later, bootAddr))
	expired := startNode(t, tokenConfig(t, m, keyPath, time.Now().Add(-time.Minute), bootAddr))
	none := startNode(t, tokenConfig(t, m, keyPath, time.Time{}, bootAddr))
	var ran atomic.Int64
	a.RunHost().SetStreamHandler(pipeline.Protocol, func(s network.Stream) { ran.Add(1); s.Close() })

	testutil.Eventually(t, 20*time.Second, func() string { return "a and b did not admit each other" }, func() bool {
		return runPeerSet(a)[b.Host().ID()] && runPeerSet(b)[a.Host().ID()]
	})
	for _, c := range []struct {
		n      *Node
		reason string
	}{{expired, refuseTokenExpired}, {none, refuseTokenMissing}} {
		testutil.Eventually(t, 20*time.Second, func() string { return c.reason + ": refusal not reported to the volunteer" }, func() bool {
			s := c.n.Status().Security
			return s != nil && strings.HasPrefix(s.AdmissionRefused, c.reason)
		})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := c.n.RunHost().NewStream(ctx, a.Host().ID(), pipeline.Protocol)
		cancel()
		if err == nil || !strings.Contains(err.Error(), c.reason) {
			t.Errorf("%s: stream to a run peer: %v", c.reason, err)
		}
		if runPeerSet(a)[c.n.Host().ID()] || runPeerSet(c.n)[a.Host().ID()] {
			t.Errorf("%s: listed as a run peer", c.reason)
		}
	}
	if refusals(a, HelloProtocol, refuseTokenExpired) == 0 || refusals(a, HelloProtocol, refuseTokenMissing) == 0 {
		t.Errorf("refusals not counted: %+v", a.Refusals().Summary())
	}
	if ran.Load() != 0 {
		t.Fatal("a served a refused volunteer")
	}
}

// A private swarm: nodes with the swarm key connect and form the run; a node
// without it cannot even connect to them.
func TestPrivateSwarm(t *testing.T) {
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "swarm.key")
	if _, err := GenerateSwarmKey(keyPath); err != nil {
		t.Fatal(err)
	}
	private := func(boot ...string) Config {
		cfg := testConfig("private-run", boot...)
		cfg.SwarmKeyFile = keyPath
		cfg.Listen = []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"}
		return cfg
	}
	bcfg := private()
	bcfg.Role = RoleBootstrap
	boot := startNode(t, bcfg)
	bootAddr := boot.Addrs()[0].String()
	a := startNode(t, private(bootAddr))
	b := startNode(t, private(bootAddr))
	for _, addr := range a.Host().Network().ListenAddresses() {
		if strings.Contains(addr.String(), "quic") {
			t.Errorf("private node listens on %s", addr)
		}
	}
	testutil.Eventually(t, 20*time.Second, func() string { return "private nodes did not find each other" }, func() bool {
		return runPeerSet(a)[b.Host().ID()] && runPeerSet(b)[a.Host().ID()]
	})
	outsider := testutil.Host(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := outsider.Connect(ctx, peer.AddrInfo{ID: a.Host().ID(), Addrs: a.Host().Addrs()}); err == nil {
		t.Fatal("a peer without the swarm key connected to a private node")
	}
}

func TestSwarmKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "swarm.key")
	key, err := GenerateSwarmKey(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := LoadSwarmKey(path)
	if err != nil || hex.EncodeToString(got) != hex.EncodeToString(key) {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := GenerateSwarmKey(path); err == nil {
		t.Fatal("overwrote a swarm key")
	}
	bad := filepath.Join(dir, "bad.key")
	if err := os.WriteFile(bad, []byte("/key/swarm/psk/1.0.0/\n/base16/\nnothex\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSwarmKey(bad); err == nil || !strings.Contains(err.Error(), "64 hex digits") {
		t.Fatalf("malformed key: %v", err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSwarmKey(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("readable key: %v", err)
	}
}

// Offenders named by the refusals are disconnected and refused by the
// connection gater for the ban period.
func TestOffenderBanned(t *testing.T) {
	a := startNode(t, testConfig("run"))
	a.RunHost().SetStreamHandler(pipeline.Protocol, func(s network.Stream) { s.Close() })
	evil := testutil.Host(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ai := peer.AddrInfo{ID: a.Host().ID(), Addrs: a.Host().Addrs()}
	if err := evil.Connect(ctx, ai); err != nil {
		t.Fatal(err)
	}
	for range 16 { // twice the default strikes
		s, err := evil.NewStream(ctx, a.Host().ID(), pipeline.Protocol)
		if err != nil {
			break // already cut off
		}
		_, _ = io.ReadAll(s)
	}
	testutil.Eventually(t, 5*time.Second, func() string { return "offender still connected" }, func() bool {
		return a.Host().Network().Connectedness(evil.ID()) != network.Connected
	})
	evil.Peerstore().RemovePeer(a.Host().ID())
	if err := evil.Connect(ctx, ai); err == nil {
		// The gater refuses after the handshake; the dialer may see the
		// connection for a moment before it is closed.
		testutil.Eventually(t, 5*time.Second, func() string { return "banned peer reconnected" }, func() bool {
			return a.Host().Network().Connectedness(evil.ID()) != network.Connected
		})
	}
	if !a.Refusals().Banned(evil.ID()) || a.Status().Security.Offenders != 1 {
		t.Fatalf("offender not banned: %+v", a.Status().Security)
	}
}

// The progress topic's router opens one stream to a peer when the
// connection comes up and never again while it lasts: a run hello that
// fails then (the peer's run not serving yet) is tried again while the
// peer stays connected, and the stream opens once the peer answers. A
// training protocol's stream is not retried (its caller is).
func TestProgressStreamRetriesHello(t *testing.T) {
	_, bootAddr := startBootstrap(t)
	a := startNode(t, testConfig("run", bootAddr))
	b := startNode(t, testConfig("run", bootAddr))
	b.RunHost().SetStreamHandler(progress.LegacyProtocol, func(s network.Stream) {
		_, _ = s.Write([]byte("ok"))
		_ = s.Close()
	})
	// Neither answers a hello (b's run is not serving yet; a's removed so
	// that b cannot admit itself to a by its own discovery), and neither
	// holds the other admitted.
	b.Host().RemoveStreamHandler(HelloProtocol)
	a.Host().RemoveStreamHandler(HelloProtocol)
	a.runs.forget(b.Host().ID())
	b.runs.forget(a.Host().ID())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Host().Connect(ctx, peer.AddrInfo{ID: b.Host().ID(), Addrs: b.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.RunHost().NewStream(ctx, b.Host().ID(), pipeline.Protocol); err == nil {
		t.Fatal("a pipeline stream opened to a peer that never passed the hello")
	}
	type opened struct {
		s   network.Stream
		err error
	}
	done := make(chan opened, 1)
	start := time.Now()
	go func() {
		s, err := a.RunHost().NewStream(ctx, b.Host().ID(), progress.LegacyProtocol)
		done <- opened{s, err}
	}()
	testutil.Eventually(t, 10*time.Second, testutil.Says("a's progress stream to fail a hello"), func() bool {
		a.runs.mu.Lock()
		defer a.runs.mu.Unlock()
		_, inflight := a.runs.inflight[b.Host().ID()]
		return a.runs.failed[b.Host().ID()].After(start) && !inflight
	})
	// Given up, the stream would be back within moments; retrying, it
	// waits (250 ms before the next hello).
	select {
	case o := <-done:
		t.Fatalf("the progress stream gave up after one failed hello: %v", o.err)
	case <-time.After(100 * time.Millisecond):
	}
	b.Host().SetStreamHandler(HelloProtocol, b.runs.handleHello)
	o := <-done
	if o.err != nil {
		t.Fatalf("progress stream once b's hello answers: %v", o.err)
	}
	if got, err := io.ReadAll(o.s); err != nil || string(got) != "ok" {
		t.Fatalf("progress stream got %q, %v", got, err)
	}
}
