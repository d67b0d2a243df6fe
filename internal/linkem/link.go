// Package linkem emulates wide-area links in user space, for kernels without
// tc netem: a TCP proxy in front of every node of a test network that delays
// and rate-limits each direction of every connection as if each node sat
// behind its own access link (an uplink and a downlink of given rates, and a
// one-way delay to the core), all connections of a node sharing its link.
//
// The emulation is split the usual way: Path is the pure model (when does a
// chunk of bytes sent at a given time arrive), the Hub is the I/O around it.
// A connection arriving at the hub address of node B from the address of
// node A carries A's bytes through A's uplink, both access delays and B's
// downlink, and B's answers the other way round.
package linkem

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Link is one node's access link. Rates are in bytes per second (0: not
// limited); Delay is the one-way delay between the node and the core, so
// that two nodes with delays d1 and d2 are d1+d2 apart one way.
type Link struct {
	Up, Down float64
	Delay    time.Duration
}

// serializer is a link direction: bytes leave one after another at rate.
type serializer struct {
	rate float64   // bytes per second; 0 or less: instantaneous
	free time.Time // when the last reserved byte has left
}

// reserve sends n bytes that reach the serializer at t and returns when the
// last of them has left.
func (s *serializer) reserve(t time.Time, n int) time.Time {
	if s.rate <= 0 {
		return t
	}
	start := t
	if s.free.After(start) {
		start = s.free
	}
	s.free = start.Add(time.Duration(float64(n) / s.rate * float64(time.Second)))
	return s.free
}

// Path is one direction between two nodes: the sender's uplink, the two
// access delays, and the receiver's downlink. Several Paths share a
// serializer when they share a node's link; Path itself is not safe for
// concurrent use (the Hub locks around it).
type Path struct {
	up, down *serializer
	delay    time.Duration
}

// Send models n bytes handed to the path at now: it returns when they left
// the sender's uplink (the sender's queue drains at that time) and when
// they arrive at the receiver.
func (p Path) Send(now time.Time, n int) (left, arrive time.Time) {
	left = p.up.reserve(now, n)
	arrive = p.down.reserve(left.Add(p.delay), n)
	return left, arrive
}

// ParseRate reads a rate as tc writes it: a number followed by bit, kbit,
// mbit, gbit (bits per second, decimal prefixes) or bps, kbps, mbps (bytes
// per second); it returns bytes per second.
func ParseRate(s string) (float64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	units := []struct {
		suffix string
		mult   float64
	}{
		{"kbit", 1e3 / 8}, {"mbit", 1e6 / 8}, {"gbit", 1e9 / 8}, {"bit", 1.0 / 8},
		{"kbps", 1e3}, {"mbps", 1e6}, {"gbps", 1e9}, {"bps", 1},
	}
	for _, u := range units {
		if num, ok := strings.CutSuffix(t, u.suffix); ok {
			v, err := strconv.ParseFloat(num, 64)
			if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || v <= 0 {
				return 0, fmt.Errorf("%q is not a positive rate (want e.g. 100mbit)", s)
			}
			return v * u.mult, nil
		}
	}
	return 0, fmt.Errorf("%q has no unit (want bit, kbit, mbit, gbit or bps, kbps, mbps, gbps)", s)
}
