// Package nodetest starts real nodes on 127.0.0.1 for the tests of the
// packages above node (the training service, the dashboard): a loopback
// config with a home and a control API, and a runner that stops the node
// when the test ends and fails it if the node's Run returned an error.
package nodetest

import (
	"context"
	"testing"
	"time"

	"github.com/swarm-train/swarm/node"
)

// Config is a node on 127.0.0.1 (TCP, port 0, no port mapping) in run
// runName, with bootstrap addresses boot. With a home it also has a control
// API on 127.0.0.1:0; without one, no API.
func Config(home, runName string, boot ...string) node.Config {
	cfg := node.DefaultConfig()
	cfg.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.Bootstrap = boot
	cfg.API = ""
	if home != "" {
		cfg.Home, cfg.API = home, "127.0.0.1:0"
	}
	cfg.RunName = runName
	cfg.PortMapping = false
	cfg.DiscoveryInterval = time.Second
	return cfg
}

// Start runs a node until the test ends and waits until it is ready (10 s
// at most).
func Start(t testing.TB, cfg node.Config) *node.Node {
	t.Helper()
	n, err := node.New(cfg, nil)
	if err != nil {
		t.Fatalf("new node: %v", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- n.Run(context.Background()) }()
	t.Cleanup(func() {
		n.Close()
		if err := <-errc; err != nil {
			t.Errorf("node run: %v", err)
		}
	})
	select {
	case <-n.Ready():
	case err := <-errc:
		t.Fatalf("node run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("node not ready after 10 s")
	}
	return n
}
