// Package guard is what every protocol handler uses to refuse a peer's input:
// one place that counts refusals (swarm_security_refusals_total{protocol,reason}),
// logs each once per peer and reason, remembers offenders in bounded memory, and
// names a peer that keeps offending so that the node disconnects it and refuses it
// for a while. It also reads peer-declared sizes without trusting them: buffers
// grow only as bytes arrive.
//
// A nil *Refusals is valid: it refuses silently (tests and tools that embed a
// protocol without a node).
package guard

import (
	"container/list"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/swarm-train/swarm/internal/clock"
)

// Policy says how many refusals make an offender and what happens then.
type Policy struct {
	// Strikes refusals of one peer within Window make it an offender
	// (default 8 in 1 minute).
	Strikes int
	Window  time.Duration
	// Ban is how long an offender is refused (default 10 minutes).
	Ban time.Duration
	// MaxPeers bounds the peers remembered for strikes, log suppression and
	// bans (default 4096; the oldest are forgotten first).
	MaxPeers int
}

func (p Policy) withDefaults() Policy {
	if p.Strikes <= 0 {
		p.Strikes = 8
	}
	if p.Window <= 0 {
		p.Window = time.Minute
	}
	if p.Ban <= 0 {
		p.Ban = 10 * time.Minute
	}
	if p.MaxPeers <= 0 {
		p.MaxPeers = 4096
	}
	return p
}

// Refusals records refused peer input. It is safe for concurrent use.
type Refusals struct {
	pol  Policy
	log  *slog.Logger
	clk  clock.Clock
	ctr  *prometheus.CounterVec
	bans *prometheus.CounterVec // swarm_security_bans_total{reason}

	mu        sync.Mutex
	counts    map[key]uint64 // protocol/reason → refusals (bounded by the code's reasons)
	peers     map[peer.ID]*list.Element
	lru       *list.List // of *peerState, most recent at the front
	onOffend  []func(peer.ID, string)
	offenders uint64
}

type key struct{ protocol, reason string }

type peerState struct {
	id      peer.ID
	strikes []time.Time      // within the window, oldest first
	logged  map[key]struct{} // reasons already logged for this peer
	banned  time.Time        // refused until then
}

// New returns a Refusals that registers its counter on reg (nil: none) and
// logs on log (nil: discards).
func New(reg prometheus.Registerer, log *slog.Logger, pol Policy) (*Refusals, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Refusals{pol: pol.withDefaults(), log: log, clk: clock.Real,
		counts: map[key]uint64{}, peers: map[peer.ID]*list.Element{}, lru: list.New(),
		ctr: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "swarm", Subsystem: "security",
			Name: "refusals_total", Help: "Peer input refused, by protocol and reason."}, []string{"protocol", "reason"}),
		bans: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "swarm", Subsystem: "security",
			Name: "bans_total", Help: "Peers banned for a lie shown by evidence, by reason."}, []string{"reason"})}
	if reg != nil {
		for _, c := range []prometheus.Collector{r.ctr, r.bans} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("guard: register metrics: %w", err)
			}
		}
	}
	return r, nil
}

// SetClock replaces the wall clock (nil: the wall clock; tests use a
// clock.Manual). Call it before the first refusal.
func (r *Refusals) SetClock(c clock.Clock) { r.clk = clock.Or(c) }

// OnOffender adds f, called (outside the lock) when a peer becomes an
// offender: reason is the refusal that tipped it. The node disconnects it.
func (r *Refusals) OnOffender(f func(p peer.ID, reason string)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.onOffend = append(r.onOffend, f)
}

// Refuse records that p's input on protocol was refused for reason (a short
// fixed word such as "oversize", "not-admitted"; never peer-chosen text) and
// logs err the first time this peer is refused for this reason. It returns
// true when p is, after this refusal, an offender to disconnect.
func (r *Refusals) Refuse(p peer.ID, protocol, reason string, err error) bool {
	if r == nil {
		return false
	}
	k := key{protocol, reason}
	r.ctr.WithLabelValues(protocol, reason).Inc()
	now := r.clk.Now()
	r.mu.Lock()
	r.counts[k]++
	st := r.state(p)
	_, seen := st.logged[k]
	st.logged[k] = struct{}{}
	cut := now.Add(-r.pol.Window)
	i := 0
	for i < len(st.strikes) && st.strikes[i].Before(cut) {
		i++
	}
	st.strikes = append(st.strikes[i:], now)
	offend := false
	if len(st.strikes) >= r.pol.Strikes && !now.Before(st.banned) {
		st.banned = now.Add(r.pol.Ban)
		st.strikes = st.strikes[:0]
		offend = true
		r.offenders++
	}
	hooks := append([]func(peer.ID, string){}, r.onOffend...)
	r.mu.Unlock()
	if !seen {
		r.log.Warn("refused peer input", "peer", p, "protocol", protocol, "reason", reason, "err", err)
	}
	if offend {
		r.log.Warn("peer keeps sending refused input; disconnecting and refusing it", "peer", p,
			"for", r.pol.Ban, "last_reason", reason)
		for _, f := range hooks {
			f(p, reason)
		}
	}
	return offend
}

// Count records a refused input of p like Refuse (counted, logged once per
// peer and reason) but adds no strike: for input whose sender the node
// judges by rules of its own, which ban it (BanFor) once the evidence is
// enough. Strikes would cut the peer off first, with a weaker ban and
// without the evidence.
func (r *Refusals) Count(p peer.ID, protocol, reason string, err error) {
	if r == nil {
		return
	}
	k := key{protocol, reason}
	r.ctr.WithLabelValues(protocol, reason).Inc()
	r.mu.Lock()
	r.counts[k]++
	st := r.state(p)
	_, seen := st.logged[k]
	st.logged[k] = struct{}{}
	r.mu.Unlock()
	if !seen {
		r.log.Warn("refused peer input", "peer", p, "protocol", protocol, "reason", reason, "err", err)
	}
}

// Ban refuses p for the policy's ban period without a refusal of its input
// (a peer found lying by other means).
func (r *Refusals) Ban(p peer.ID) {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.state(p).banned = r.clk.Now().Add(r.pol.Ban)
	r.mu.Unlock()
}

// BanFor bans p like Ban because it was found lying (reason: a short fixed
// word such as "statesync-chunk", never peer-chosen text): it logs the peer,
// the reason and the evidence once per peer and reason, counts the ban in
// swarm_security_bans_total{reason}, and has the node disconnect it (the
// OnOffender hooks).
func (r *Refusals) BanFor(p peer.ID, reason string, evidence error) {
	if r == nil {
		return
	}
	k := key{"ban", reason}
	r.bans.WithLabelValues(reason).Inc()
	r.mu.Lock()
	st := r.state(p)
	st.banned = r.clk.Now().Add(r.pol.Ban)
	_, seen := st.logged[k]
	st.logged[k] = struct{}{}
	hooks := append([]func(peer.ID, string){}, r.onOffend...)
	r.mu.Unlock()
	if !seen {
		r.log.Warn("banning a peer that lied", "peer", p, "reason", reason, "evidence", evidence, "for", r.pol.Ban)
	}
	for _, f := range hooks {
		f(p, reason)
	}
}

// Banned reports whether p is refused at the moment.
func (r *Refusals) Banned(p peer.ID) bool {
	if r == nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.peers[p]
	return ok && r.clk.Now().Before(e.Value.(*peerState).banned)
}

// state returns p's entry, creating it at the front of the LRU and
// forgetting the least recent peer beyond MaxPeers. r.mu must be held.
func (r *Refusals) state(p peer.ID) *peerState {
	if e, ok := r.peers[p]; ok {
		r.lru.MoveToFront(e)
		return e.Value.(*peerState)
	}
	st := &peerState{id: p, logged: map[key]struct{}{}}
	r.peers[p] = r.lru.PushFront(st)
	for r.lru.Len() > r.pol.MaxPeers {
		old := r.lru.Back()
		r.lru.Remove(old)
		delete(r.peers, old.Value.(*peerState).id)
	}
	return st
}

// Count is one row of Counts.
type Count struct {
	Protocol string `json:"protocol"`
	Reason   string `json:"reason"`
	Count    uint64 `json:"count"`
}

// Summary is what status shows: refusals by protocol and reason, peers made
// offenders so far, and peers refused right now.
type Summary struct {
	Refusals  []Count `json:"refusals"`
	Offenders uint64  `json:"offenders"`
	Banned    int     `json:"banned"`
}

// Summary returns the counts so far, sorted by protocol and reason.
func (r *Refusals) Summary() Summary {
	s := Summary{Refusals: []Count{}}
	if r == nil {
		return s
	}
	now := r.clk.Now()
	r.mu.Lock()
	for k, n := range r.counts {
		s.Refusals = append(s.Refusals, Count{k.protocol, k.reason, n})
	}
	for e := r.lru.Front(); e != nil; e = e.Next() {
		if now.Before(e.Value.(*peerState).banned) {
			s.Banned++
		}
	}
	s.Offenders = r.offenders
	r.mu.Unlock()
	sort.Slice(s.Refusals, func(i, j int) bool {
		a, b := s.Refusals[i], s.Refusals[j]
		if a.Protocol != b.Protocol {
			return a.Protocol < b.Protocol
		}
		return a.Reason < b.Reason
	})
	return s
}

// readChunk is how much ReadFull reads before it grows its buffer again.
const readChunk = 64 << 10

// ReadFull reads exactly n bytes from r, growing its buffer only as data
// arrives (in steps of at most 64 KiB), so a peer that declares a large size
// and sends nothing costs nothing. n must already be checked against what
// the protocol allows; ReadFull only refuses negative sizes.
func ReadFull(r io.Reader, n int) ([]byte, error) {
	if n < 0 {
		return nil, fmt.Errorf("guard: negative size %d", n)
	}
	if n <= readChunk {
		b := make([]byte, n)
		_, err := io.ReadFull(r, b)
		return b, err
	}
	b := make([]byte, 0, readChunk)
	for len(b) < n {
		step := min(n-len(b), max(readChunk, len(b))) // double, but never past n
		if cap(b)-len(b) < step {
			nb := make([]byte, len(b), len(b)+step)
			copy(nb, b)
			b = nb
		}
		got, err := io.ReadFull(r, b[len(b):len(b)+step])
		b = b[:len(b)+got]
		if err != nil {
			if err == io.EOF && len(b) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return b, err
		}
	}
	return b, nil
}
