package linkem

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/swarm-train/swarm/internal/clock"
)

// Node is one emulated node: peers reach it at Listen (a hub address, what
// the node announces), the hub forwards to Target (where the node listens),
// and connections the hub accepts from Source are the node's own.
type Node struct {
	Name   string
	Listen string
	Target string
	Source net.IP
	Link   Link
}

// Config configures a Hub.
type Config struct {
	Nodes []Node
	// MaxQueue bounds the bytes a link direction holds, as time to drain
	// them (default 100 ms, a home router's buffer): a sender that fills it
	// is held, as a full socket buffer holds it.
	MaxQueue time.Duration
	Clock    clock.Clock
	Logger   *slog.Logger
}

// chunkSize is the most a connection direction reads at once.
const chunkSize = 32 << 10

// Hub is the proxy: one listener per node, every connection between nodes
// passed through their links.
type Hub struct {
	cfg   Config
	clk   clock.Clock
	log   *slog.Logger
	mu    sync.Mutex // guards the serializers
	up    []*serializer
	down  []*serializer
	lns   []net.Listener
	conns sync.Map // net.Conn → struct{}: closed by Close
	wg    sync.WaitGroup
	once  sync.Once
	done  chan struct{}
}

// New validates cfg and starts listening on every node's Listen address.
func New(cfg Config) (*Hub, error) {
	if cfg.MaxQueue <= 0 {
		cfg.MaxQueue = 100 * time.Millisecond
	}
	h := &Hub{cfg: cfg, clk: clock.Or(cfg.Clock), log: cfg.Logger, done: make(chan struct{})}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	seen := map[string]bool{}
	for i, n := range cfg.Nodes {
		if n.Source == nil {
			return nil, fmt.Errorf("linkem: node %d (%s): no source address", i, n.Name)
		}
		if seen[n.Source.String()] {
			return nil, fmt.Errorf("linkem: node %d (%s): source %s used twice", i, n.Name, n.Source)
		}
		seen[n.Source.String()] = true
		if err := CheckLink(n.Link); err != nil {
			return nil, fmt.Errorf("linkem: node %d (%s): %w", i, n.Name, err)
		}
		h.up = append(h.up, &serializer{rate: n.Link.Up})
		h.down = append(h.down, &serializer{rate: n.Link.Down})
	}
	for i, n := range cfg.Nodes {
		ln, err := net.Listen("tcp", n.Listen)
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("linkem: node %d (%s): listen %s: %w", i, n.Name, n.Listen, err)
		}
		h.lns = append(h.lns, ln)
	}
	for i, ln := range h.lns {
		h.wg.Add(1)
		go h.accept(i, ln)
	}
	return h, nil
}

// Addr is where peers reach node i.
func (h *Hub) Addr(i int) net.Addr { return h.lns[i].Addr() }

// Close stops every listener and connection and waits for them.
func (h *Hub) Close() error {
	h.once.Do(func() {
		close(h.done)
		for _, ln := range h.lns {
			_ = ln.Close()
		}
		h.conns.Range(func(k, _ any) bool { _ = k.(net.Conn).Close(); return true })
	})
	h.wg.Wait()
	return nil
}

// path is the direction from node a to node b.
func (h *Hub) path(a, b int) Path {
	return Path{up: h.up[a], down: h.down[b], delay: h.cfg.Nodes[a].Link.Delay + h.cfg.Nodes[b].Link.Delay}
}

func (h *Hub) source(addr net.Addr) int {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return -1
	}
	for i, n := range h.cfg.Nodes {
		if n.Source.Equal(ta.IP) {
			return i
		}
	}
	return -1
}

func (h *Hub) accept(b int, ln net.Listener) {
	defer h.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		a := h.source(c.RemoteAddr())
		if a < 0 {
			// Every connection between nodes passes two emulated links; one
			// from elsewhere would not, so it is refused.
			h.log.Warn("refused a connection from an unknown source", "from", c.RemoteAddr(), "to", h.cfg.Nodes[b].Name)
			_ = c.Close()
			continue
		}
		h.wg.Add(1)
		go h.serve(a, b, c)
	}
}

func (h *Hub) track(c net.Conn) {
	h.conns.Store(c, struct{}{})
	select { // Close may have swept already
	case <-h.done:
		_ = c.Close()
	default:
	}
}

// serve forwards connection c from node a to node b's target.
func (h *Hub) serve(a, b int, c net.Conn) {
	defer h.wg.Done()
	h.track(c)
	defer func() { _ = c.Close(); h.conns.Delete(c) }()
	var d net.Dialer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t, err := d.DialContext(ctx, "tcp", h.cfg.Nodes[b].Target)
	cancel()
	if err != nil {
		h.log.Debug("dial target", "node", h.cfg.Nodes[b].Name, "err", err)
		return
	}
	h.track(t)
	defer func() { _ = t.Close(); h.conns.Delete(t) }()
	var pw sync.WaitGroup
	pw.Add(2)
	go func() { defer pw.Done(); h.pump(c, t, h.path(a, b)) }()
	go func() { defer pw.Done(); h.pump(t, c, h.path(b, a)) }()
	pw.Wait()
}

type chunk struct {
	data   []byte // nil: end of stream
	arrive time.Time
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// pump copies src to dst through p: each chunk read is written when the
// model says it arrives. The reader is held while p's queues are full.
func (h *Hub) pump(src, dst net.Conn, p Path) {
	q := make(chan chunk, 1024)
	failed := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // writer
		defer wg.Done()
		for c := range q {
			if d := h.clk.Until(c.arrive); d > 0 {
				select {
				case <-h.clk.After(d):
				case <-h.done:
				}
			}
			if c.data == nil {
				if tc, ok := dst.(interface{ CloseWrite() error }); ok {
					_ = tc.CloseWrite()
				}
				continue
			}
			_, err := dst.Write(c.data)
			bufPool.Put(&c.data)
			if err != nil {
				select {
				case <-failed:
				default:
					close(failed)
					_ = src.Close()
					_ = dst.Close()
				}
			}
		}
	}()
	defer func() { close(q); wg.Wait() }()
	for {
		bp := bufPool.Get().(*[]byte)
		n, err := src.Read((*bp)[:chunkSize])
		if n > 0 {
			now := h.clk.Now()
			h.mu.Lock()
			left, arrive := p.Send(now, n)
			h.mu.Unlock()
			select {
			case q <- chunk{data: (*bp)[:n], arrive: arrive}:
			case <-failed:
				return
			}
			// A full uplink queue holds the sender; so does a full downlink
			// queue at the receiver (many senders into one link).
			hold := left.Add(-h.cfg.MaxQueue)
			if t := arrive.Add(-p.delay - 2*h.cfg.MaxQueue); t.After(hold) {
				hold = t
			}
			if d := h.clk.Until(hold); d > 0 {
				select {
				case <-h.clk.After(d):
				case <-h.done:
					return
				case <-failed:
					return
				}
			}
		} else {
			bufPool.Put(bp)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				select {
				case q <- chunk{arrive: h.lastArrival(p)}:
				case <-failed:
				}
			} else {
				_ = dst.Close()
			}
			return
		}
	}
}

// lastArrival is when a byte sent now on p would arrive: the end of stream
// follows the data before it.
func (h *Hub) lastArrival(p Path) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.clk.Now()
	left := now
	if p.up.rate > 0 && p.up.free.After(left) {
		left = p.up.free
	}
	arrive := left.Add(p.delay)
	if p.down.rate > 0 && p.down.free.After(arrive) {
		arrive = p.down.free
	}
	return arrive
}
