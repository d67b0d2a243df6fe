package node

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"

	ma "github.com/multiformats/go-multiaddr"
)

func TestTCPFirstDialRanker(t *testing.T) {
	m := func(s string) ma.Multiaddr { return ma.StringCast(s) }
	tcp4 := m("/ip4/127.0.0.1/tcp/4001")
	quic4 := m("/ip4/127.0.0.1/udp/4001/quic-v1")
	tcpPub := m("/ip4/198.51.100.7/tcp/4001")
	quicPub := m("/ip4/198.51.100.7/udp/4001/quic-v1")

	delays := func(addrs ...ma.Multiaddr) map[string]time.Duration {
		out := map[string]time.Duration{}
		for _, ad := range tcpFirstDialRanker(addrs) {
			out[ad.Addr.String()] = ad.Delay
		}
		return out
	}

	t.Run("tcp before quic", func(t *testing.T) {
		for _, pair := range [][2]ma.Multiaddr{{tcp4, quic4}, {tcpPub, quicPub}} {
			d := delays(pair[1], pair[0])
			if len(d) != 2 {
				t.Fatalf("ranked %d addresses, want 2: %v", len(d), d)
			}
			if d[pair[0].String()]+quicDelay > d[pair[1].String()] {
				t.Errorf("%v: tcp at %v, quic at %v; want quic at least %v later", pair, d[pair[0].String()], d[pair[1].String()], quicDelay)
			}
		}
	})
	t.Run("quic only is not delayed", func(t *testing.T) {
		d := delays(quicPub)
		if d[quicPub.String()] != 0 {
			t.Errorf("lone quic address delayed by %v", d[quicPub.String()])
		}
	})
	t.Run("order follows delay", func(t *testing.T) {
		ranked := tcpFirstDialRanker([]ma.Multiaddr{quicPub, tcpPub, quic4, tcp4})
		for i := 1; i < len(ranked); i++ {
			if ranked[i].Delay < ranked[i-1].Delay {
				t.Fatalf("not sorted by delay: %v", ranked)
			}
		}
	})
}

// TestTCPFirstDialRankerConnects: two hosts listening on TCP and QUIC end up
// connected over TCP.
func TestTCPFirstDialRankerConnects(t *testing.T) {
	newH := func() host.Host {
		h, err := libp2p.New(
			libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"),
			libp2p.SwarmOpts(swarm.WithDialRanker(tcpFirstDialRanker)),
			libp2p.DisableRelay(),
		)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		return h
	}
	a, b := newH(), newH()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
		t.Fatal(err)
	}
	conns := a.Network().ConnsToPeer(b.ID())
	if len(conns) == 0 {
		t.Fatal("no connection")
	}
	for _, c := range conns {
		if !isDirectTCP(c.RemoteMultiaddr()) {
			t.Errorf("connected over %v, want TCP", c.RemoteMultiaddr())
		}
	}
}

// Bootstrap nodes are dialled QUIC first (their QUIC address guessed from
// the TCP one when only that is given); other peers TCP first.
func TestBootstrapDialledQUICFirst(t *testing.T) {
	id, _ := peer.Decode("12D3KooWQE222tuGYxA9tAFSdSBEPEkPPJXaWNh6yus2JiKPrrxH")
	tcp := ma.StringCast("/ip4/198.51.100.7/tcp/4001")
	quic := ma.StringCast("/ip4/198.51.100.7/udp/4001/quic-v1")
	boot := withQUICSiblings([]peer.AddrInfo{{ID: id, Addrs: []ma.Multiaddr{tcp}}})
	if len(boot[0].Addrs) != 2 || !boot[0].Addrs[1].Equal(quic) {
		t.Fatalf("bootstrap addresses %v, want the TCP one and its QUIC sibling", boot[0].Addrs)
	}
	if again := withQUICSiblings(boot); len(again[0].Addrs) != 2 {
		t.Errorf("a bootstrap with a QUIC address got another: %v", again[0].Addrs)
	}
	if q := quicSibling(ma.StringCast("/dns4/boot.example/tcp/4001")); q == nil || q.String() != "/dns4/boot.example/udp/4001/quic-v1" {
		t.Errorf("dns sibling %v", q)
	}
	if q := quicSibling(ma.StringCast("/ip4/1.2.3.4/tcp/4001/ws")); q != nil {
		t.Errorf("websocket address got a QUIC sibling %v", q)
	}
	rank := dialRanker(boot)
	delay := func(addrs ...ma.Multiaddr) map[string]time.Duration {
		out := map[string]time.Duration{}
		for _, ad := range rank(addrs) {
			out[ad.Addr.String()] = ad.Delay
		}
		return out
	}
	if d := delay(tcp, quic); d[quic.String()] >= d[tcp.String()] {
		t.Errorf("bootstrap: quic at %v, tcp at %v; want quic first", d[quic.String()], d[tcp.String()])
	}
	otherTCP, otherQUIC := ma.StringCast("/ip4/198.51.100.8/tcp/4001"), ma.StringCast("/ip4/198.51.100.8/udp/4001/quic-v1")
	if d := delay(otherTCP, otherQUIC); d[otherTCP.String()] >= d[otherQUIC.String()] {
		t.Errorf("run peer: tcp at %v, quic at %v; want tcp first", d[otherTCP.String()], d[otherQUIC.String()])
	}
}
