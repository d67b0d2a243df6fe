package node

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	tu "github.com/swarm-train/swarm/internal/testutil"
	"github.com/swarm-train/swarm/swarm/pipeline"
)

// The budget paces reads to the rate, runs out at the day's total and
// starts again on the next UTC day.
func TestRelayBudget(t *testing.T) {
	day := time.Date(2026, 12, 1, 23, 0, 0, 0, time.UTC)
	b := newRelayBudget(8, 0.000010, 1000) // 1 MB/s, 10 kB a day, a 1000-byte read at least
	if b.burst != 50000 {
		t.Fatalf("burst %v, want 50 ms of 1 MB/s", b.burst)
	}
	if wait, over := b.take(5000, day); wait != 0 || over {
		t.Fatalf("first 5 kB: wait %v over %v, want neither (within the burst)", wait, over)
	}
	b.tokens = 0 // the bucket is empty: the next read waits for its bytes
	if wait, _ := b.take(1000, day); wait != time.Millisecond {
		t.Errorf("1 kB from an empty bucket at 1 MB/s: wait %v, want 1 ms", wait)
	}
	if wait, _ := b.take(1000, day.Add(10*time.Millisecond)); wait != 0 {
		t.Errorf("after 10 ms the bucket refilled 10 kB: wait %v, want 0", wait)
	}
	if _, over := b.take(3001, day.Add(time.Second)); !over {
		t.Error("10,001 bytes in a day of 10,000: not over")
	}
	if spent, until := b.spent(day.Add(time.Second)); !spent || !until.Equal(time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("spent %v until %v, want spent until the next UTC midnight", spent, until)
	}
	next := day.Add(time.Hour)
	if spent, _ := b.spent(next); spent || b.usedToday(next) != 0 {
		t.Errorf("next day: spent %v, used %d; want a fresh budget", spent, b.usedToday(next))
	}
}

// logBuffer collects a node's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startLogged runs a node whose log goes to the returned buffer.
func startLogged(t *testing.T, cfg Config) (*Node, *logBuffer) {
	t.Helper()
	buf := &logBuffer{}
	return startWith(t, cfg, slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))), buf
}

// Two volunteers that cannot punch (as in TestRunOverRelay) and a public
// volunteer with relay_training: after directWait a pipeline stream goes
// through the training relay, status says training-relay; a stream that
// carries more than the relay's circuit budget is cut, and the relay
// counts and logs it; a stranger gets no reservation.
func TestTrainingThroughRelay(t *testing.T) {
	old := directWait
	directWait = 2 * time.Second
	t.Cleanup(func() { directWait = old })
	_, bootAddr := startBootstrap(t)
	rcfg := testConfig("trained-through-relay", bootAddr)
	rcfg.RelayTraining, rcfg.Reachability, rcfg.RelayCircuitMB = true, ReachabilityPublic, 1
	relay, relayLog := startLogged(t, rcfg)
	var nodes []*Node
	for range 2 {
		cfg := testConfig("trained-through-relay", bootAddr)
		cfg.Reachability = ReachabilityPrivate
		cfg.Announce = []string{"/ip4/127.0.0.1/tcp/9"} // discard: nothing listens
		nodes = append(nodes, startNode(t, cfg))
	}
	a, b := nodes[0], nodes[1]
	got := make(chan int, 4)
	a.RunHost().SetStreamHandler(pipeline.Protocol, func(s network.Stream) {
		n, _ := io.Copy(io.Discard, s)
		_, _ = s.Write([]byte("ok"))
		_ = s.Close()
		got <- int(n)
	})
	all := append([]*Node{relay}, nodes...)
	tu.Eventually(t, 60*time.Second, func() string { _, why := allFound(all); return "run peers: " + why },
		func() bool { ok, _ := allFound(all); return ok })

	// The first stream waits directWait for a punch, then goes through
	// the relay once a holds its reservation there.
	var s network.Stream
	var err error
	tu.Eventually(t, 60*time.Second, func() string { return "pipeline stream through the training relay: " + err.Error() },
		func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err = b.RunHost().NewStream(ctx, a.Host().ID(), pipeline.Protocol)
			return err == nil
		})
	if r := relayOf(s.Conn().RemoteMultiaddr()); r != relay.Host().ID() {
		t.Fatalf("stream over %v, want a circuit through the training relay %s", s.Conn().RemoteMultiaddr(), relay.Host().ID())
	}
	_, _ = s.Write(make([]byte, 100<<10))
	_ = s.CloseWrite()
	if ans, _ := io.ReadAll(s); string(ans) != "ok" {
		t.Fatalf("answer %q through the relay", ans)
	}
	if n := <-got; n != 100<<10 {
		t.Errorf("a read %d bytes, want %d", n, 100<<10)
	}
	st := b.Status()
	for _, p := range st.RunPeers {
		if p.PeerID == a.Host().ID().String() && p.Connection != ConnTrainingRelay {
			t.Errorf("b's link to a: %q, want %q", p.Connection, ConnTrainingRelay)
		}
	}
	if v := promtest.ToFloat64(b.metrics.streamsRelayed); v < 1 {
		t.Errorf("training_streams_relayed_total %v, want at least 1", v)
	}
	if rs := relay.Status().TrainingRelay; rs == nil || rs.UsedTodayBytes < 100<<10 || rs.CircuitMB != 1 {
		t.Errorf("relay status %+v, want its budgets and the 100 KiB relayed", rs)
	}

	// Over the circuit's budget of 1 MiB: the relay closes the circuit.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err = b.RunHost().NewStream(ctx, a.Host().ID(), pipeline.Protocol)
	if err != nil {
		t.Fatalf("second stream: %v", err)
	}
	chunk := make([]byte, 64<<10)
	var werr error
	for sent := 0; sent < 4<<20 && werr == nil; sent += len(chunk) {
		_, werr = s.Write(chunk)
	}
	if werr == nil {
		_ = s.CloseWrite()
		_, werr = io.ReadAll(s)
	}
	if werr == nil {
		t.Error("4 MiB through a circuit with a budget of 1 MiB went through")
	}
	tu.Eventually(t, 10*time.Second, tu.Says("the relay counted no circuit closed for its budget"),
		func() bool { return promtest.ToFloat64(relay.metrics.relayClosed.WithLabelValues("circuit-data")) >= 1 })
	if !strings.Contains(relayLog.String(), "circuit closed: over its data budget") {
		t.Error("the relay did not log the circuit it closed")
	}

	// A stranger is not a run peer: no reservation.
	h := tu.Host(t)
	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer rcancel()
	ri := peer.AddrInfo{ID: relay.Host().ID(), Addrs: relay.Host().Addrs()}
	if err := h.Connect(rctx, ri); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Reserve(rctx, h, ri); err == nil {
		t.Error("a stranger got a reservation at the training relay")
	}
	if v := promtest.ToFloat64(relay.metrics.relayRefused.WithLabelValues("not-run-peer")); v < 1 {
		t.Errorf("refusals of strangers %v, want at least 1", v)
	}
}

// A training relay holds at most trainRelayMaxPerIP reservations from one
// IP address, run peers or not: of five run peers on 127.0.0.1, four hold
// one (renewals keep theirs) and the fifth is refused.
func TestTrainingRelayReservationsBounded(t *testing.T) {
	_, bootAddr := startBootstrap(t)
	rcfg := testConfig("bounded-relay", bootAddr)
	rcfg.RelayTraining, rcfg.Reachability = true, ReachabilityPublic
	relay := startNode(t, rcfg)
	all := []*Node{relay}
	for range trainRelayMaxPerIP + 1 {
		all = append(all, startNode(t, testConfig("bounded-relay", bootAddr)))
	}
	tu.Eventually(t, 60*time.Second, func() string { _, why := allFound(all); return "run peers: " + why },
		func() bool { ok, _ := allFound(all); return ok })
	ri := peer.AddrInfo{ID: relay.Host().ID(), Addrs: relay.Host().Addrs()}
	held := 0
	tu.Eventually(t, 30*time.Second, func() string { return fmt.Sprintf("%d reservations held, want %d", held, trainRelayMaxPerIP) },
		func() bool {
			held = 0
			for _, n := range all[1:] {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				if _, err := client.Reserve(ctx, n.Host(), ri); err == nil {
					held++
				}
				cancel()
			}
			return held == trainRelayMaxPerIP
		})
}
