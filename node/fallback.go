package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	ma "github.com/multiformats/go-multiaddr"
)

// The fallback when hole punching fails: training streams go through a
// training relay of the run (a volunteer with a public address and
// relay_training, trainrelay.go). A volunteer that is not public holds a
// reservation at each training relay it knows, so that its run peers can
// reach it through one; a training stream to a peer that did not punch
// within directWait moves to a circuit through a training relay, and that
// peer's relayed connections then go through training relays only.

// Reservation upkeep at training relays.
const (
	trainRelayCheck      = 5 * time.Second // how often reservations are checked
	trainRelayRenew      = time.Minute     // a reservation older than this is renewed
	trainRelayMaxReserve = 2               // training relays one node reserves at
	trainRelayProtectTag = "swarm-training-relay"
)

// relayOf returns the relay's peer ID in a circuit address, "" when a is
// not one.
func relayOf(a ma.Multiaddr) peer.ID {
	relayPart, rest := ma.SplitFunc(a, func(c ma.Component) bool { return c.Protocol().Code == ma.P_CIRCUIT })
	if len(rest) == 0 {
		return ""
	}
	_, id := peer.SplitAddr(relayPart)
	return id
}

// isTrainingRelay reports whether r is a training relay of this node's
// run: an admitted run peer that serves TrainingRelayProtocol.
func (n *Node) isTrainingRelay(r peer.ID) bool {
	if n.runs == nil || r == "" || n.host == nil || r == n.host.ID() || !n.runs.admitted(r) {
		return false
	}
	ok, _ := n.host.Peerstore().SupportsProtocols(r, TrainingRelayProtocol)
	return len(ok) > 0
}

// trainingRelays lists the training relays this node is directly
// connected to, but not except (a peer never relays to itself).
func (n *Node) trainingRelays(except peer.ID) []peer.AddrInfo {
	var out []peer.AddrInfo
	for _, ai := range n.RunPeers() {
		if ai.ID != except && n.isTrainingRelay(ai.ID) && n.connection(ai.ID) == ConnDirect {
			out = append(out, ai)
		}
	}
	return out
}

// carriesTraining reports whether c may carry training traffic: a direct
// connection, or a circuit through a training relay of the run.
func (n *Node) carriesTraining(c network.Conn) bool {
	a := c.RemoteMultiaddr()
	if !isRelayAddr(a) {
		return !c.Stat().Limited
	}
	return n.isTrainingRelay(relayOf(a))
}

// relayAllowed is the connection gater's rule for relayed connections: a
// peer that failed to punch is reached only through training relays while
// there is one (its training must not land on a relay that will not carry
// it); every other connection is allowed.
func (n *Node) relayAllowed(p peer.ID, a ma.Multiaddr) bool {
	if a == nil || !isRelayAddr(a) || !n.nat.punchFailed(p, time.Now()) || n.isTrainingRelay(relayOf(a)) {
		return true
	}
	return len(n.trainingRelays(p)) == 0
}

// trainingStream opens a stream of a training protocol (not progress
// records) to p: over a direct connection when there is one or hole
// punching brings one within directWait, else through a training relay.
func (n *Node) trainingStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	err := n.waitDirect(ctx, p)
	if err == nil {
		s, err := n.host.NewStream(ctx, p, pids...)
		if err != nil {
			return nil, err
		}
		if n.carriesTraining(s.Conn()) {
			return s, nil
		}
		// The caller allowed limited connections and a dial found only a
		// relay that does not carry training.
		_ = s.Reset()
		err = n.relayedOnly(p, 0)
	}
	if !errors.Is(err, ErrRelayedOnly) {
		return nil, err
	}
	return n.viaTrainingRelay(ctx, p, err, pids)
}

// viaTrainingRelay opens a training stream to p, which failed to punch,
// through a training relay: on a circuit through one that exists, or on a
// new one, after closing p's circuits through other relays (libp2p reuses
// any open connection to a peer rather than dial another).
func (n *Node) viaTrainingRelay(ctx context.Context, p peer.ID, cause error, pids []protocol.ID) (network.Stream, error) {
	relays := n.trainingRelays(p)
	if len(relays) == 0 {
		n.noteRelayedOnly(p)
		return nil, cause
	}
	n.nat.markPunchFailed(p, time.Now())
	if n.connection(p) != ConnTrainingRelay {
		for _, c := range n.host.Network().ConnsToPeer(p) {
			if isRelayAddr(c.RemoteMultiaddr()) && !n.carriesTraining(c) {
				_ = c.Close()
			}
		}
		n.host.Peerstore().AddAddrs(p, relayedAddrsVia(relays, n.host.ID(), p), 10*time.Minute)
	}
	s, err := n.host.NewStream(network.WithAllowLimitedConn(ctx, "training relay"), p, pids...)
	if err != nil {
		return nil, fmt.Errorf("training stream to %s through a training relay: %w (%w)", p, err, cause)
	}
	if !n.carriesTraining(s.Conn()) {
		_ = s.Reset()
		return nil, fmt.Errorf("training stream to %s: the connection went through %s, not a training relay: %w",
			p, s.Conn().RemoteMultiaddr(), cause)
	}
	n.metrics.streamsRelayed.Inc()
	if isRelayAddr(s.Conn().RemoteMultiaddr()) && n.nat.onceVia(p, time.Now()) {
		n.log.Info("training with a run peer through a training relay (hole punching failed)",
			"peer", p, "relay", relayOf(s.Conn().RemoteMultiaddr()))
	}
	return s, nil
}

// onceVia reports whether p was not logged training through a relay
// within the last hour, and marks it logged at now.
func (s *natState) onceVia(p peer.ID, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.via[p]; ok && now.Sub(t) < time.Hour {
		return false
	}
	if s.via == nil || len(s.via) >= maxFailed {
		s.via = make(map[peer.ID]time.Time)
	}
	s.via[p] = now
	return true
}

// keepTrainingReservations holds a reservation at up to
// trainRelayMaxReserve training relays of the run while this node is not
// publicly reachable, renewing each every trainRelayRenew and at once on a
// new connection to the relay (a relay forgets the reservations of peers
// that disconnect).
func (n *Node) keepTrainingReservations(ctx context.Context) {
	type held struct {
		at   time.Time
		conn string // the connection it was made on
	}
	reserved := map[peer.ID]held{}
	tick := time.NewTicker(trainRelayCheck)
	defer tick.Stop()
	for {
		n.reachMu.Lock()
		public := n.reach == network.ReachabilityPublic
		n.reachMu.Unlock()
		if !public {
			relays := n.trainingRelays("")
			keep := map[peer.ID]held{}
			for i, ai := range relays {
				if i >= trainRelayMaxReserve {
					break
				}
				conn := ""
				for _, c := range n.host.Network().ConnsToPeer(ai.ID) {
					if !isRelayAddr(c.RemoteMultiaddr()) {
						conn = c.ID()
						break
					}
				}
				h, ok := reserved[ai.ID]
				if ok && h.conn == conn && time.Since(h.at) < trainRelayRenew {
					keep[ai.ID] = h
					continue
				}
				rctx, cancel := context.WithTimeout(ctx, dialTimeout)
				_, err := client.Reserve(rctx, n.host, ai)
				cancel()
				if err != nil {
					n.log.Debug("no reservation at a training relay", "relay", ai.ID, "err", err)
					continue
				}
				if !ok {
					n.log.Info("reserved a slot at a training relay: run peers that cannot punch through to this node train through it",
						"relay", ai.ID)
				}
				n.host.ConnManager().Protect(ai.ID, trainRelayProtectTag)
				keep[ai.ID] = held{at: time.Now(), conn: conn}
			}
			for r := range reserved {
				if _, ok := keep[r]; !ok {
					n.host.ConnManager().Unprotect(r, trainRelayProtectTag)
				}
			}
			reserved = keep
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Link is how this node can train with a run peer.
type Link struct {
	// Connection is ConnDirect, ConnTrainingRelay, ConnRelayed or
	// ConnUnreachable.
	Connection string
	// Blocked is true when training with the peer cannot go on: it failed
	// to punch a direct connection and no training relay carries it, or
	// this node failed to connect to it at all.
	Blocked bool
	// Why says what blocks it.
	Why string
}

// TrainingLink says how this node can train with p right now.
func (n *Node) TrainingLink(p peer.ID) Link {
	l := Link{Connection: n.connection(p)}
	now := time.Now()
	switch l.Connection {
	case ConnRelayed:
		if n.nat.punchFailed(p, now) && len(n.trainingRelays(p)) == 0 {
			l.Blocked, l.Why = true, "hole punching failed and no training relay of the run is reachable"
		}
	case ConnUnreachable:
		n.nat.mu.Lock()
		f, ok := n.nat.failed[p]
		n.nat.mu.Unlock()
		if ok && now.Sub(f.at) < unreachableFor {
			l.Blocked, l.Why = true, "cannot connect: "+f.err
		}
	}
	return l
}

// ConnectivityAdvice is what a volunteer can do when peers cannot reach
// each other.
func (n *Node) ConnectivityAdvice() string {
	return fmt.Sprintf("forward TCP and UDP port %s on the router to this machine (or --port-mapping for UPnP, "+
		"--announce for a public address the machine cannot see), or have a volunteer with a public address "+
		"run a training relay (swarm node --relay-training)", n.listenPort())
}
