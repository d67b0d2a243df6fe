package node

import (
	"sort"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
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
