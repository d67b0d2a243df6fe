package node

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/swarm-train/swarm/internal/testutil"
	"github.com/swarm-train/swarm/node/api"
	"github.com/swarm-train/swarm/swarm/pipeline"
	"github.com/swarm-train/swarm/swarm/progress"
)

const hop protocol.ID = "/libp2p/circuit/relay/0.2.0/hop"

func speaks(n *Node, proto protocol.ID) bool {
	for _, p := range n.Host().Mux().Protocols() {
		if p == proto {
			return true
		}
	}
	return false
}

// A bootstrap node counts as public from the start and runs the relay
// service at once (it used to wait for an AutoNAT verdict that never came);
// on 127.0.0.1 its verdict says local. --reachability private keeps a
// bootstrap's relay service off.
func TestBootstrapServesRelayAtOnce(t *testing.T) {
	b, _ := startBootstrap(t)
	testutil.Eventually(t, 5*time.Second, func() string { return "bootstrap does not speak the relay hop protocol" },
		func() bool { return speaks(b, hop) })
	var v, help string
	testutil.Eventually(t, 5*time.Second, func() string { return "bootstrap on 127.0.0.1: verdict " + v + " (" + help + ")" },
		func() bool {
			v, help = b.reachability()
			return v == api.ReachLocal && strings.Contains(help, "--reachability public")
		})

	cfg := testConfig("")
	cfg.Role = RoleBootstrap
	cfg.Reachability = ReachabilityPrivate
	p := startNode(t, cfg)
	if speaks(p, hop) {
		t.Error("a bootstrap set private runs the relay service")
	}
}

func TestConfigReachabilityAndAnnounce(t *testing.T) {
	sk, _, _ := crypto.GenerateEd25519Key(nil)
	self, _ := peer.IDFromPrivateKey(sk)
	other := "12D3KooWQE222tuGYxA9tAFSdSBEPEkPPJXaWNh6yus2JiKPrrxH"
	for _, c := range []struct {
		reach    string
		announce []string
		boot     bool // public bootstrap nodes
		err      string
	}{
		{reach: "public"},
		{reach: "auto", announce: []string{"/ip4/203.0.113.7/tcp/4001", "/ip4/203.0.113.7/udp/4001/quic-v1/p2p/" + self.String()}},
		{reach: "sometimes", err: "field reachability"},
		{announce: []string{"/ip4/1.2.3.4/tcp/4001", "not an address"}, err: "field announce[1]"},
		{announce: []string{"/ip4/1.2.3.4/tcp/4001/p2p/" + other}, err: "field announce[0]: \"/ip4/1.2.3.4/tcp/4001/p2p/" + other + "\" names peer"},
		{announce: []string{"/ip4/1.2.3.4"}, err: "names no TCP or UDP port"},
		{announce: []string{"/p2p/" + other}, err: "no transport address"},
		{announce: []string{"/ip4/1.2.3.4/tcp/1/p2p/" + other + "/p2p-circuit"}, err: "relay address"},
		{announce: []string{"/ip4/0.0.0.0/tcp/4001"}, err: "unspecified address"},
		{announce: []string{"/ip4/192.168.1.9/tcp/4001"}}, // a local swarm: private addresses are what peers dial
		{announce: []string{"/ip4/192.168.1.9/tcp/4001"}, boot: true, err: "loopback or private address"},
		{announce: []string{"/ip4/127.0.0.1/udp/4001/quic-v1"}, boot: true, err: "loopback or private address"},
		{announce: []string{"/dns4/home.example/tcp/4001"}, boot: true},
	} {
		cfg := DefaultConfig()
		cfg.Reachability, cfg.Announce = c.reach, c.announce
		if c.boot {
			cfg.Bootstrap = []string{"/ip4/8.8.8.8/tcp/4001/p2p/" + other}
		}
		err := cfg.Validate()
		if err == nil {
			_, err = cfg.AnnounceAddrs(self)
		}
		if (err == nil) != (c.err == "") || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("reachability %q announce %q: error %v, want %q", c.reach, c.announce, err, c.err)
		}
	}
	cfg := DefaultConfig()
	if cfg.ReachabilitySetting() != ReachabilityAuto {
		t.Errorf("volunteer default %q, want auto", cfg.ReachabilitySetting())
	}
	cfg.Role = RoleBootstrap
	if cfg.ReachabilitySetting() != ReachabilityPublic {
		t.Errorf("bootstrap default %q, want public", cfg.ReachabilitySetting())
	}
}

// Announced addresses replace the direct ones peers learn; relay
// addresses stay.
func TestAnnounceAddrs(t *testing.T) {
	cfg := testConfig("run")
	cfg.Announce = []string{"/ip4/203.0.113.9/tcp/4001"}
	n := startNode(t, cfg)
	got := n.Host().Addrs()
	if len(got) != 1 || got[0].String() != "/ip4/203.0.113.9/tcp/4001" {
		t.Fatalf("addrs %v, want only the announced one", got)
	}
	relay := ma.StringCast("/ip4/198.51.100.1/tcp/4001/p2p/" + n.Host().ID().String() + "/p2p-circuit")
	f := advertisedAddrs([]ma.Multiaddr{ma.StringCast("/ip4/203.0.113.9/tcp/4001")}, nil)
	if out := f([]ma.Multiaddr{ma.StringCast("/ip4/10.0.0.2/tcp/4001"), relay}); len(out) != 2 || !out[1].Equal(relay) {
		t.Errorf("factory %v, want the announced and the relay address", out)
	}
	// Behind NAT with no public address: routes through the bootstrap relays.
	route := ma.StringCast("/ip4/8.8.8.8/tcp/4001/p2p/12D3KooWQE222tuGYxA9tAFSdSBEPEkPPJXaWNh6yus2JiKPrrxH/p2p-circuit")
	f = advertisedAddrs(nil, []ma.Multiaddr{route})
	if out := f([]ma.Multiaddr{ma.StringCast("/ip4/10.0.0.2/tcp/4001")}); len(out) != 2 || !out[1].Equal(route) {
		t.Errorf("factory behind NAT %v, want the private and the route address", out)
	}
	if out := f([]ma.Multiaddr{ma.StringCast("/ip4/8.8.4.4/tcp/4001")}); len(out) != 1 {
		t.Errorf("factory with a public address %v, want it alone", out)
	}
}

// On a public DHT, loopback and private addresses stay off; in a local
// swarm they are kept.
func TestDHTAddrFilter(t *testing.T) {
	in := []ma.Multiaddr{
		ma.StringCast("/ip4/127.0.0.1/tcp/4001"),
		ma.StringCast("/ip4/192.168.1.5/tcp/4001"),
		ma.StringCast("/ip4/8.8.4.4/udp/4001/quic-v1"),
		ma.StringCast("/ip4/8.8.8.8/tcp/4001/p2p/12D3KooWQE222tuGYxA9tAFSdSBEPEkPPJXaWNh6yus2JiKPrrxH/p2p-circuit"),
		ma.StringCast("/ip4/10.1.1.1/tcp/4001/p2p/12D3KooWQE222tuGYxA9tAFSdSBEPEkPPJXaWNh6yus2JiKPrrxH/p2p-circuit"),
	}
	pub := &Node{cfg: Config{Role: RoleNode}, boot: []peer.AddrInfo{{Addrs: []ma.Multiaddr{ma.StringCast("/ip4/8.8.8.8/tcp/4001")}}}}
	if got := pub.dhtAddrFilter(in); len(got) != 2 || !got[0].Equal(in[2]) || !got[1].Equal(in[3]) {
		t.Errorf("public swarm keeps %v, want the public direct and relay addresses", got)
	}
	local := &Node{cfg: Config{Role: RoleNode}, boot: []peer.AddrInfo{{Addrs: []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/4001")}}}}
	if got := local.dhtAddrFilter(in); len(got) != len(in) {
		t.Errorf("local swarm keeps %v, want all", got)
	}
}

// Two volunteers that can reach each other only through the bootstrap's
// relay (they announce an address nobody listens on, and are set private
// so they hold relay reservations at once) pass the run hello over the
// relayed connection and become run peers, marked relayed in status;
// progress records pass over it, while a pipeline stream waits for a
// direct connection and fails with ErrRelayedOnly.
func TestRunOverRelay(t *testing.T) {
	old := directWait
	directWait = 2 * time.Second
	t.Cleanup(func() { directWait = old })
	_, bootAddr := startBootstrap(t)
	var nodes []*Node
	for range 2 {
		cfg := testConfig("relayed-run", bootAddr)
		cfg.Reachability = ReachabilityPrivate
		cfg.Announce = []string{"/ip4/127.0.0.1/tcp/9"} // discard: nothing listens
		nodes = append(nodes, startNode(t, cfg))
	}
	a, b := nodes[0], nodes[1]
	got := make(chan []byte, 1)
	a.RunHost().SetStreamHandler(progress.LegacyProtocol, func(s network.Stream) {
		data, _ := io.ReadAll(s)
		got <- data
		_ = s.Close()
	})
	a.RunHost().SetStreamHandler(pipeline.Protocol, func(s network.Stream) { _ = s.Reset() })
	testutil.Eventually(t, 60*time.Second, func() string {
		ok, why := allFound(nodes)
		_ = ok
		return "run peers over the relay: " + why
	}, func() bool { ok, _ := allFound(nodes); return ok })
	st := b.Status()
	if len(st.RunPeers) != 1 || st.RunPeers[0].Connection != ConnRelayed {
		t.Fatalf("b's run peers %+v, want a relayed", st.RunPeers)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := b.RunHost().NewStream(ctx, a.Host().ID(), progress.LegacyProtocol)
	if err != nil {
		t.Fatalf("progress stream over the relay: %v", err)
	}
	_, _ = s.Write([]byte("record"))
	_ = s.Close()
	select {
	case data := <-got:
		if string(data) != "record" {
			t.Errorf("a read %q", data)
		}
	case <-ctx.Done():
		t.Fatal("the progress record did not arrive over the relay")
	}
	t0 := time.Now()
	_, err = b.RunHost().NewStream(ctx, a.Host().ID(), pipeline.Protocol)
	if !errors.Is(err, ErrRelayedOnly) {
		t.Fatalf("pipeline stream over the relay: %v, want ErrRelayedOnly", err)
	}
	if d := time.Since(t0); d < directWait || d > directWait+3*time.Second {
		t.Errorf("pipeline stream failed after %v, want about %v", d, directWait)
	}
	if !strings.Contains(err.Error(), "forward TCP and UDP port") {
		t.Errorf("error %q says nothing of what to do", err)
	}
	// The peer failed to punch and there is no training relay: the next
	// training stream fails at once, and the trainer's claims count the
	// peer out.
	t0 = time.Now()
	if _, err := b.RunHost().NewStream(ctx, a.Host().ID(), pipeline.Protocol); !errors.Is(err, ErrRelayedOnly) || time.Since(t0) > time.Second {
		t.Errorf("second pipeline stream: %v after %v, want ErrRelayedOnly at once", err, time.Since(t0))
	}
	if l := b.TrainingLink(a.Host().ID()); !l.Blocked || l.Connection != ConnRelayed {
		t.Errorf("b's training link to a %+v, want relayed and blocked", l)
	}
	if r, ok := b.RunHost().(interface{ CanTrainWith(string) bool }); !ok || r.CanTrainWith(a.Host().ID().String()) {
		t.Error("b's run host says it can train with a")
	}
}

// Relay reservations are bounded per IP address: the ninth peer from one
// address is refused, and one peer holds one reservation (a renewal
// replaces it rather than taking another slot).
func TestRelayReservationsBounded(t *testing.T) {
	b, _ := startBootstrap(t)
	testutil.Eventually(t, 5*time.Second, testutil.Says("bootstrap does not speak the relay hop protocol"),
		func() bool { return speaks(b, hop) })
	relay := peer.AddrInfo{ID: b.Host().ID(), Addrs: b.Host().Addrs()}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first := testutil.Host(t)
	for range 3 { // renewals by one peer
		if err := first.Connect(ctx, relay); err != nil {
			t.Fatal(err)
		}
		if _, err := client.Reserve(ctx, first, relay); err != nil {
			t.Fatalf("renewal refused: %v", err)
		}
	}
	for i := 1; i <= relayMaxPerIP; i++ {
		h := testutil.Host(t)
		if err := h.Connect(ctx, relay); err != nil {
			t.Fatal(err)
		}
		_, err := client.Reserve(ctx, h, relay)
		switch {
		case i < relayMaxPerIP && err != nil:
			t.Fatalf("reservation %d from 127.0.0.1 refused: %v", i+1, err)
		case i == relayMaxPerIP && err == nil:
			t.Fatalf("reservation %d from one IP accepted; the limit is %d", i+1, relayMaxPerIP)
		}
	}
}
