package node

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"github.com/swarm-train/swarm/internal/testutil"
)

// BenchmarkJoinRun measures how long a joiner takes to find its run peers
// on loopback: the swarm (one bootstrap node, 100 peers of the run) is
// formed first; each iteration starts one more node and waits until it
// lists as many run peers as it dials (dialTarget: a node connects to that
// many, not to the whole run), then leaves. Run with -benchtime Nx.
func BenchmarkJoinRun(b *testing.B) {
	peers := 100
	if s := os.Getenv("SWARM_BENCH_PEERS"); s != "" {
		peers, _ = strconv.Atoi(s)
	}
	_, bootAddr := startBootstrap(b)
	// Form the run in batches, as a real swarm grows, rather than 100
	// simultaneous joins.
	formStart := time.Now()
	var nodes []*Node
	for len(nodes) < peers {
		var batch []*Node
		for i := 0; i < 10 && len(nodes)+len(batch) < peers; i++ {
			cfg := testConfig("bench-run", bootAddr)
			cfg.DiscoveryInterval = time.Minute
			batch = append(batch, startNode(b, cfg))
		}
		for _, n := range batch {
			select {
			case <-n.Announced():
			case <-time.After(300 * time.Second):
				b.Fatal("peers did not announce within 300 s")
			}
		}
		nodes = append(nodes, batch...)
		b.Logf("%d peers announced at %v", len(nodes), time.Since(formStart).Round(time.Millisecond))
	}
	b.Logf("run of %d peers formed in %v", peers, time.Since(formStart).Round(time.Millisecond))
	// The swarm is formed once; the sub-benchmark only starts joiners.
	joined := 0 // joiners leave after their measurement; their records go stale
	b.Run("join", func(b *testing.B) {
		var total time.Duration
		for i := 0; i < b.N; i++ {
			start := time.Now()
			cfg := testConfig("bench-run", bootAddr)
			cfg.DiscoveryInterval = time.Minute
			j := startNode(b, cfg)
			want := min(peers, j.dialTarget())
			testutil.Eventually(b, 60*time.Second, func() string { return fmt.Sprintf("joiner found %d of %d", len(j.RunPeers()), want) },
				func() bool { return len(j.RunPeers()) >= want })
			d := time.Since(start)
			total += d
			joined++
			b.Logf("joiner %d found %d run peers in %v", joined, want, d.Round(time.Millisecond))
			j.Close()
		}
		b.ReportMetric(total.Seconds()/float64(b.N), "s/join")
	})
}

const throughputProto = "/swarm/bench/sink/1.0.0"

// BenchmarkStreamThroughput measures single-stream throughput between two
// libp2p hosts on loopback for each transport and security pairing.
func BenchmarkStreamThroughput(b *testing.B) {
	for _, tc := range []struct {
		name   string
		listen string
		opts   []libp2p.Option
	}{
		{"tcp-tls", "/ip4/127.0.0.1/tcp/0", []libp2p.Option{libp2p.Transport(tcp.NewTCPTransport), libp2p.Security(libp2ptls.ID, libp2ptls.New)}},
		{"tcp-noise", "/ip4/127.0.0.1/tcp/0", []libp2p.Option{libp2p.Transport(tcp.NewTCPTransport), libp2p.Security(noise.ID, noise.New)}},
		{"quic", "/ip4/127.0.0.1/udp/0/quic-v1", []libp2p.Option{libp2p.Transport(quic.NewTransport)}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			mk := func() host.Host {
				opts := append([]libp2p.Option{libp2p.ListenAddrStrings(tc.listen), libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
					libp2p.DisableRelay(), libp2p.ResourceManager(&network.NullResourceManager{})}, tc.opts...)
				h, err := libp2p.New(opts...)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { h.Close() })
				return h
			}
			src, dst := mk(), mk()
			dst.SetStreamHandler(throughputProto, func(s network.Stream) {
				// Drain until EOF, then acknowledge with the byte count's low byte.
				n, _ := io.Copy(io.Discard, s)
				_, _ = s.Write([]byte{byte(n)})
				s.Close()
			})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := src.Connect(ctx, peer.AddrInfo{ID: dst.ID(), Addrs: dst.Addrs()}); err != nil {
				b.Fatal(err)
			}
			const chunk = 1 << 20
			buf := make([]byte, chunk)
			b.SetBytes(chunk)
			b.ResetTimer()
			s, err := src.NewStream(ctx, dst.ID(), throughputProto)
			if err != nil {
				b.Fatal(err)
			}
			for i := 0; i < b.N; i++ {
				if _, err := s.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			if err := s.CloseWrite(); err != nil {
				b.Fatal(err)
			}
			ack := make([]byte, 1)
			if _, err := io.ReadFull(s, ack); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			s.Close()
		})
	}
}
