package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
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
			relayed = relayed || n.reserved(a)
		} else if manet.IsPublicAddr(a) {
			anyPublic = true
		}
	}
	forced := n.cfg.ReachabilitySetting() == ReachabilityPublic
	switch {
	case r == network.ReachabilityPublic && forced && !anyPublic && localSwarm(n.boot):
		return api.ReachLocal, "set public (--reachability public) in a local swarm: loopback/private addresses only, reachable by peers on this machine or LAN"
	case r == network.ReachabilityPublic && forced && !anyPublic:
		return api.ReachPublic, "set public by --reachability, but no public address is known yet: check --announce and the port forward of TCP and UDP port " + port
	case r == network.ReachabilityPublic && forced:
		return api.ReachPublic, "set public by --reachability: other peers dial this node directly; it relays for peers behind NAT when the relay service is on"
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

// reserved reports whether this node holds a reservation at the relay of
// the circuit address a (the relay client protects the connection to each
// relay it holds one at). A route advertised through a bootstrap relay
// (advertisedAddrs) counts only once the reservation is there.
func (n *Node) reserved(a ma.Multiaddr) bool {
	relayPart, _ := ma.SplitFunc(a, func(c ma.Component) bool { return c.Protocol().Code == ma.P_CIRCUIT })
	_, id := peer.SplitAddr(relayPart)
	return id != "" && n.host.ConnManager().IsProtected(id, "autorelay")
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

// publicSwarm reports whether this node's addresses go on a public DHT,
// where only public addresses are of use to anyone: a volunteer whose
// bootstrap peers have public addresses, or a bootstrap node that has a
// public address itself. Otherwise the swarm is local (one machine or one
// LAN) and private addresses are exactly what its peers dial.
func (n *Node) publicSwarm() bool {
	if n.cfg.Role == RoleNode {
		return !localSwarm(n.boot)
	}
	if n.host == nil {
		return false
	}
	for _, a := range n.host.Addrs() {
		if manet.IsPublicAddr(a) {
			return true
		}
	}
	return false
}

// dhtAddrFilter keeps loopback and private addresses off a public DHT:
// they are neither put in this node's provider records nor taken from
// other peers' records into the peerstore (dialling them only fails, or
// reaches the wrong machine). Relay addresses are kept when the relay's
// own address is public. In a local swarm every address is kept.
func (n *Node) dhtAddrFilter(addrs []ma.Multiaddr) []ma.Multiaddr {
	if !n.publicSwarm() {
		return addrs
	}
	out := make([]ma.Multiaddr, 0, len(addrs))
	for _, a := range addrs {
		if manet.IsPublicAddr(a) {
			out = append(out, a)
		}
	}
	return out
}

// relayedAddrsVia returns, for peer p, circuit addresses through each
// bootstrap node (they run the relay service): volunteers behind NAT hold
// reservations there, so a peer whose provider record has no usable
// address (AutoNAT has not yet found it private, so its own relay
// addresses are not advertised) is still dialled through the relay.
func relayedAddrsVia(boot []peer.AddrInfo, self, p peer.ID) []ma.Multiaddr {
	var out []ma.Multiaddr
	for _, r := range boot {
		if r.ID == p || r.ID == self {
			continue
		}
		circuit, err := ma.NewMultiaddr("/p2p/" + r.ID.String() + "/p2p-circuit")
		if err != nil {
			continue
		}
		for _, a := range r.Addrs {
			out = append(out, a.Encapsulate(circuit))
		}
	}
	return out
}

// addRelayRoutes adds relayedAddrsVia to p's addresses in the peerstore.
// The dial ranker tries them after every direct address, so they cost
// nothing where a direct dial works. (The relay client advertises circuit
// addresses only through relays with public addresses, and only once
// AutoNAT has found this node private; these routes need neither.)
func (n *Node) addRelayRoutes(p peer.ID) {
	if n.cfg.Role != RoleNode {
		return
	}
	if addrs := relayedAddrsVia(n.boot, n.host.ID(), p); len(addrs) > 0 {
		n.host.Peerstore().AddAddrs(p, addrs, 10*time.Minute)
	}
}

// startRelaySearch makes a volunteer that must find out its reachability
// (auto, in a swarm with public bootstrap nodes) look for relay
// reservations at once: the relay client starts on a reachability event,
// and AutoNAT's first verdict comes 15 s after start at the earliest (a
// minute behind a router that drops the dial-back silently). The event
// says "unknown", which it is; AutoNAT's verdicts follow as usual, and a
// public verdict stops the relay client again.
func (n *Node) startRelaySearch() {
	if n.cfg.Role != RoleNode || n.cfg.ReachabilitySetting() != ReachabilityAuto || !n.publicSwarm() {
		return
	}
	em, err := n.host.EventBus().Emitter(new(event.EvtLocalReachabilityChanged), eventbus.Stateful)
	if err != nil {
		n.log.Debug("cannot start the relay client early", "err", err)
		return
	}
	defer em.Close()
	n.reachMu.Lock()
	unknown := n.reach == network.ReachabilityUnknown
	n.reachMu.Unlock()
	if unknown {
		_ = em.Emit(event.EvtLocalReachabilityChanged{Reachability: network.ReachabilityUnknown})
	}
}

// Connection kinds of a peer, in status (api.Peer.Connection).
const (
	ConnDirect        = "direct"         // a direct connection (TCP or QUIC, dialled or hole-punched)
	ConnTrainingRelay = "training-relay" // through a training relay of the run: training passes, within its budgets
	ConnRelayed       = "relayed"        // only through another relay: no training traffic
	ConnUnreachable   = "unreachable"    // no connection: neither direct nor through a relay
)

// connection says how this node is connected to p right now.
func (n *Node) connection(p peer.ID) string {
	kind := ConnUnreachable
	for _, c := range n.host.Network().ConnsToPeer(p) {
		a := c.RemoteMultiaddr()
		switch {
		case !isRelayAddr(a) && !c.Stat().Limited:
			return ConnDirect
		case isRelayAddr(a) && n.isTrainingRelay(relayOf(a)):
			kind = ConnTrainingRelay
		case kind == ConnUnreachable:
			kind = ConnRelayed
		}
	}
	return kind
}

// directWait bounds how long a training stream waits for a direct
// connection to a peer reachable only through a relay: hole punching
// takes about a round trip once the relayed connection is up, and a
// second attempt follows a failed first one within seconds.
var directWait = 15 * time.Second

// punchFailedFor is how long a peer that failed to punch within
// directWait counts as such: its training streams go through a training
// relay at once, or fail at once without one, and its relayed connections
// go only through training relays. Using the training relay renews it.
const punchFailedFor = 10 * time.Minute

// ErrRelayedOnly is returned for a training stream to a peer reachable
// only through a relay when no direct connection came within directWait
// and no training relay could carry it.
var ErrRelayedOnly = errors.New("reachable only through a relay (hole punching failed)")

// waitDirect returns at once when p has a direct connection (or none at
// all: the dial that follows decides); with only relayed ones it waits up
// to directWait for hole punching to bring a direct one, and fails with
// ErrRelayedOnly, at once for a peer that failed to punch lately.
func (n *Node) waitDirect(ctx context.Context, p peer.ID) error {
	switch n.connection(p) {
	case ConnDirect, ConnUnreachable:
		return nil
	}
	if n.nat.punchFailed(p, time.Now()) {
		return n.relayedOnly(p, 0)
	}
	ctx, cancel := context.WithTimeout(ctx, directWait)
	defer cancel()
	sub, err := n.host.EventBus().Subscribe(new(event.EvtPeerConnectednessChanged))
	if err != nil {
		return err
	}
	defer sub.Close()
	for {
		switch n.connection(p) {
		case ConnDirect, ConnUnreachable:
			return nil
		}
		select {
		case <-ctx.Done():
			n.nat.markPunchFailed(p, time.Now())
			return n.relayedOnly(p, directWait)
		case <-sub.Out():
		}
	}
}

func (n *Node) relayedOnly(p peer.ID, waited time.Duration) error {
	return fmt.Errorf("training stream to %s: %w: no direct connection (waited %v) and no training relay; "+
		"the peer or this node should forward TCP and UDP port %s or run with a public address (--announce), "+
		"or a volunteer with a public address can run a training relay (swarm node --relay-training)",
		p, ErrRelayedOnly, waited, n.listenPort())
}

// noteRelayedOnly logs, once per peer and hour, that a run peer is
// reachable only through a relay, with what to do.
func (n *Node) noteRelayedOnly(p peer.ID) {
	if !n.nat.once(p, time.Now()) {
		return
	}
	verdict, _ := n.reachability()
	n.log.Warn("run peer reachable only through a relay: training with it stalls until a direct connection exists",
		"peer", p, "this_node", verdict, "waited", directWait,
		"advice", fmt.Sprintf("forward TCP and UDP port %s on your router to this machine (or --port-mapping for UPnP), "+
			"or run on a machine with a public address, or have a volunteer with a public address run a training relay "+
			"(swarm node --relay-training); `swarm status` shows each peer's connection", n.listenPort()))
}

// natState is what the node remembers of its peers' connectivity: when it
// last logged a peer reachable only through a relay, which peers failed to
// punch, and which run candidates it could not connect to.
type natState struct {
	mu     sync.Mutex
	logged map[peer.ID]time.Time
	failed map[peer.ID]dialFailure // run candidates this node could not connect to
	punch  map[peer.ID]time.Time   // peers that failed to punch a direct connection, and when
	via    map[peer.ID]time.Time   // peers logged training through a training relay, and when
}

// markPunchFailed records that p failed to punch a direct connection (or
// still needs the training relay) at now.
func (s *natState) markPunchFailed(p peer.ID, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.punch == nil || len(s.punch) >= maxFailed {
		s.punch = make(map[peer.ID]time.Time)
	}
	s.punch[p] = now
}

// punchFailed reports whether p failed to punch within punchFailedFor.
func (s *natState) punchFailed(p peer.ID, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.punch[p]
	return ok && now.Sub(t) < punchFailedFor
}

type dialFailure struct {
	at  time.Time
	err string
}

// unreachableFor is how long a failed run candidate is listed as
// unreachable in status after its last failed dial.
const unreachableFor = 2 * time.Minute

// dialFailed records that the run candidate p could not be connected to.
func (s *natState) dialFailed(p peer.ID, err error, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed == nil || len(s.failed) >= maxFailed {
		s.failed = make(map[peer.ID]dialFailure)
	}
	s.failed[p] = dialFailure{at: now, err: truncate(err.Error(), 300)}
}

// connected forgets p's failed dials.
func (s *natState) connected(p peer.ID) {
	s.mu.Lock()
	delete(s.failed, p)
	s.mu.Unlock()
}

// unreachableRunPeers lists the run candidates this node failed to connect
// to within unreachableFor and is still not connected to.
func (n *Node) unreachableRunPeers() []api.Peer {
	now := time.Now()
	n.nat.mu.Lock()
	var out []api.Peer
	for p, f := range n.nat.failed {
		if now.Sub(f.at) > unreachableFor {
			delete(n.nat.failed, p)
			continue
		}
		if n.connection(p) != ConnUnreachable {
			continue
		}
		out = append(out, api.Peer{PeerID: p.String(), Addrs: []string{}, Connection: ConnUnreachable, Error: f.err})
	}
	n.nat.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].PeerID < out[j].PeerID })
	return out
}

// once reports whether p was not logged within the last hour, and marks it
// logged at now (at most maxFailed peers remembered).
func (s *natState) once(p peer.ID, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.logged[p]; ok && now.Sub(t) < time.Hour {
		return false
	}
	if s.logged == nil || len(s.logged) >= maxFailed {
		s.logged = make(map[peer.ID]time.Time)
	}
	s.logged[p] = now
	return true
}
