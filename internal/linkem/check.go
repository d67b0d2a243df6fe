package linkem

import (
	"fmt"
	"io"
	"net"
	"slices"
	"time"
)

// FieldError is a link setting refused, with the setting named.
type FieldError struct {
	Field string // "up", "down" or "delay"
	Msg   string
}

func (e *FieldError) Error() string { return "field " + e.Field + ": " + e.Msg }

// Limits bound what a link may ask for.
const (
	MaxRate  = 10e9 / 8 // bytes per second: 10 Gbit/s
	MaxDelay = 10 * time.Second
)

// CheckLink refuses a link no emulation could provide.
func CheckLink(l Link) error {
	switch {
	case l.Up < 0 || l.Up > MaxRate:
		return &FieldError{"up", fmt.Sprintf("%.0f bytes/s is outside 0 (no limit) to 10gbit", l.Up)}
	case l.Down < 0 || l.Down > MaxRate:
		return &FieldError{"down", fmt.Sprintf("%.0f bytes/s is outside 0 (no limit) to 10gbit", l.Down)}
	case l.Delay < 0 || l.Delay > MaxDelay:
		return &FieldError{"delay", fmt.Sprintf("%v is outside 0 to %v", l.Delay, MaxDelay)}
	}
	return nil
}

// Host is what this machine can emulate: how late its timers fire (the
// median lateness of short sleeps) and how many bytes per second one
// proxied connection moves without shaping.
type Host struct {
	TimerSlack time.Duration
	Throughput float64
}

// CheckHost refuses links this host cannot provide with n nodes sending at
// once: a one-way delay shorter than a few timer slacks (the emulated
// delay would be mostly the host's), or rates whose sum over the nodes is
// more than half what the proxy moves.
func CheckHost(l Link, n int, h Host) error {
	if l.Delay > 0 && l.Delay < 4*h.TimerSlack {
		return &FieldError{"delay", fmt.Sprintf("%v one way is below what this host's timers can hold (they fire %v late, median)", l.Delay, h.TimerSlack)}
	}
	budget := h.Throughput / 2
	if l.Up > 0 && float64(n)*l.Up > budget {
		return &FieldError{"up", fmt.Sprintf("%d nodes × %.1f Mbit/s is more than half of the %.0f Mbit/s this host's proxy moves",
			n, l.Up*8/1e6, h.Throughput*8/1e6)}
	}
	if l.Down > 0 && float64(n)*l.Down > budget {
		return &FieldError{"down", fmt.Sprintf("%d nodes × %.1f Mbit/s is more than half of the %.0f Mbit/s this host's proxy moves",
			n, l.Down*8/1e6, h.Throughput*8/1e6)}
	}
	return nil
}

// MeasureHost measures this host: 21 sleeps of 1 ms, and 64 MiB through an
// unshaped hub on 127.0.0.1 (or as much as passes in 2 s).
func MeasureHost() (Host, error) {
	var late []time.Duration
	for range 21 {
		t := time.Now()
		time.Sleep(time.Millisecond)
		late = append(late, time.Since(t)-time.Millisecond)
	}
	slices.Sort(late)
	h := Host{TimerSlack: max(late[len(late)/2], 0)}

	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return h, err
	}
	defer target.Close()
	go func() {
		c, err := target.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(io.Discard, c)
	}()
	hub, err := New(Config{Nodes: []Node{
		{Name: "sink", Listen: "127.0.0.1:0", Target: target.Addr().String(), Source: net.IPv4(127, 0, 0, 2)},
		{Name: "source", Listen: "127.0.0.1:0", Target: "127.0.0.1:1", Source: net.IPv4(127, 0, 0, 1)},
	}})
	if err != nil {
		return h, err
	}
	defer hub.Close()
	c, err := net.Dial("tcp", hub.Addr(0).String())
	if err != nil {
		return h, err
	}
	defer c.Close()
	buf := make([]byte, 1<<20)
	start := time.Now()
	sent := 0
	for sent < 64<<20 && time.Since(start) < 2*time.Second {
		n, err := c.Write(buf)
		sent += n
		if err != nil {
			return h, err
		}
	}
	h.Throughput = float64(sent) / time.Since(start).Seconds()
	return h, nil
}
