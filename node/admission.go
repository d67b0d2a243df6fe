package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/swarm-train/swarm/node/api"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/progress"
)

// Admission is the run's admission policy as the node enforces it. The
// zero value is an open run: anyone who completes the run hello is a run
// peer. In a token run Verify checks a peer's token (run.Manifest's
// VerifyToken) and Token is this node's own. A private run is enforced by
// the swarm key below the hello (Config.SwarmKeyFile): strangers cannot
// complete a connection at all.
type Admission struct {
	Mode string // run.AdmitOpen (also when empty), run.AdmitToken or run.AdmitPrivate
	// Token is this node's admission token (token runs).
	Token string
	// Verify checks a token presented by peer p at now and returns when it
	// expires (token runs; nil otherwise).
	Verify func(token string, p peer.ID, now time.Time) (expires time.Time, err error)
}

// refusal codes of the run hello, also the reason label of
// swarm_security_refusals_total{protocol="/swarm/run-hello/..."}.
const (
	refuseTokenMissing  = "token-missing"
	refuseTokenExpired  = "token-expired"
	refuseTokenForged   = "token-forged"
	refuseTokenOtherRun = "token-other-run"
	refuseTokenPeer     = "token-other-peer"
	refuseTokenBad      = "token-malformed"
	refuseMalformed     = "malformed"
	refuseNotAdmitted   = "not-admitted"
	refuseBanned        = "banned"
)

// tokenReason maps a token error to its refusal code.
func tokenReason(err error) string {
	switch {
	case errors.Is(err, run.ErrTokenExpired):
		return refuseTokenExpired
	case errors.Is(err, run.ErrTokenForged):
		return refuseTokenForged
	case errors.Is(err, run.ErrTokenOtherRun):
		return refuseTokenOtherRun
	case errors.Is(err, run.ErrTokenOtherPeer):
		return refuseTokenPeer
	}
	return refuseTokenBad
}

// admit decides whether the peer p that sent h may take part in this run.
// It returns when the admission ends (zero: never) or the refusal code and
// the error behind it. A hello for another run is refused with "other-run"
// and no error to count: stale DHT records lead there honestly.
func (m *membership) admit(p peer.ID, h hello, now time.Time) (expires time.Time, reason string, err error) {
	if !h.Run.Equals(m.runID) {
		return time.Time{}, "other-run", nil
	}
	if m.n.cfg.Admission.Mode != run.AdmitToken {
		return time.Time{}, "", nil
	}
	if h.Token == "" {
		return time.Time{}, refuseTokenMissing, errors.New("no admission token in the hello")
	}
	exp, err := m.n.cfg.Admission.Verify(h.Token, p, now)
	if err != nil {
		return time.Time{}, tokenReason(err), err
	}
	return exp, "", nil
}

// admitted reports whether p passed the hello and its admission has not
// expired.
func (m *membership) admitted(p peer.ID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	exp, ok := m.peers[p]
	return ok && (exp.IsZero() || time.Now().Before(exp))
}

// pending returns channels closed when the hellos with p under way end
// (ours and theirs), none when there are none.
func (m *membership) pending(p peer.ID) []chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []chan struct{}
	if c, ok := m.inflight[p]; ok {
		out = append(out, c)
	}
	return append(out, m.listening[p]...)
}

// ensure makes sure p is an admitted run peer, running the hello with it
// first when it is not (one hello per peer at a time).
func (m *membership) ensure(ctx context.Context, p peer.ID) error {
	if m.admitted(p) {
		return nil
	}
	if m.n.refusals.Banned(p) {
		return fmt.Errorf("peer %s is refused for a while after repeated bad input", p)
	}
	if err := m.verify(ctx, m.n.host.Peerstore().PeerInfo(p)); err != nil {
		m.drop(p)
		return fmt.Errorf("run hello with %s: %w", p, err)
	}
	return nil
}

// ensureLinked is ensure for the progress topic's router, which opens one
// stream to a peer when the connection comes up and, if that fails, never
// tries again while the connection lasts: this node would then send the
// peer nothing, and if the peer's stream to us fails the same way, hear
// nothing of it but what other peers forward (an honest node cut off from
// a shard's holders once it banned the liar that relayed their records).
// A hello that fails while the peer stays linked (its run not started yet,
// a hello under way on a connection that closed) is tried again, with
// backoff, for up to linkRetry; one that answered against admission, a
// banned peer, one that left, and one whose protocols are known and lack
// the run's are not.
func (m *membership) ensureLinked(ctx context.Context, p peer.ID) error {
	wait := 250 * time.Millisecond
	until := time.Now().Add(linkRetry)
	for {
		err := m.ensure(ctx, p)
		if err == nil || errors.Is(err, errHelloAnswered) || m.n.refusals.Banned(p) || !linked(m.n.host.Network().Connectedness(p)) || time.Now().After(until) {
			return err
		}
		if protos, perr := m.n.host.Peerstore().GetProtocols(p); perr == nil && len(protos) > 0 && !slices.ContainsFunc(protos, progress.IsProtocol) {
			return err // identified: not a peer of any run's progress topic
		}
		m.n.log.Debug("run hello for the progress topic failed; trying again", "peer", p, "in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, 8*time.Second)
	}
}

// gate wraps a training protocol's handler: a stream from a peer that has
// not passed the run hello (or whose admission expired, or that is banned)
// is reset before the handler reads a byte, and the refusal is counted. A
// peer whose own hello with us is still under way is waited for briefly:
// the listener side of a hello admits the dialer before it answers, but the
// dialer learns the answer a moment after the listener may start talking.
func (m *membership) gate(proto protocol.ID, h network.StreamHandler) network.StreamHandler {
	return func(s network.Stream) {
		p := s.Conn().RemotePeer()
		if m.n.refusals.Banned(p) {
			m.n.refusals.Refuse(p, string(proto), refuseBanned, errors.New("stream from a banned peer"))
			_ = s.Reset()
			return
		}
		if !m.admitted(p) {
			deadline := time.After(helloTimeout)
		wait:
			for _, c := range m.pending(p) {
				select {
				case <-c:
				case <-deadline:
					break wait
				}
			}
		}
		if !m.admitted(p) {
			m.n.refusals.Refuse(p, string(proto), refuseNotAdmitted,
				errors.New("stream from a peer that has not passed this run's hello"))
			_ = s.Reset()
			return
		}
		if !relayable([]protocol.ID{proto}) && !m.n.carriesTraining(s.Conn()) {
			// Training traffic goes direct or through a training relay,
			// never through another relay's limited circuit.
			m.n.log.Debug("training stream over a relay that is not a training relay refused",
				"peer", p, "protocol", proto, "conn", s.Conn().RemoteMultiaddr())
			_ = s.Reset()
			return
		}
		h(m.n.limitUpload(s))
	}
}

// gatedHost is the host the training service sees: every handler it
// registers goes through the membership's gate, and every stream it opens
// goes to an admitted peer (running the hello first when needed). It is the
// one place where admission is enforced for the training protocols.
type gatedHost struct {
	host.Host
	m *membership
}

func (g gatedHost) SetStreamHandler(pid protocol.ID, h network.StreamHandler) {
	g.Host.SetStreamHandler(pid, g.m.gate(pid, h))
}

func (g gatedHost) SetStreamHandlerMatch(pid protocol.ID, match func(protocol.ID) bool, h network.StreamHandler) {
	g.Host.SetStreamHandlerMatch(pid, match, g.m.gate(pid, h))
}

// NewStream runs the run hello with p first when needed (over a relayed
// connection if that is all there is). Progress records may then go over a
// relayed connection too; every other training protocol (pipeline, state
// sync, averaging) moves bulk data and waits, at most directWait, for a
// direct connection (hole punching), then goes through a training relay of
// the run, or fails with ErrRelayedOnly when there is none.
func (g gatedHost) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	if relayable(pids) {
		if err := g.m.ensureLinked(network.WithAllowLimitedConn(ctx, "run hello"), p); err != nil {
			return nil, err
		}
		s, err := g.Host.NewStream(network.WithAllowLimitedConn(ctx, "progress records"), p, pids...)
		return g.m.n.limitUpload(s), err
	}
	if err := g.m.ensure(network.WithAllowLimitedConn(ctx, "run hello"), p); err != nil {
		return nil, err
	}
	s, err := g.m.n.trainingStream(ctx, p, pids...)
	return g.m.n.limitUpload(s), err
}

// CanTrainWith reports whether this node can train with the peer (its
// string form) now: it is not blocked (TrainingLink). The trainer's shard
// claims consult it (swarm/claims.Reacher).
func (g gatedHost) CanTrainWith(id string) bool {
	p, err := peer.Decode(id)
	return err != nil || !g.m.n.TrainingLink(p).Blocked
}

// relayable reports whether every protocol asked for may use a relayed
// connection: only progress records, small and rare, within the relays'
// limits (relayData).
func relayable(pids []protocol.ID) bool {
	for _, pid := range pids {
		if !progress.IsProtocol(pid) {
			return false
		}
	}
	return len(pids) > 0
}

// RunHost returns the host that run services (training) must use: handlers
// registered on it serve only admitted run peers, and streams opened on it
// reach only admitted run peers. On a bootstrap node it is the plain host.
func (n *Node) RunHost() host.Host {
	if n.runs == nil {
		return n.host
	}
	return gatedHost{Host: n.host, m: n.runs}
}

// banGater refuses connections from and to peers the node has banned for
// repeated bad input, and relayed connections to a peer that failed to
// punch through relays other than training relays (relayAllowed).
type banGater struct{ n *Node }

func (g banGater) InterceptPeerDial(p peer.ID) bool { return !g.n.refusals.Banned(p) }
func (g banGater) InterceptAddrDial(p peer.ID, a ma.Multiaddr) bool {
	return !g.n.refusals.Banned(p) && g.n.relayAllowed(p, a)
}
func (g banGater) InterceptAccept(network.ConnMultiaddrs) bool { return true }
func (g banGater) InterceptSecured(_ network.Direction, p peer.ID, cm network.ConnMultiaddrs) bool {
	return !g.n.refusals.Banned(p) && g.n.relayAllowed(p, cm.RemoteMultiaddr())
}
func (g banGater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }

// admissionState is what status shows of this node's own admission.
type admissionState struct {
	mu        sync.Mutex
	refusedBy peer.ID
	reason    string
	at        time.Time
}

func (a *admissionState) set(p peer.ID, reason string) {
	a.mu.Lock()
	a.refusedBy, a.reason, a.at = p, reason, time.Now()
	a.mu.Unlock()
}

// security is the status answer's security field.
func (n *Node) security() *api.Security {
	sum := n.refusals.Summary()
	sec := &api.Security{Admission: run.AdmitOpen, Refusals: []api.Refusal{}, Offenders: sum.Offenders, Banned: sum.Banned}
	for _, c := range sum.Refusals {
		sec.Refusals = append(sec.Refusals, api.Refusal{Protocol: c.Protocol, Reason: c.Reason, Count: c.Count})
	}
	if n.psk != nil {
		sec.Admission = run.AdmitPrivate
	}
	if m := n.cfg.Admission.Mode; m != "" {
		sec.Admission = m
	}
	if n.runs == nil {
		if len(sec.Refusals) == 0 && n.psk == nil {
			return nil
		}
		return sec
	}
	if sec.Admission == run.AdmitToken && n.cfg.Admission.Verify != nil {
		if tk, err := run.ParseToken(n.cfg.Admission.Token); err == nil {
			sec.TokenExpires = tk.Expires.UTC().Format(time.RFC3339)
		}
	}
	n.runs.own.mu.Lock()
	if n.runs.own.reason != "" {
		sec.AdmissionRefused = fmt.Sprintf("%s (by %s at %s); %s", n.runs.own.reason, n.runs.own.refusedBy,
			n.runs.own.at.UTC().Format(time.RFC3339), admissionHelp(n.runs.own.reason))
	}
	n.runs.own.mu.Unlock()
	return sec
}
