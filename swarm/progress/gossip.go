package progress

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/internal/guard"
)

// Protocol carries one record per stream: a 4-byte big-endian length, then
// the JSON record. The receiver binds it to the stream's remote peer.
const Protocol protocol.ID = "/swarm/train/progress/1.0.0"

const streamTimeout = 3 * time.Second

// maxPushes bounds the pushes in flight (and so the busy and stale maps).
const maxPushes = 1024

// Reasons for refused records (guard).
const (
	protoProgress = "progress"
	whyMalformed  = "malformed"
	whyRange      = "range"
	whyPeer       = "impersonation"
	whyRun        = "run"
)

// Gossip pushes this node's record to its run peers and stores theirs.
type Gossip struct {
	h       host.Host
	runID   string
	tracker *Tracker
	log     *slog.Logger
	peers   func() []peer.ID
	self    func() Record
	refuse  *guard.Refusals
	limits  Limits
	clk     clock.Clock // stamps stored records, paces Run

	mu      sync.Mutex
	closed  bool // no new pushes start after Close
	seq     uint64
	busy    map[peer.ID]bool // pushes in flight
	stale   map[peer.ID]bool // a newer record was skipped while busy: push again after
	wg      sync.WaitGroup
	pending chan struct{}
	notify  *network.NotifyBundle
}

// NewGossip registers the protocol handler on h. peers lists the run peers
// to push to; self returns this node's current record (Peer, RunID and Seq
// are filled in by Gossip).
func NewGossip(h host.Host, runID string, tracker *Tracker, peers func() []peer.ID, self func() Record, log *slog.Logger) *Gossip {
	g := &Gossip{h: h, runID: runID, tracker: tracker, peers: peers, self: self, log: log, pending: make(chan struct{}, 1),
		clk: clock.Real}
	h.SetStreamHandler(Protocol, g.handle)
	// A peer whose last connection closed (its process died, or it left)
	// stops counting at once rather than when its record expires: rounds
	// and epochs would otherwise wait for it until then. A live peer that
	// was only disconnected is back with its next push.
	g.notify = &network.NotifyBundle{DisconnectedF: func(n network.Network, c network.Conn) {
		p := c.RemotePeer()
		if n.Connectedness(p) != network.Connected {
			g.tracker.Forget(p.String())
		}
	}}
	h.Network().Notify(g.notify)
	return g
}

// Close removes the handler and waits for pushes in flight (they end at
// their stream deadline or when Run's context ends).
func (g *Gossip) Close() {
	g.h.Network().StopNotify(g.notify)
	g.h.RemoveStreamHandler(Protocol)
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}

// Poke asks for a push as soon as possible (the record changed).
func (g *Gossip) Poke() {
	select {
	case g.pending <- struct{}{}:
	default:
	}
}

// Run pushes the record every interval and on every Poke (at most every
// minGap) until ctx ends.
func (g *Gossip) Run(ctx context.Context, interval, minGap time.Duration) {
	tick := g.clk.NewTicker(interval)
	defer tick.Stop()
	for {
		g.PushNow(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C():
		case <-g.pending:
			if clock.Sleep(ctx, g.clk, minGap) != nil {
				return
			}
		}
	}
}

// Current returns this node's record as it would be pushed now, and stores
// it in the tracker.
func (g *Gossip) Current() Record {
	r := g.self()
	g.mu.Lock()
	g.seq++
	r.Seq = g.seq
	g.mu.Unlock()
	r.Peer = g.h.ID().String()
	r.RunID = g.runID
	g.tracker.Update(r, g.clk.Now())
	return r
}

// PushNow sends the current record to every run peer in parallel. It does
// not wait for peers that are slow to answer: a peer with a push still in
// flight is skipped, so one dead peer never delays the records to the others,
// and gets the latest record as soon as that push ends.
func (g *Gossip) PushNow(ctx context.Context) {
	r := g.Current()
	b, err := r.Encode()
	if err != nil {
		g.log.Error("progress record", "err", err)
		return
	}
	for _, p := range g.peers() {
		if p == g.h.ID() {
			continue
		}
		g.mu.Lock()
		if g.closed {
			g.mu.Unlock()
			return
		}
		if g.busy == nil {
			g.busy, g.stale = map[peer.ID]bool{}, map[peer.ID]bool{}
		}
		if g.busy[p] {
			g.stale[p] = true
			g.mu.Unlock()
			continue
		}
		if len(g.busy) >= maxPushes {
			g.mu.Unlock()
			continue // the next push reaches p
		}
		g.busy[p] = true
		g.wg.Add(1) // under mu: never concurrent with Close's Wait
		g.mu.Unlock()
		go func(p peer.ID, b []byte) {
			defer g.wg.Done()
			for {
				if err := g.send(ctx, p, b); err != nil {
					g.log.Debug("progress push failed", "peer", p, "err", err)
				}
				g.mu.Lock()
				again := g.stale[p] && ctx.Err() == nil
				delete(g.stale, p)
				if !again {
					delete(g.busy, p)
					g.mu.Unlock()
					return
				}
				g.mu.Unlock()
				r := g.Current()
				next, err := r.Encode()
				if err != nil {
					g.mu.Lock()
					delete(g.busy, p)
					g.mu.Unlock()
					return
				}
				b = next
			}
		}(p, b)
	}
}

func (g *Gossip) send(ctx context.Context, p peer.ID, b []byte) error {
	ctx, cancel := context.WithTimeout(ctx, streamTimeout)
	defer cancel()
	s, err := g.h.NewStream(network.WithAllowLimitedConn(ctx, "progress"), p, Protocol)
	if err != nil {
		return err
	}
	_ = s.SetDeadline(clock.WallDeadline(streamTimeout))
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(b)))
	if _, err := s.Write(append(hdr[:], b...)); err != nil {
		s.Reset()
		return err
	}
	return s.Close()
}

func (g *Gossip) handle(s network.Stream) {
	defer s.Close()
	from := s.Conn().RemotePeer()
	if g.refuse.Banned(from) {
		s.Reset()
		return
	}
	_ = s.SetDeadline(clock.WallDeadline(streamTimeout))
	rec, err := ReadRecord(s)
	if err != nil {
		s.Reset()
		if !errors.Is(err, network.ErrReset) {
			g.refuse.Refuse(from, protoProgress, whyMalformed, err)
		}
		return
	}
	switch {
	case rec.Peer != from.String():
		g.refuse.Refuse(from, protoProgress, whyPeer, fmt.Errorf("record names peer %.60q", rec.Peer))
	case rec.RunID != g.runID:
		g.refuse.Refuse(from, protoProgress, whyRun, fmt.Errorf("record of run %.60q", rec.RunID))
	default:
		if err := rec.Check(g.limits); err != nil {
			g.refuse.Refuse(from, protoProgress, whyRange, err)
			return
		}
		g.tracker.Update(*rec, g.clk.Now())
	}
}

// ReadRecord reads one length-prefixed record.
func ReadRecord(r io.Reader) (*Record, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("record length: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > MaxRecordSize {
		return nil, fmt.Errorf("record length %d outside 1..%d", n, MaxRecordSize)
	}
	b, err := guard.ReadFull(r, int(n))
	if err != nil {
		return nil, fmt.Errorf("record body: %w", err)
	}
	return Decode(b)
}

// SetLimits makes g refuse records whose numbers the run does not allow
// (Record.Check). Call it before the first record arrives.
func (g *Gossip) SetLimits(l Limits) { g.limits = l }

// SetClock makes g stamp the records it stores and pace Run on c (nil: the
// wall clock): the clock of whoever reads the tracker's live records. Call
// it before the first record arrives.
func (g *Gossip) SetClock(c clock.Clock) { g.clk = clock.Or(c) }

// SetRefusals makes g count and log the records it refuses in r. Call it
// before the first record arrives.
func (g *Gossip) SetRefusals(r *guard.Refusals) { g.refuse = r }
