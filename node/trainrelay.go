package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/swarm-train/swarm/node/api"
)

// TrainingRelayProtocol is served by training relays (relay_training): a
// peer that is a member of this node's run and speaks it relays training
// traffic for the run's peers. A stream on it answers the relay's offer
// (relayOffer) and closes.
const TrainingRelayProtocol protocol.ID = "/swarm/training-relay/1.0.0"

// Training relay limits beside the volunteer's budgets. Circuits last an
// hour (the peers open another, the training streams on it fail once);
// reservations are bounded per peer (one, renewals replace it), per IP
// address and in all; circuits per peer bound a peer's fan-out.
const (
	trainRelayDuration        = time.Hour
	trainRelayBuffer          = 64 << 10 // bytes a circuit moves per read
	trainRelayMaxReservations = 128
	trainRelayMaxPerIP        = 4
	trainRelayMaxPerASN       = 16
	trainRelayMaxCircuits     = 16
)

// relayOffer is what a training relay answers on TrainingRelayProtocol.
type relayOffer struct {
	Run       string  `json:"run"`
	Mbps      float64 `json:"mbps"`
	GBPerDay  float64 `json:"gb_per_day"`
	CircuitMB int     `json:"circuit_mb"`
	Spent     bool    `json:"spent"` // today's budget is used up
}

// Errors a training relay's circuit ends with.
var (
	errCircuitBudget = errors.New("training relay: circuit over its data budget")
	errDailyBudget   = errors.New("training relay: daily budget spent")
)

// trainingRelay is a circuit relay v2 (go-libp2p's) for the run's peers,
// with the volunteer's budgets: every byte it reads from a circuit's
// streams is counted against the circuit's budget and the day's, and
// paced to the rate. Only admitted run peers may reserve or connect.
type trainingRelay struct {
	n       *Node
	ctx     context.Context
	cancel  context.CancelFunc
	relay   *relayv2.Relay
	circuit int64 // bytes per circuit and direction
	now     func() time.Time

	mu          sync.Mutex
	budget      *relayBudget
	spentLogged time.Time // the day the spent budget was logged
}

func startTrainingRelay(n *Node) (*trainingRelay, error) {
	r := &trainingRelay{
		n:       n,
		circuit: int64(n.cfg.RelayCircuitMB) << 20,
		budget:  newRelayBudget(n.cfg.RelayMbps, n.cfg.RelayGBPerDay, trainRelayBuffer),
		now:     time.Now,
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	res := relayv2.DefaultResources()
	res.ReservationTTL = time.Hour
	res.MaxReservations = trainRelayMaxReservations
	res.MaxReservationsPerPeer = 1
	res.MaxReservationsPerIP = trainRelayMaxPerIP
	res.MaxReservationsPerASN = trainRelayMaxPerASN
	res.MaxCircuits = trainRelayMaxCircuits
	res.BufferSize = trainRelayBuffer
	// libp2p's own data limit sits above ours, so that ours closes the
	// circuit first, and says so.
	res.Limit = &relayv2.RelayLimit{Duration: trainRelayDuration, Data: r.circuit + 1<<20}
	relay, err := relayv2.New(meteredHost{Host: n.host, r: r}, relayv2.WithResources(res), relayv2.WithACL(r))
	if err != nil {
		r.cancel()
		return nil, fmt.Errorf("training relay: %w", err)
	}
	r.relay = relay
	n.host.SetStreamHandler(TrainingRelayProtocol, r.handleOffer)
	n.log.Info("training relay on: run peers that cannot punch a direct connection may train through this node",
		"mbps", n.cfg.RelayMbps, "gb_per_day", n.cfg.RelayGBPerDay, "circuit_mb", n.cfg.RelayCircuitMB)
	if n.cfg.ReachabilitySetting() != ReachabilityPublic {
		n.log.Warn("training relay on a node whose reachability is not set public: it relays only once peers can dial it",
			"advice", "run it on a machine with a public address or a port forward of TCP and UDP port "+n.listenPort()+", with --reachability public")
	}
	return r, nil
}

// Close stops the relay (idempotent).
func (r *trainingRelay) Close() {
	r.n.host.RemoveStreamHandler(TrainingRelayProtocol)
	r.cancel()
	_ = r.relay.Close()
}

func (r *trainingRelay) offer() relayOffer {
	r.mu.Lock()
	spent, _ := r.budget.spent(r.now())
	r.mu.Unlock()
	return relayOffer{Run: r.n.runIDString(), Mbps: r.n.cfg.RelayMbps, GBPerDay: r.n.cfg.RelayGBPerDay,
		CircuitMB: r.n.cfg.RelayCircuitMB, Spent: spent}
}

func (r *trainingRelay) handleOffer(s network.Stream) {
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(helloTimeout))
	_ = json.NewEncoder(s).Encode(r.offer())
}

// status is the training relay part of the status answer.
func (r *trainingRelay) status() *api.TrainingRelay {
	r.mu.Lock()
	now := r.now()
	spent, until := r.budget.spent(now)
	used := r.budget.usedToday(now)
	r.mu.Unlock()
	st := &api.TrainingRelay{Mbps: r.n.cfg.RelayMbps, GBPerDay: r.n.cfg.RelayGBPerDay,
		CircuitMB: r.n.cfg.RelayCircuitMB, UsedTodayBytes: used, Spent: spent}
	if spent {
		st.SpentUntil = until.Format(time.RFC3339)
	}
	return st
}

// AllowReserve implements relayv2.ACLFilter: only admitted run peers
// hold reservations (libp2p bounds them per peer, IP and in all).
func (r *trainingRelay) AllowReserve(p peer.ID, _ ma.Multiaddr) bool {
	if !r.n.runs.admitted(p) {
		r.n.metrics.relayRefused.WithLabelValues("not-run-peer").Inc()
		r.n.log.Debug("training relay: reservation refused: not a peer of this run", "peer", p)
		return false
	}
	return true
}

// AllowConnect implements relayv2.ACLFilter: circuits between admitted
// run peers, while today's budget lasts.
func (r *trainingRelay) AllowConnect(src peer.ID, _ ma.Multiaddr, dest peer.ID) bool {
	if !r.n.runs.admitted(src) || !r.n.runs.admitted(dest) {
		r.n.metrics.relayRefused.WithLabelValues("not-run-peer").Inc()
		r.n.log.Debug("training relay: circuit refused: not between peers of this run", "from", src, "to", dest)
		return false
	}
	r.mu.Lock()
	spent, until := r.budget.spent(r.now())
	r.mu.Unlock()
	if spent {
		r.n.metrics.relayRefused.WithLabelValues("daily-budget").Inc()
		r.logSpent(until)
		return false
	}
	return true
}

// take counts n bytes relayed now against the budget and paces the
// caller to the rate; it reports whether the day's budget ran out.
func (r *trainingRelay) take(n int) (over bool) {
	r.n.metrics.relayBytes.Add(float64(n))
	r.mu.Lock()
	wait, over := r.budget.take(n, r.now())
	r.mu.Unlock()
	if over || wait <= 0 {
		return over
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.ctx.Done():
	}
	return false
}

// closed counts and logs a circuit the relay closed for its budget.
func (r *trainingRelay) closed(s network.Stream, reason string, err error) {
	defer r.n.metrics.relayClosed.WithLabelValues(reason).Inc() // after the log line
	switch reason {
	case "circuit-data":
		r.n.log.Warn("training relay: circuit closed: over its data budget; the peers open another",
			"peer", s.Conn().RemotePeer(), "budget_mib", r.n.cfg.RelayCircuitMB, "err", err)
	default:
		r.mu.Lock()
		_, until := r.budget.spent(r.now())
		r.mu.Unlock()
		r.logSpent(until)
		r.n.log.Debug("training relay: circuit closed: daily budget spent", "peer", s.Conn().RemotePeer())
	}
}

// logSpent logs, once a day, that the day's budget is spent.
func (r *trainingRelay) logSpent(until time.Time) {
	r.mu.Lock()
	first := !r.spentLogged.Equal(until)
	r.spentLogged = until
	r.mu.Unlock()
	if first {
		r.n.log.Warn("training relay: today's budget is spent: circuits closed, new ones refused until the next UTC day",
			"gb_per_day", r.n.cfg.RelayGBPerDay, "until", until.Format(time.RFC3339),
			"advice", "raise --relay-gb-per-day to relay more")
	}
}

// meteredHost is the host the relay runs on: the streams it accepts (hop)
// and opens (stop) are metered.
type meteredHost struct {
	host.Host
	r *trainingRelay
}

func (h meteredHost) SetStreamHandler(pid protocol.ID, handler network.StreamHandler) {
	h.Host.SetStreamHandler(pid, func(s network.Stream) { handler(&meteredStream{Stream: s, r: h.r}) })
}

func (h meteredHost) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	s, err := h.Host.NewStream(ctx, p, pids...)
	if err != nil {
		return nil, err
	}
	return &meteredStream{Stream: s, r: h.r}, nil
}

// meteredStream counts what the relay reads from one side of a circuit:
// one direction of it. Only the relay's goroutine for that direction
// reads it.
type meteredStream struct {
	network.Stream
	r    *trainingRelay
	read int64
}

func (s *meteredStream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	if n <= 0 {
		return n, err
	}
	s.read += int64(n)
	if s.read > s.r.circuit {
		_ = s.Stream.Reset()
		s.r.closed(s.Stream, "circuit-data", errCircuitBudget)
		return 0, errCircuitBudget
	}
	if s.r.take(n) {
		_ = s.Stream.Reset()
		s.r.closed(s.Stream, "daily-data", errDailyBudget)
		return 0, errDailyBudget
	}
	return n, err
}
