// Package testutil holds what the project's tests share: waiting on a
// condition (never on a sleep) and libp2p hosts on the loopback interface.
package testutil

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Poll is how often Eventually checks its condition at first; MaxPoll is
// the longest it lets pass between two checks.
const (
	Poll    = 20 * time.Millisecond
	MaxPoll = time.Second
)

// Eventually fails the test unless cond holds within d; what describes what
// was awaited (called only on failure, so it may report the last state).
// It is the project's one way for a test to wait: on a condition, never on
// a sleep. It checks every Poll, and as the wait grows every tenth of the
// time waited so far (at most MaxPoll apart), so a condition that runs a
// process or asks a daemon does not load the machine through a wait of
// minutes. The test's own time is the wall clock (a manual clock advances
// only when the test says so).
func Eventually(t testing.TB, d time.Duration, what func() string, cond func() bool) {
	t.Helper()
	start := time.Now()
	for !cond() {
		waited := time.Since(start)
		if waited > d {
			t.Fatalf("after %v: %s", d, what())
		}
		<-time.After(min(max(Poll, waited/10), MaxPoll))
	}
}

// Says is a constant description for Eventually.
func Says(s string) func() string { return func() string { return s } }

// Host returns a libp2p host listening on a random TCP port of 127.0.0.1,
// closed when the test ends. opts come after the listen address.
func Host(t testing.TB, opts ...libp2p.Option) host.Host {
	t.Helper()
	h, err := libp2p.New(append([]libp2p.Option{libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0")}, opts...)...)
	if err != nil {
		t.Fatalf("libp2p host: %v", err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// Connect connects a to b (b's addresses are added to a's peerstore).
func Connect(t testing.TB, a, b host.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
		t.Fatalf("connect %s to %s: %v", a.ID(), b.ID(), err)
	}
}
