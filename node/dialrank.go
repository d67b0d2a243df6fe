package node

import (
	"sort"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"
)

// quicDelay is how long a dial waits on a peer's TCP addresses before it also
// tries the peer's QUIC addresses.
const quicDelay = 250 * time.Millisecond

// tcpFirstDialRanker ranks a peer's direct TCP addresses first (in libp2p's
// default order among themselves) and every other address (QUIC, relayed)
// after them, held back by quicDelay past the last TCP attempt. Training moves
// bulk tensors (activations, gradients, whole shard states) over these
// connections, and libp2p's TCP+TLS carries them at about twice QUIC's rate
// for the same CPU; QUIC still connects where TCP cannot (UDP-only NAT
// traversal), only later. A peer without a direct TCP address is ranked as
// libp2p's default ranker does.
func tcpFirstDialRanker(addrs []ma.Multiaddr) []network.AddrDelay {
	var tcp, rest []ma.Multiaddr
	for _, a := range addrs {
		if isDirectTCP(a) {
			tcp = append(tcp, a)
		} else {
			rest = append(rest, a)
		}
	}
	if len(tcp) == 0 {
		return swarm.DefaultDialRanker(addrs)
	}
	ranked := swarm.DefaultDialRanker(tcp)
	var last time.Duration
	for _, ad := range ranked {
		last = max(last, ad.Delay)
	}
	if len(rest) > 0 {
		for _, ad := range swarm.DefaultDialRanker(rest) {
			ad.Delay += last + quicDelay
			ranked = append(ranked, ad)
		}
	}
	sort.SliceStable(ranked, func(i, j int) bool { return ranked[i].Delay < ranked[j].Delay })
	return ranked
}

func isDirectTCP(a ma.Multiaddr) bool {
	if _, err := a.ValueForProtocol(ma.P_CIRCUIT); err == nil {
		return false
	}
	_, err := a.ValueForProtocol(ma.P_TCP)
	return err == nil
}

// dialRanker ranks a dial's addresses: a bootstrap node's (any of its
// addresses in boot) QUIC first, as libp2p's default ranker does, every
// other peer's TCP first (tcpFirstDialRanker). A volunteer that meets its
// bootstrap over QUIC learns its public UDP address from it (identify's
// observed address), so DCUtR punches over UDP too, which passes routers
// that reset unsolicited TCP; bulk training traffic to run peers still
// prefers TCP.
func dialRanker(boot []peer.AddrInfo) network.DialRanker {
	known := map[string]bool{}
	for _, ai := range boot {
		for _, a := range ai.Addrs {
			known[string(a.Bytes())] = true
		}
	}
	if len(known) == 0 {
		return tcpFirstDialRanker
	}
	return func(addrs []ma.Multiaddr) []network.AddrDelay {
		for _, a := range addrs {
			if known[string(a.Bytes())] {
				return swarm.DefaultDialRanker(addrs)
			}
		}
		return tcpFirstDialRanker(addrs)
	}
}

// withQUICSiblings adds to each bootstrap node given by TCP addresses only
// the QUIC address on the same host and port number (how bootstrap nodes
// listen by default), so that the first dial can go over QUIC; a wrong
// guess costs one failed dial beside the TCP one.
func withQUICSiblings(boot []peer.AddrInfo) []peer.AddrInfo {
	out := make([]peer.AddrInfo, 0, len(boot))
	for _, ai := range boot {
		hasQUIC := false
		var extra []ma.Multiaddr
		for _, a := range ai.Addrs {
			if _, err := a.ValueForProtocol(ma.P_QUIC_V1); err == nil {
				hasQUIC = true
			}
			if q := quicSibling(a); q != nil {
				extra = append(extra, q)
			}
		}
		if !hasQUIC {
			ai.Addrs = append(append([]ma.Multiaddr{}, ai.Addrs...), extra...)
		}
		out = append(out, ai)
	}
	return out
}

// quicSibling turns /ip4/X/tcp/P (or /ip6, /dns...) into /ip4/X/udp/P/quic-v1;
// nil for any other address.
func quicSibling(a ma.Multiaddr) ma.Multiaddr {
	if len(a) != 2 || a[1].Protocol().Code != ma.P_TCP {
		return nil
	}
	q, err := ma.NewMultiaddr("/udp/" + a[1].Value() + "/quic-v1")
	if err != nil {
		return nil
	}
	return ma.Join(ma.Multiaddr{a[0]}, q)
}
