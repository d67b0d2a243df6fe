package node

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/swarm-train/swarm/node/api"
)

// localSwarm reports whether every bootstrap peer sits on a loopback or
// private address (or there are none): a swarm on one machine or one LAN,
// where there is no NAT to be behind and every node serves the DHT.
func localSwarm(boot []peer.AddrInfo) bool {
	for _, ai := range boot {
		for _, a := range ai.Addrs {
			if manet.IsPublicAddr(a) {
				return false
			}
		}
	}
	return true
}

// watchReachability follows AutoNAT's verdicts. It logs a verdict in plain
// words at start-up when one is already known (a local swarm), else once
// AutoNAT gives one (or after 30 s without), and again whenever it changes.
func (n *Node) watchReachability(ctx context.Context) {
	sub, err := n.host.EventBus().Subscribe(new(event.EvtLocalReachabilityChanged))
	if err != nil {
		n.log.Warn("cannot follow reachability", "err", err)
		return
	}
	defer sub.Close()
	first := time.NewTimer(30 * time.Second)
	defer first.Stop()
	logged := ""
	report := func() {
		verdict, help := n.reachability()
		if verdict == logged {
			return
		}
		logged = verdict
		n.log.Info("reachability: "+verdict, "advice", help)
	}
	if verdict, _ := n.reachability(); verdict != api.ReachUnknown {
		report() // known at once (a local swarm); otherwise wait for AutoNAT
	}
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-sub.Out():
			if !ok {
				return
			}
			n.reachMu.Lock()
			n.reach = e.(event.EvtLocalReachabilityChanged).Reachability
			n.reachMu.Unlock()
			report()
		case <-first.C:
			if verdict, help := n.reachability(); verdict == api.ReachUnknown {
				n.log.Warn("reachability still unknown after 30 s", "advice", help)
			}
			report()
		}
	}
}

// reachability turns AutoNAT's state and our addresses into a verdict
// (api.Reach*) and advice for the volunteer.
func (n *Node) reachability() (verdict, help string) {
	n.reachMu.Lock()
	r := n.reach
	n.reachMu.Unlock()
	port := n.listenPort()
	forward := fmt.Sprintf("forward TCP and UDP port %s on your router to this machine for direct connections", port)
	relayed := false
	anyPublic := false
	for _, a := range n.host.Addrs() {
		if isRelayAddr(a) {
			relayed = true
		} else if manet.IsPublicAddr(a) {
			anyPublic = true
		}
	}
	switch {
	case r == network.ReachabilityPublic:
		return api.ReachPublic, "other peers can dial this node directly; nothing to do"
	case relayed:
		return api.ReachRelayed, "behind NAT, reachable through a relay (slower); " + forward
	case r == network.ReachabilityPrivate:
		return api.ReachUnreachable, "behind NAT and no relay yet: peers cannot dial this node; " + forward
	case !anyPublic && localSwarm(n.boot):
		return api.ReachLocal, "local swarm: loopback/private addresses only, reachable by peers on this machine or LAN"
	}
	return api.ReachUnknown, "no verdict yet: AutoNAT needs a few connected peers to test this node's addresses"
}

func isRelayAddr(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_CIRCUIT)
	return err == nil
}

// listenPort is the TCP port we listen on, for the port-forward advice.
func (n *Node) listenPort() string {
	for _, a := range n.host.Network().ListenAddresses() {
		if p, err := a.ValueForProtocol(ma.P_TCP); err == nil {
			return p
		}
	}
	for _, s := range n.cfg.Listen {
		if i := strings.Index(s, "/tcp/"); i >= 0 {
			p := strings.SplitN(s[i+5:], "/", 2)[0]
			if _, err := net.LookupPort("tcp", p); err == nil {
				return p
			}
		}
	}
	return "4001"
}
