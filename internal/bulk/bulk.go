// Package bulk moves large transfers between two libp2p peers over a TCP
// connection of their own instead of a multiplexed libp2p stream.
//
// A transfer begins on a libp2p stream, which is encrypted and bound to
// both peer IDs. On it the two agree on fresh keys and a one-time ticket;
// the dialer opens a plain TCP connection to the other peer's bulk port at
// the IP address the libp2p connection already uses, presents the ticket,
// and the bytes flow in AES-128-GCM records of up to 512 KiB (conn.go; an
// averaging part of 128 Ki float32 values is one record): one seal and one
// write(2) per record, no stream multiplexer and no 16 KiB TLS records in
// between. Where that connection cannot be made (a relayed peer,
// a port not forwarded, a peer without a bulk listener, one that has too
// many pending, a bulk port kept busy by strangers) the transfer stays on
// the libp2p stream it began on, and where the port could not be dialled
// the dialer does not try that peer again for a while.
//
// The handshake on the libp2p stream:
//
//	dialer → listener  offer: version (1), want (0 or 1), and with want 1 the dialer's secret (32 bytes)
//	listener → dialer  with want 1: answer (0: stay; 1: port (2 bytes), ticket (16), listener's secret (32))
//	dialer → listener  with answer 1: 1 if its TCP connection is open (it has sent the ticket on it), else 0
//	listener → dialer  after a 1: 1 if that connection brought the ticket, 0 if none did within the timeout
//
// Keys come from both secrets (HKDF-SHA256, salted with the ticket, bound to
// both peer IDs and the direction), so neither side alone chooses them and
// only the two peers know them.
package bulk

import (
	"context"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

const (
	version   = 1
	secretLen = 32
	ticketLen = 16
)

// ErrHandshake is returned for a handshake the other side got wrong.
var ErrHandshake = errors.New("bulk: bad handshake")

// Config configures a Service. Zero fields take the defaults noted.
type Config struct {
	// Listen is the TCP address of the bulk listener ("host:port"; port 0
	// picks one). Other peers dial the IP their libp2p connection to us
	// uses, so Listen must accept there (e.g. ":0", or the IP of the
	// libp2p TCP listener).
	Listen string
	// DialTimeout bounds the dial of another peer's bulk port (default 2s);
	// HandshakeTimeout each side's wait for the other's handshake step and
	// an accepted connection's wait for its ticket (default 5s).
	DialTimeout, HandshakeTimeout time.Duration
	// RetryAfter is how long a peer whose bulk port could not be dialled is
	// left on libp2p streams (default 10m).
	RetryAfter time.Duration
	// MaxPending bounds tickets waiting for their connection (default 64);
	// beyond it transfers stay on libp2p. MaxHandshakes bounds accepted
	// connections that have not presented a ticket yet (default 32); more
	// are closed at once. MaxHandshakesPerSource bounds those from one
	// source (default 4): an IPv4 address, or an IPv6 /64, which one
	// holder typically has whole. A stranger holding connections open
	// unread then takes that many of the slots, not all of them; peers
	// behind one NAT share it, and each has a handshake open only for the
	// moment between its dial and its ticket.
	MaxPending, MaxHandshakes, MaxHandshakesPerSource int
	// Logger gets the service's debug lines (default: none).
	Logger *slog.Logger
}

// Service is one peer's bulk listener and dialer.
type Service struct {
	h   host.Host
	cfg Config
	l   *net.TCPListener
	log *slog.Logger
	hs  chan struct{} // a slot per connection in its ticket wait

	mu      sync.Mutex
	sources map[string]int // connections in their ticket wait, by source (sourceOf)
	pending map[[ticketLen]byte]chan *net.TCPConn
	failed  map[peer.ID]time.Time // peers whose bulk port we could not dial, until
	closed  bool
	wg      sync.WaitGroup

	upgraded, stayed atomic.Int64
}

// Stats counts the transfers this service upgraded to a bulk connection and
// those that stayed on libp2p (either side; a peer that offered none is not
// counted).
func (s *Service) Stats() (upgraded, stayed int64) { return s.upgraded.Load(), s.stayed.Load() }

// New starts a bulk listener on cfg.Listen for h.
func New(h host.Host, cfg Config) (*Service, error) {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.DialTimeout, 2*time.Second)
	def(&cfg.HandshakeTimeout, 5*time.Second)
	def(&cfg.RetryAfter, 10*time.Minute)
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 64
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = 32
	}
	if cfg.MaxHandshakesPerSource <= 0 {
		cfg.MaxHandshakesPerSource = 4
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	addr, err := net.ResolveTCPAddr("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("bulk: listen address %q: %w", cfg.Listen, err)
	}
	l, err := net.ListenTCP("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("bulk: listen on %q: %w", cfg.Listen, err)
	}
	s := &Service{h: h, cfg: cfg, l: l, log: cfg.Logger.With("component", "bulk"),
		hs: make(chan struct{}, cfg.MaxHandshakes), sources: map[string]int{}, pending: map[[ticketLen]byte]chan *net.TCPConn{},
		failed: map[peer.ID]time.Time{}}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// Addr is the listener's address.
func (s *Service) Addr() *net.TCPAddr { return s.l.Addr().(*net.TCPAddr) }

// Close stops the listener and waits for its goroutines. Transfers already
// upgraded go on until their ends close them.
func (s *Service) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	err := s.l.Close()
	s.wg.Wait()
	return err
}

func (s *Service) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.l.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Debug("accept", "err", err)
			time.Sleep(50 * time.Millisecond) // e.g. out of file descriptors: do not spin
			continue
		}
		src := sourceOf(c.RemoteAddr())
		if !s.takeSource(src) {
			s.log.Debug("connection turned away: too many without a ticket from its source", "from", c.RemoteAddr())
			_ = c.Close()
			continue
		}
		select {
		case s.hs <- struct{}{}:
			s.wg.Add(1)
			go s.takeTicket(c, src)
		default:
			s.releaseSource(src)
			s.log.Debug("connection turned away: too many without a ticket", "from", c.RemoteAddr())
			_ = c.Close()
		}
	}
}

// sourceOf is what MaxHandshakesPerSource counts a connection under: its
// IPv4 address, or the /64 of its IPv6 address.
func sourceOf(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	if ip4 := ta.IP.To4(); ip4 != nil {
		return ip4.String()
	}
	return ta.IP.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// takeSource takes one of src's handshake places, if it has one left.
func (s *Service) takeSource(src string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sources[src] >= s.cfg.MaxHandshakesPerSource {
		return false
	}
	s.sources[src]++
	return true
}

func (s *Service) releaseSource(src string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sources[src]--; s.sources[src] <= 0 {
		delete(s.sources, src)
	}
}

// takeTicket reads an accepted connection's ticket and hands the connection
// to the transfer waiting for it; anything else closes it. It gives back
// the connection's handshake slot and its source's place.
func (s *Service) takeTicket(c *net.TCPConn, src string) {
	defer s.wg.Done()
	defer func() { <-s.hs; s.releaseSource(src) }()
	_ = c.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	var t [ticketLen]byte
	if _, err := io.ReadFull(c, t[:]); err != nil {
		s.log.Debug("connection without a ticket", "from", c.RemoteAddr(), "err", err)
		_ = c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	s.mu.Lock()
	ch, ok := s.pending[t]
	delete(s.pending, t)
	if ok {
		// Under the lock, so that Accept's forget either finds it in ch
		// or finds the ticket gone; buffered, and the only send.
		ch <- c
	}
	s.mu.Unlock()
	if !ok {
		s.log.Debug("connection with an unknown ticket", "from", c.RemoteAddr())
		_ = c.Close()
	}
}

// dialIP is the IP of a direct connection to a peer, if there is one.
func dialIP(c network.Conn) (net.IP, bool) {
	if c == nil || c.Stat().Limited {
		return nil, false
	}
	ma := c.RemoteMultiaddr()
	if _, err := ma.ValueForProtocol(multiaddr.P_CIRCUIT); err == nil {
		return nil, false
	}
	ip, err := manet.ToIP(ma)
	if err != nil {
		return nil, false
	}
	return ip, true
}

// Upgrade is the dialer's side: on st, a fresh stream of a protocol whose
// both ends use this package, it offers a bulk connection and returns it,
// or st itself where the transfer stays on libp2p. An error means st is no
// longer usable.
func (s *Service) Upgrade(ctx context.Context, st network.Stream) (Stream, error) {
	to := st.Conn().RemotePeer()
	ip, direct := dialIP(st.Conn())
	s.mu.Lock()
	until, failed := s.failed[to]
	if failed && time.Now().After(until) {
		delete(s.failed, to)
		failed = false
	}
	closed := s.closed
	s.mu.Unlock()
	if !direct || failed || closed {
		if _, err := st.Write([]byte{version, 0}); err != nil {
			return nil, fmt.Errorf("bulk: write offer: %w", err)
		}
		return s.stay(st, -1, "")
	}
	offer := make([]byte, 2+secretLen)
	offer[0], offer[1] = version, 1
	mine := offer[2:]
	_, _ = rand.Read(mine)
	_ = st.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	defer st.SetDeadline(time.Time{})
	if _, err := st.Write(offer); err != nil {
		return nil, fmt.Errorf("bulk: write offer: %w", err)
	}
	var ans [1 + 2 + ticketLen + secretLen]byte
	if _, err := io.ReadFull(st, ans[:1]); err != nil {
		return nil, fmt.Errorf("bulk: read answer: %w", err)
	}
	switch ans[0] {
	case 0:
		return s.stay(st, -1, "")
	case 1:
	default:
		return nil, fmt.Errorf("%w: answer %d, want 0 or 1", ErrHandshake, ans[0])
	}
	if _, err := io.ReadFull(st, ans[1:]); err != nil {
		return nil, fmt.Errorf("bulk: read answer: %w", err)
	}
	port := int(ans[1])<<8 | int(ans[2])
	if port == 0 {
		return nil, fmt.Errorf("%w: answer names port 0", ErrHandshake)
	}
	var ticket [ticketLen]byte
	copy(ticket[:], ans[3:])
	theirs := ans[3+ticketLen:]

	dctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	var d net.Dialer
	nc, err := d.DialContext(dctx, "tcp", net.JoinHostPort(ip.String(), strconv.Itoa(port)))
	cancel()
	if err == nil {
		if _, err = nc.Write(ticket[:]); err != nil {
			_ = nc.Close()
		}
	}
	if err != nil {
		s.log.Debug("bulk port not reachable; staying on libp2p", "peer", to, "ip", ip, "port", port, "err", err)
		s.mu.Lock()
		if len(s.failed) < 4096 {
			s.failed[to] = time.Now().Add(s.cfg.RetryAfter)
		}
		s.mu.Unlock()
		return s.stay(st, 0, "fallback")
	}
	if _, err := st.Write([]byte{1}); err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("bulk: write confirmation: %w", err)
	}
	// The listener says whether our connection brought the ticket: a port
	// whose handshake slots are taken closes connections unread, and then
	// the transfer stays here rather than failing.
	_ = st.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout + time.Second))
	var verdict [1]byte
	if _, err := io.ReadFull(st, verdict[:]); err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("bulk: read verdict: %w", err)
	}
	switch verdict[0] {
	case 0:
		_ = nc.Close()
		s.log.Debug("bulk connection not taken; staying on libp2p", "peer", to)
		return s.stay(st, -1, "")
	case 1:
	default:
		_ = nc.Close()
		return nil, fmt.Errorf("%w: verdict %d, want 0 or 1", ErrHandshake, verdict[0])
	}
	d2l, l2d := keys(mine, theirs, ticket[:], s.h.ID(), to)
	return s.open(st, nc.(*net.TCPConn), to, d2l, l2d)
}

// Accept is the listener's side of Upgrade, on the stream a handler got.
func (s *Service) Accept(st network.Stream) (Stream, error) {
	return s.accept(st, st.Conn().RemotePeer())
}

// accept reads the handshake from st, a stream from peer from.
func (s *Service) accept(st Stream, from peer.ID) (Stream, error) {
	_ = st.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	defer st.SetDeadline(time.Time{})
	var head [2]byte
	if _, err := io.ReadFull(st, head[:]); err != nil {
		return nil, fmt.Errorf("bulk: read offer: %w", err)
	}
	if head[0] != version {
		return nil, fmt.Errorf("%w: offer version %d, want %d", ErrHandshake, head[0], version)
	}
	switch head[1] {
	case 0:
		return st, nil
	case 1:
	default:
		return nil, fmt.Errorf("%w: offer want %d, want 0 or 1", ErrHandshake, head[1])
	}
	theirs := make([]byte, secretLen)
	if _, err := io.ReadFull(st, theirs); err != nil {
		return nil, fmt.Errorf("bulk: read offer: %w", err)
	}
	var ticket [ticketLen]byte
	_, _ = rand.Read(ticket[:])
	ch := make(chan *net.TCPConn, 1)
	s.mu.Lock()
	ok := !s.closed && len(s.pending) < s.cfg.MaxPending
	if ok {
		s.pending[ticket] = ch
	}
	s.mu.Unlock()
	if !ok {
		return s.stay(st, 0, "answer")
	}
	forget := func() *net.TCPConn {
		s.mu.Lock()
		delete(s.pending, ticket)
		s.mu.Unlock()
		select { // a connection that came in meanwhile
		case c := <-ch:
			return c
		default:
			return nil
		}
	}
	drop := func() { // the transfer will not use a connection
		if c := forget(); c != nil {
			_ = c.Close()
		}
	}
	ans := make([]byte, 0, 1+2+ticketLen+secretLen)
	port := s.Addr().Port
	ans = append(ans, 1, byte(port>>8), byte(port))
	ans = append(ans, ticket[:]...)
	mine := make([]byte, secretLen)
	_, _ = rand.Read(mine)
	ans = append(ans, mine...)
	var conf [1]byte
	_, err := st.Write(ans)
	if err == nil {
		_, err = io.ReadFull(st, conf[:])
	}
	if err != nil {
		drop()
		return nil, fmt.Errorf("bulk: handshake: %w", err)
	}
	switch conf[0] {
	case 0:
		drop()
		return s.stay(st, -1, "")
	case 1:
	default:
		drop()
		return nil, fmt.Errorf("%w: confirmation %d, want 0 or 1", ErrHandshake, conf[0])
	}
	t := time.NewTimer(s.cfg.HandshakeTimeout)
	defer t.Stop()
	var nc *net.TCPConn
	select {
	case nc = <-ch:
	case <-t.C:
		nc = forget()
	}
	_ = st.SetWriteDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if nc == nil {
		// Our handshake slots were taken, or the connection was lost: the
		// transfer stays on the stream.
		s.log.Debug("no connection brought the ticket; staying on libp2p", "peer", from, "wait", s.cfg.HandshakeTimeout)
		return s.stay(st, 0, "verdict")
	}
	if _, err := st.Write([]byte{1}); err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("bulk: write verdict: %w", err)
	}
	d2l, l2d := keys(theirs, mine, ticket[:], from, s.h.ID())
	return s.open(st, nc, from, l2d, d2l)
}

// stay keeps a transfer on st, telling the other side so with the byte b
// first (none when b < 0); what names the message in an error.
func (s *Service) stay(st Stream, b int, what string) (Stream, error) {
	if b >= 0 {
		if _, err := st.Write([]byte{byte(b)}); err != nil {
			return nil, fmt.Errorf("bulk: write %s: %w", what, err)
		}
	}
	s.stayed.Add(1)
	return st, nil
}

// open moves a transfer from st to the records over nc, with p's keys.
func (s *Service) open(st Stream, nc *net.TCPConn, p peer.ID, send, recv []byte) (Stream, error) {
	c, err := newConn(nc, p, send, recv)
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	_ = st.Close()
	s.upgraded.Add(1)
	return c, nil
}

// keys derives the two directions' AES-128 keys from both secrets, salted
// with the ticket and bound to both peer IDs: the same on both sides.
func keys(dialerSecret, listenerSecret, ticket []byte, dialer, listener peer.ID) (d2l, l2d []byte) {
	secret := append(append([]byte{}, dialerSecret...), listenerSecret...)
	derive := func(dir string) []byte {
		info := "swarm bulk v1 " + dir + " " + dialer.String() + " " + listener.String()
		k, err := hkdf.Key(sha256.New, secret, ticket, info, 16)
		if err != nil {
			panic(err) // only for lengths out of range
		}
		return k
	}
	return derive("d2l"), derive("l2d")
}
