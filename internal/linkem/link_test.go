package linkem

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func ms(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }

// The model in virtual time: serialisation on the sender's uplink, the two
// access delays, the receiver's downlink, and a shared uplink.
func TestPathModel(t *testing.T) {
	t0 := time.Unix(0, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	upA := &serializer{rate: 1e6}   // 1 MB/s: 1 KB takes 1 ms
	downB := &serializer{rate: 2e6} // 2 MB/s
	downC := &serializer{}          // unlimited
	ab := Path{up: upA, down: downB, delay: ms(20)}
	ac := Path{up: upA, down: downC, delay: ms(20)}

	steps := []struct {
		p            Path
		now          time.Duration
		n            int
		left, arrive time.Duration
	}{
		// 1 KB: 1 ms on A's uplink, 20 ms, 0.5 ms on B's downlink.
		{ab, 0, 1000, ms(1), ms(21.5)},
		// Sent at once after: queues behind the first on A's uplink.
		{ab, 0, 1000, ms(2), ms(22.5)},
		// To C, sharing A's uplink: behind both; C's downlink is free.
		{ac, 0, 1000, ms(3), ms(23)},
		// Much later: an idle link again.
		{ab, ms(100), 2000, ms(102), ms(123)},
	}
	for i, s := range steps {
		left, arrive := s.p.Send(at(s.now), s.n)
		if left != at(s.left) || arrive != at(s.arrive) {
			t.Errorf("step %d: left %v arrive %v, want %v %v", i, left.Sub(t0), arrive.Sub(t0), s.left, s.arrive)
		}
	}
	// Many senders into one downlink: B's downlink queues them.
	upX, upY := &serializer{rate: 1e6}, &serializer{rate: 1e6}
	down := &serializer{rate: 1e6}
	x := Path{up: upX, down: down}
	y := Path{up: upY, down: down}
	if _, a := x.Send(t0, 1000); a != at(ms(2)) {
		t.Errorf("x arrives %v, want 2ms", a.Sub(t0))
	}
	if _, a := y.Send(t0, 1000); a != at(ms(3)) {
		t.Errorf("y arrives %v, want 3ms (behind x on the shared downlink)", a.Sub(t0))
	}
}

func TestParseRate(t *testing.T) {
	for s, want := range map[string]float64{"100mbit": 12.5e6, "20Mbit": 2.5e6, "1gbit": 125e6, "800kbit": 1e5, "1mbps": 1e6, "64bit": 8} {
		if got, err := ParseRate(s); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"", "100", "fast", "-1mbit", "0mbit", "NaNmbit", "1e400mbit"} {
		if _, err := ParseRate(s); err == nil {
			t.Errorf("ParseRate(%q) passed", s)
		}
	}
}

func TestCheckLinkAndHost(t *testing.T) {
	host := Host{TimerSlack: ms(1), Throughput: 100e6} // 800 Mbit/s
	cases := []struct {
		l     Link
		n     int
		field string
	}{
		{Link{Up: 12.5e6, Down: 12.5e6, Delay: ms(12.5)}, 4, ""},
		{Link{}, 100, ""},
		{Link{Up: -1}, 1, "up"},
		{Link{Down: 2e9}, 1, "down"},
		{Link{Delay: -ms(1)}, 1, "delay"},
		{Link{Delay: time.Minute}, 1, "delay"},
		{Link{Delay: ms(2)}, 1, "delay"},        // under 4 timer slacks
		{Link{Up: 12.5e6}, 5, "up"},             // 5 × 100 Mbit/s > 400
		{Link{Up: 1e6, Down: 125e6}, 1, "down"}, // 1 Gbit/s > 400 Mbit/s
	}
	for i, c := range cases {
		err := CheckLink(c.l)
		if err == nil {
			err = CheckHost(c.l, c.n, host)
		}
		var fe *FieldError
		switch {
		case c.field == "" && err != nil:
			t.Errorf("case %d: %v", i, err)
		case c.field != "" && (!errors.As(err, &fe) || fe.Field != c.field):
			t.Errorf("case %d: %v, want a refusal of field %s", i, err, c.field)
		}
	}
}

// echoServer echoes every connection; it returns its address.
func echoServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

// dialFrom connects to addr from the loopback address src.
func dialFrom(t *testing.T, src net.IP, addr string) net.Conn {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Through a real hub on loopback: a round trip takes at least both
// directions' delays, a transfer at least its bytes ÷ the slowest rate,
// bytes arrive intact and in order, and a connection from a source that is
// no node's is refused.
func TestHubDelaysAndLimits(t *testing.T) {
	echo := echoServer(t)
	a, b := net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2)
	hub, err := New(Config{Nodes: []Node{
		{Name: "a", Listen: "127.0.0.1:0", Target: "127.0.0.1:1", Source: a, Link: Link{Delay: ms(10)}},
		// b: 10 ms away, its uplink 1 MB/s, its downlink 4 MB/s.
		{Name: "b", Listen: "127.0.0.1:0", Target: echo, Source: b, Link: Link{Up: 1e6, Down: 4e6, Delay: ms(10)}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close()

	c := dialFrom(t, a, hub.Addr(1).String())
	ping := []byte("ping")
	start := time.Now()
	if _, err := c.Write(ping); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(ping))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, ping) {
		t.Fatalf("echo %q, %v", got, err)
	}
	if rtt := time.Since(start); rtt < ms(40) {
		t.Errorf("round trip %v through two 10 ms access links, want ≥ 40 ms", rtt)
	}

	// 200 KB there and back: b's 1 MB/s uplink takes ≥ 200 ms.
	data := make([]byte, 200_000)
	_, _ = rand.Read(data)
	start = time.Now()
	go func() { _, _ = c.Write(data) }()
	back := make([]byte, len(data))
	if _, err := io.ReadFull(c, back); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < ms(200) {
		t.Errorf("200 KB through a 1 MB/s uplink in %v, want ≥ 200 ms", el)
	}
	if !bytes.Equal(back, data) {
		t.Error("bytes changed on the way")
	}

	// A source that is no node's: the hub closes the connection.
	x := dialFrom(t, net.IPv4(127, 0, 0, 3), hub.Addr(1).String())
	_ = x.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := x.Read(make([]byte, 1)); err == nil || n > 0 || strings.Contains(err.Error(), "timeout") {
		t.Errorf("unknown source: read %d, %v; want the connection closed", n, err)
	}
}
