package bulk

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/swarm-train/swarm/internal/testutil"
)

const testProto = protocol.ID("/swarm/bulk-test/1.0.0")

// echoPeer serves testProto: it accepts the upgrade, reads everything and
// sends it back, and records what type of stream it served and any error.
type echoPeer struct {
	h   host.Host
	svc *Service
	mu  sync.Mutex
	got []string // "bulk" or "libp2p" per transfer, or "error: …"
}

func (e *echoPeer) kinds() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.got...)
}

func (e *echoPeer) note(s string) {
	e.mu.Lock()
	e.got = append(e.got, s)
	e.mu.Unlock()
}

func newEchoPeer(t *testing.T, cfg Config) *echoPeer {
	t.Helper()
	e := &echoPeer{h: testutil.Host(t)}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	svc, err := New(e.h, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	e.svc = svc
	e.h.SetStreamHandler(testProto, func(st network.Stream) {
		defer st.Reset()
		s, err := e.svc.Accept(st)
		if err != nil {
			e.note("error: " + err.Error())
			return
		}
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(20 * time.Second))
		data, err := io.ReadAll(s)
		if err != nil {
			e.note("error: " + err.Error())
			return
		}
		if _, err := s.Write(data); err != nil {
			e.note("error: " + err.Error())
			return
		}
		if err := s.CloseWrite(); err != nil {
			e.note("error: " + err.Error())
			return
		}
		e.note(kind(s))
	})
	return e
}

func kind(s Stream) string {
	if _, ok := s.(*Conn); ok {
		return "bulk"
	}
	return "libp2p"
}

func newDialer(t *testing.T, cfg Config) (host.Host, *Service) {
	t.Helper()
	h := testutil.Host(t)
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	svc, err := New(h, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	return h, svc
}

// echo sends data through peer e and returns what came back and the kind
// of stream the dialer used.
func echo(t *testing.T, h host.Host, svc *Service, e *echoPeer, data []byte) ([]byte, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := h.NewStream(ctx, e.h.ID(), testProto)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Reset()
	s, err := svc.Upgrade(ctx, st)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	defer s.Reset()
	_ = s.SetDeadline(time.Now().Add(20 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := s.Write(data)
		if err == nil {
			err = s.CloseWrite()
		}
		errc <- err
	}()
	back, err := io.ReadAll(s)
	if err != nil {
		t.Fatalf("read back: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	return back, kind(s)
}

func random(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func TestTransferOverBulk(t *testing.T) {
	e := newEchoPeer(t, Config{})
	h, svc := newDialer(t, Config{})
	testutil.Connect(t, h, e.h)
	for _, n := range []int{0, 1, MaxRecord - 1, MaxRecord, MaxRecord + tagLen, 3*MaxRecord + 7, 5 << 20} {
		data := random(n)
		back, k := echo(t, h, svc, e, data)
		if k != "bulk" {
			t.Fatalf("%d bytes: dialer used %s, want bulk", n, k)
		}
		if !bytes.Equal(back, data) {
			t.Fatalf("%d bytes: %d came back, not the same", n, len(back))
		}
	}
	testutil.Eventually(t, 10*time.Second, func() string { return strings.Join(e.kinds(), ",") }, func() bool { return len(e.kinds()) == 7 })
	for _, k := range e.kinds() {
		if k != "bulk" {
			t.Fatalf("listener served %v, want bulk each time", e.kinds())
		}
	}
}

// A peer whose bulk port cannot be dialled is served on the libp2p stream,
// and is not dialled again until RetryAfter.
func TestFallbackWhenPortUnreachable(t *testing.T) {
	e := newEchoPeer(t, Config{})
	_ = e.svc.l.Close() // the port answers nothing, as one not forwarded
	h, svc := newDialer(t, Config{})
	testutil.Connect(t, h, e.h)
	data := random(1 << 20)
	for i := range 2 {
		back, k := echo(t, h, svc, e, data)
		if k != "libp2p" || !bytes.Equal(back, data) {
			t.Fatalf("transfer %d: kind %s, %d bytes back", i, k, len(back))
		}
	}
	svc.mu.Lock()
	_, remembered := svc.failed[e.h.ID()]
	svc.mu.Unlock()
	if !remembered {
		t.Fatal("the unreachable peer was not remembered")
	}
	testutil.Eventually(t, 10*time.Second, func() string { return strings.Join(e.kinds(), ",") }, func() bool { return len(e.kinds()) == 2 })
}

// Beyond MaxPending tickets, a listener keeps transfers on libp2p.
func TestPendingBound(t *testing.T) {
	e := newEchoPeer(t, Config{MaxPending: 1})
	h, svc := newDialer(t, Config{})
	testutil.Connect(t, h, e.h)
	// Take the only slot with an offer that never dials.
	st := openTest(t, h, e.h)
	offer := append([]byte{version, 1}, random(secretLen)...)
	if _, err := st.Write(offer); err != nil {
		t.Fatal(err)
	}
	var ans [1]byte
	if _, err := io.ReadFull(st, ans[:]); err != nil || ans[0] != 1 {
		t.Fatalf("first offer: answer %d, %v", ans[0], err)
	}
	data := random(100 << 10)
	back, k := echo(t, h, svc, e, data)
	if k != "libp2p" || !bytes.Equal(back, data) {
		t.Fatalf("with the slot taken: kind %s, %d bytes back", k, len(back))
	}
}

// openTest opens a testProto stream from h to to, reset when the test ends.
func openTest(t *testing.T, h, to host.Host) network.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := h.NewStream(ctx, to.ID(), testProto)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Reset() })
	return st
}

// Offers that break the handshake are errors that name what was wrong.
func TestBadOffers(t *testing.T) {
	cases := []struct {
		name  string
		offer []byte
		want  string
	}{
		{"version", []byte{2, 1}, "offer version 2, want 1"},
		{"want", []byte{1, 7}, "offer want 7"},
		{"short secret", []byte{1, 1, 5, 5}, "read offer"},
		{"confirmation", append(append([]byte{1, 1}, make([]byte, secretLen)...), 9), "confirmation 9"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEchoPeer(t, Config{HandshakeTimeout: time.Second})
			h := testutil.Host(t)
			testutil.Connect(t, h, e.h)
			st := openTest(t, h, e.h)
			if _, err := st.Write(c.offer); err != nil {
				t.Fatal(err)
			}
			_ = st.CloseWrite()
			testutil.Eventually(t, 10*time.Second, testutil.Says("the listener's error"), func() bool { return len(e.kinds()) == 1 })
			if got := e.kinds()[0]; !strings.Contains(got, c.want) {
				t.Fatalf("listener: %q, want it to name %q", got, c.want)
			}
		})
	}
}

// Connections to the bulk port without a valid ticket are closed; beyond
// MaxHandshakes they are closed at once.
func TestTicketsAndHandshakeSlots(t *testing.T) {
	e := newEchoPeer(t, Config{HandshakeTimeout: time.Second, MaxHandshakes: 2})
	addr := e.svc.Addr().String()
	closedByPeer := func(c net.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
	}
	// An unknown ticket.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write(random(ticketLen))
	if !closedByPeer(c) {
		t.Fatal("a connection with an unknown ticket stayed open")
	}
	// Two silent connections hold both slots until HandshakeTimeout; a third
	// is closed at once.
	var silent []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		silent = append(silent, c)
	}
	testutil.Eventually(t, 5*time.Second, testutil.Says("both slots taken"), func() bool { return len(e.svc.hs) == 2 })
	start := time.Now()
	third, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	if !closedByPeer(third) {
		t.Fatal("a connection beyond MaxHandshakes stayed open")
	}
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Fatalf("the connection beyond MaxHandshakes waited %v, as if it had a slot", d)
	}
	for _, c := range silent {
		if !closedByPeer(c) {
			t.Fatal("a silent connection outlived HandshakeTimeout")
		}
	}
}

// One source's silent connections take MaxHandshakesPerSource of the
// ticket-wait slots, not all of them: its next is closed at once, while
// another source still gets a slot and an admitted peer's transfer still
// goes direct.
func TestHandshakeSlotsPerSource(t *testing.T) {
	e := newEchoPeer(t, Config{HandshakeTimeout: 3 * time.Second, MaxHandshakes: 8, MaxHandshakesPerSource: 2})
	addr := e.svc.Addr()
	from := func(ip string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		c, err := d.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	for range 2 {
		from("127.0.0.2")
	}
	testutil.Eventually(t, 5*time.Second, testutil.Says("the stranger holds its two slots"), func() bool { return len(e.svc.hs) == 2 })
	third := from("127.0.0.2")
	_ = third.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := third.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a third silent connection from one source was not closed at once: %v", err)
	}
	from("127.0.0.3")
	testutil.Eventually(t, 5*time.Second, testutil.Says("another source gets a slot"), func() bool { return len(e.svc.hs) == 3 })
	h, svc := newDialer(t, Config{})
	testutil.Connect(t, h, e.h)
	data := random(300 << 10)
	if back, k := echo(t, h, svc, e, data); k != "bulk" || !bytes.Equal(back, data) {
		t.Fatalf("with a stranger at its cap: kind %s, %d bytes back", k, len(back))
	}
	// The slots and the per-source counts come back once the silent
	// connections time out.
	testutil.Eventually(t, 10*time.Second, testutil.Says("slots and sources freed"), func() bool {
		e.svc.mu.Lock()
		n := len(e.svc.sources)
		e.svc.mu.Unlock()
		return len(e.svc.hs) == 0 && n == 0
	})
}

func TestSourceOf(t *testing.T) {
	for _, c := range []struct {
		a, b string
		same bool
	}{
		{"192.0.2.1", "192.0.2.1", true},
		{"192.0.2.1", "192.0.2.2", false},
		{"2001:db8:1:2::1", "2001:db8:1:2:ffff::9", true}, // one /64
		{"2001:db8:1:2::1", "2001:db8:1:3::1", false},
		{"::ffff:192.0.2.1", "192.0.2.1", true}, // IPv4-mapped is the IPv4 address
	} {
		a := sourceOf(&net.TCPAddr{IP: net.ParseIP(c.a), Port: 1})
		b := sourceOf(&net.TCPAddr{IP: net.ParseIP(c.b), Port: 2})
		if (a == b) != c.same {
			t.Errorf("sourceOf(%s) = %q, sourceOf(%s) = %q: same %v, want %v", c.a, a, c.b, b, a == b, c.same)
		}
	}
}

// tcpPair is the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch := make(chan *net.TCPConn, 1)
	go func() {
		c, _ := l.AcceptTCP()
		ch <- c
	}()
	a, err := net.DialTCP("tcp", nil, l.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	return a, b
}

var k1, k2 = bytes.Repeat([]byte{1}, 16), bytes.Repeat([]byte{2}, 16)

// record seals p as record ctr with key k, as a Conn writes it.
func record(t testing.TB, k []byte, ctr uint64, p []byte, flags uint32) []byte {
	t.Helper()
	g, err := newGCM(k)
	if err != nil {
		t.Fatal(err)
	}
	hdr := binary.BigEndian.AppendUint32(nil, uint32(len(p))|flags)
	return g.Seal(hdr, nonce(ctr), p, hdr)
}

// The record reader refuses what a hostile or broken peer sends, with an
// error that names it, before reading any declared body.
func TestRecordErrors(t *testing.T) {
	good := record(t, k1, 0, []byte("hello"), 0)
	cases := []struct {
		name string
		raw  []byte
		want error
		msg  string
	}{
		{"oversize", binary.BigEndian.AppendUint32(nil, MaxRecord+1), ErrRecord, fmt.Sprintf("declares %d bytes, limit %d", MaxRecord+1, MaxRecord)},
		{"tampered", func() []byte { b := bytes.Clone(good); b[6] ^= 1; return b }(), ErrRecord, "record 0 fails authentication"},
		{"header tampered", func() []byte {
			b := record(t, k1, 0, make([]byte, 8), 0)
			binary.BigEndian.PutUint32(b, 7) // one byte less: the tag no longer matches
			return b
		}(), ErrRecord, "fails authentication"},
		{"replayed", append(bytes.Clone(good), good...), ErrRecord, "record 1 fails authentication"},
		{"reordered", append(record(t, k1, 1, []byte("b"), 0), record(t, k1, 0, []byte("a"), 0)...), ErrRecord, "record 0 fails authentication"},
		{"other direction's key", record(t, k2, 0, []byte("x"), 0), ErrRecord, "fails authentication"},
		{"end with data", record(t, k1, 0, []byte("x"), finBit), ErrRecord, "end record 0 carries 1 bytes"},
		{"cut without end", good, ErrTruncated, "without an end record"},
		{"cut mid-record", good[:len(good)-3], ErrTruncated, "without an end record"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, b := tcpPair(t)
			conn, err := newConn(b, "", k2, k1)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Reset()
			go func() {
				_, _ = a.Write(c.raw)
				_ = a.CloseWrite()
			}()
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = io.ReadAll(conn)
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("got %v, want %v naming %q", err, c.want, c.msg)
			}
			// Sticky: the stream is out of step after an error.
			if _, err2 := conn.Read(make([]byte, 10)); err2 == nil {
				t.Fatal("a read after the error succeeded")
			}
		})
	}
}

// An end record gives io.EOF once every record before it is read, and a
// reset peer's reads fail.
func TestEndAndReset(t *testing.T) {
	a, b := tcpPair(t)
	ca, _ := newConn(a, "", k1, k2)
	cb, _ := newConn(b, "", k2, k1)
	defer ca.Reset()
	defer cb.Reset()
	go func() {
		_, _ = ca.Write([]byte("one"))
		_, _ = ca.Write([]byte("two"))
		_ = ca.CloseWrite()
	}()
	got, err := io.ReadAll(cb)
	if err != nil || string(got) != "onetwo" {
		t.Fatalf("read %q, %v", got, err)
	}
	if _, err := ca.Write([]byte("late")); err == nil {
		t.Fatal("a write after CloseWrite succeeded")
	}
	// The other way: b resets while a reads.
	done := make(chan error, 1)
	go func() {
		_ = ca.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadAll(ca)
		done <- err
	}()
	_, _ = cb.Write([]byte("partial"))
	_ = cb.Reset()
	if err := <-done; err == nil {
		t.Fatal("a reset peer's stream read to a clean end")
	}
}

// fuzzConn serves fixed bytes as the connection under a Conn.
type fuzzConn struct {
	net.Conn // nil: only Read, Write, Close and CloseWrite are used
	r        *bytes.Reader
}

func (f *fuzzConn) Read(p []byte) (int, error)  { return f.r.Read(p) }
func (f *fuzzConn) Write(p []byte) (int, error) { return len(p), nil }
func (f *fuzzConn) Close() error                { return nil }
func (f *fuzzConn) CloseWrite() error           { return nil }

// FuzzRecords feeds arbitrary bytes to the record reader: it never panics,
// never returns more than the input's authentic records hold, and ends in an
// error or io.EOF.
func FuzzRecords(f *testing.F) {
	f.Add(record(f, k1, 0, []byte("hello"), 0))
	f.Add(append(record(f, k1, 0, []byte("a"), 0), record(f, k1, 1, nil, finBit)...))
	f.Add(binary.BigEndian.AppendUint32(nil, 1<<31-1))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := newConn(&fuzzConn{r: bytes.NewReader(in)}, "", k2, k1)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Reset()
		out, err := io.ReadAll(c)
		if err == nil && len(out) > 0 {
			// A clean end needs an authentic end record: the input must
			// hold at least one record's overhead per record read.
			if len(in) < len(out)+2*(headerLen+tagLen) {
				t.Fatalf("%d bytes read cleanly from %d bytes of input", len(out), len(in))
			}
		}
		if len(out) > len(in) {
			t.Fatalf("%d bytes out of %d in", len(out), len(in))
		}
	})
}

// BenchmarkSealOpen is the AEAD alone on records of MaxRecord bytes: the
// floor of what a bulk connection costs a byte, both ends together.
func BenchmarkSealOpen(b *testing.B) {
	seal, _ := newGCM(k1)
	open, _ := newGCM(k1)
	p := random(MaxRecord)
	ct := make([]byte, 0, MaxRecord+tagLen)
	b.SetBytes(MaxRecord)
	for i := uint64(0); b.Loop(); i++ {
		ct = seal.Seal(ct[:0], nonce(i), p, nil)
		if _, err := open.Open(p[:0], nonce(i), ct, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkConn is one direction of a Conn pair over loopback TCP: sealing,
// the kernel's copies and opening, on this machine's cores.
func BenchmarkConn(b *testing.B) {
	a, c := tcpPair(b)
	ca, _ := newConn(a, "", k1, k2)
	cc, _ := newConn(c, "", k2, k1)
	defer ca.Reset()
	defer cc.Reset()
	const total = 64 << 20
	src := random(1 << 20)
	dst := make([]byte, 512<<10)
	b.SetBytes(total)
	for b.Loop() {
		done := make(chan error, 1)
		go func() {
			for n := 0; n < total; {
				k, err := cc.Read(dst)
				if err != nil {
					done <- err
					return
				}
				n += k
			}
			done <- nil
		}()
		for n := 0; n < total; n += len(src) {
			if _, err := ca.Write(src); err != nil {
				b.Fatal(err)
			}
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
}

// Strangers holding every handshake slot of a bulk port cannot fail a
// transfer: the listener tells the dialer its connection was not taken, and
// the transfer stays on the libp2p stream.
func TestBusyPortFallsBack(t *testing.T) {
	e := newEchoPeer(t, Config{MaxHandshakes: 1, HandshakeTimeout: time.Second})
	idle, err := net.Dial("tcp", e.svc.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	testutil.Eventually(t, 5*time.Second, testutil.Says("the stranger holds the slot"), func() bool { return len(e.svc.hs) == 1 })
	h, svc := newDialer(t, Config{})
	testutil.Connect(t, h, e.h)
	data := random(300 << 10)
	back, k := echo(t, h, svc, e, data)
	if k != "libp2p" || !bytes.Equal(back, data) {
		t.Fatalf("with the port busy: kind %s, %d bytes back", k, len(back))
	}
	// Once the stranger's slot has timed out, bulk works again.
	testutil.Eventually(t, 5*time.Second, testutil.Says("the slot freed"), func() bool { return len(e.svc.hs) == 0 })
	if back, k := echo(t, h, svc, e, data); k != "bulk" || !bytes.Equal(back, data) {
		t.Fatalf("after the slot freed: kind %s, %d bytes back", k, len(back))
	}
}

// fuzzStream is a handshake stream that reads fixed bytes and discards
// what is written.
type fuzzStream struct{ r *bytes.Reader }

func (f *fuzzStream) Read(p []byte) (int, error)       { return f.r.Read(p) }
func (f *fuzzStream) Write(p []byte) (int, error)      { return len(p), nil }
func (f *fuzzStream) Close() error                     { return nil }
func (f *fuzzStream) CloseWrite() error                { return nil }
func (f *fuzzStream) Reset() error                     { return nil }
func (f *fuzzStream) SetDeadline(time.Time) error      { return nil }
func (f *fuzzStream) SetReadDeadline(time.Time) error  { return nil }
func (f *fuzzStream) SetWriteDeadline(time.Time) error { return nil }

// FuzzAccept feeds arbitrary handshakes to the listener: it never panics,
// never holds a ticket afterwards, and either stays on the stream or
// returns an error.
func FuzzAccept(f *testing.F) {
	h := testutil.Host(f)
	svc, err := New(h, Config{Listen: "127.0.0.1:0", HandshakeTimeout: time.Millisecond})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = svc.Close() })
	f.Add([]byte{1, 0})
	f.Add(append(append([]byte{1, 1}, make([]byte, secretLen)...), 0))
	f.Add(append(append([]byte{1, 1}, make([]byte, secretLen)...), 1))
	f.Add([]byte{2, 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		fs := &fuzzStream{r: bytes.NewReader(in)}
		s, err := svc.accept(fs, h.ID())
		if err == nil && s != Stream(fs) {
			t.Fatalf("upgraded without a connection: %T", s)
		}
		svc.mu.Lock()
		n := len(svc.pending)
		svc.mu.Unlock()
		if n != 0 {
			t.Fatalf("%d tickets left pending", n)
		}
	})
}

// A listener that answers out of protocol is an ErrHandshake on the
// dialer's side, naming the answer.
func TestBadAnswer(t *testing.T) {
	l := testutil.Host(t)
	l.SetStreamHandler(testProto, func(st network.Stream) {
		defer st.Reset()
		offer := make([]byte, 2+secretLen)
		if _, err := io.ReadFull(st, offer); err == nil {
			_, _ = st.Write([]byte{7})
		}
		_, _ = io.Copy(io.Discard, st)
	})
	h, svc := newDialer(t, Config{})
	testutil.Connect(t, h, l)
	st := openTest(t, h, l)
	_, err := svc.Upgrade(context.Background(), st)
	if !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), "answer 7") {
		t.Fatalf("got %v, want ErrHandshake naming answer 7", err)
	}
}
