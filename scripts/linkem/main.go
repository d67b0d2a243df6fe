// Command linkem is scripts/wan.sh's link emulator: a TCP proxy (package
// internal/linkem) in front of every node of the emulated network, giving
// each node an access link of the given uplink and downlink rates and a
// round trip of -rtt between any two nodes. Settings this host cannot
// provide are refused naming the part of the WAN_LINKS entry they came from.
//
//	linkem -up 20mbit -down 100mbit -rtt 100ms -node n1,10.77.1.1:4001,10.77.1.2:4001 ...
//	linkem -check -up 100mbit -rtt 50ms -nodes 5
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/swarm-train/swarm/internal/linkem"
)

type nodeFlags []linkem.Node

func (n *nodeFlags) String() string { return fmt.Sprint(len(*n)) }

// Set reads NAME,LISTEN,TARGET; the node's source address is TARGET's IP.
func (n *nodeFlags) Set(s string) error {
	f := strings.Split(s, ",")
	if len(f) != 3 {
		return fmt.Errorf("%q: want NAME,LISTEN,TARGET", s)
	}
	host, _, err := net.SplitHostPort(f[2])
	if err != nil {
		return fmt.Errorf("%q: target: %v", s, err)
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return fmt.Errorf("%q: target %q is not an IP address", s, host)
	}
	*n = append(*n, linkem.Node{Name: f[0], Listen: f[1], Target: f[2], Source: ip})
	return nil
}

// wanVar names the part of a WAN_LINKS entry (UP/DOWN/RTT) behind a link field.
var wanVar = map[string]string{"up": "UP", "down": "DOWN", "delay": "RTT"}

func main() {
	var nodes nodeFlags
	up := flag.String("up", "", "every node's uplink rate (tc units: 100mbit); empty: not limited")
	down := flag.String("down", "", "every node's downlink rate; empty: not limited")
	rtt := flag.Duration("rtt", 0, "round trip between any two nodes (each access link holds a quarter of it each way)")
	check := flag.Bool("check", false, "only check that this host can emulate the links for -nodes nodes, then exit")
	count := flag.Int("nodes", 0, "with -check: the number of nodes")
	flag.Var(&nodes, "node", "NAME,LISTEN,TARGET: peers dial LISTEN, the proxy forwards to TARGET; repeatable")
	flag.Parse()

	fail := func(field, msg string) {
		fmt.Fprintf(os.Stderr, "linkem: %s refused: %s\n", wanVar[field], msg)
		os.Exit(2)
	}
	var l linkem.Link
	for _, r := range []struct {
		field string
		s     string
		dst   *float64
	}{{"up", *up, &l.Up}, {"down", *down, &l.Down}} {
		if r.s == "" {
			continue
		}
		v, err := linkem.ParseRate(r.s)
		if err != nil {
			fail(r.field, err.Error())
		}
		*r.dst = v
	}
	l.Delay = *rtt / 4
	var fe *linkem.FieldError
	if err := linkem.CheckLink(l); errors.As(err, &fe) {
		fail(fe.Field, fe.Msg)
	}
	if *check {
		h, err := linkem.MeasureHost()
		if err != nil {
			fmt.Fprintln(os.Stderr, "linkem: measuring this host:", err)
			os.Exit(1)
		}
		if err := linkem.CheckHost(l, *count, h); errors.As(err, &fe) {
			fail(fe.Field, fe.Msg)
		}
		fmt.Printf("timer slack %v, proxy throughput %.0f Mbit/s\n", h.TimerSlack.Round(time.Microsecond), h.Throughput*8/1e6)
		return
	}
	for i := range nodes {
		nodes[i].Link = l
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	hub, err := linkem.New(linkem.Config{Nodes: nodes, Logger: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	_ = hub.Close()
}
