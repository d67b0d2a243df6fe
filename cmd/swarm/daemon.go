package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/urfave/cli/v2"

	"github.com/swarm-train/swarm/node"
	"github.com/swarm-train/swarm/node/client"
)

// Flags shared by the daemons (swarm node, swarm bootstrap) and by the
// commands that talk to them (status, id, peers).

func homeFlag() cli.Flag {
	return &cli.StringFlag{Name: "home", Usage: "home directory (identity, config, API address)", EnvVars: []string{"SWARM_HOME"}, Value: defaultHome()}
}

func apiFlag() cli.Flag {
	return &cli.StringFlag{Name: "api", Usage: "control API address of the daemon (default: read from the home's api file)", EnvVars: []string{"SWARM_API"}}
}

func apiTokenFlag() cli.Flag {
	return &cli.StringFlag{Name: "api-token", Usage: "control API token (default: read from the home's api-token file; needed with --api naming another daemon)", EnvVars: []string{"SWARM_API_TOKEN"}}
}

func defaultHome() string {
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".swarm")
	}
	return ".swarm"
}

func daemonFlags() []cli.Flag {
	return []cli.Flag{
		homeFlag(),
		&cli.StringSliceFlag{Name: "listen", Usage: "libp2p listen multiaddr, repeatable (overrides the config's listen list)", EnvVars: []string{"SWARM_LISTEN"}},
		&cli.StringSliceFlag{Name: "bootstrap", Usage: "bootstrap peer multiaddr with /p2p/ID, repeatable (overrides the config); 'none' for an empty list", EnvVars: []string{"SWARM_BOOTSTRAP"}},
		&cli.StringFlag{Name: "api-listen", Usage: "control API address: 127.0.0.1:PORT or unix:/path", EnvVars: []string{"SWARM_API_LISTEN"}},
		&cli.StringFlag{Name: "dht-mode", Usage: "auto, server or client", EnvVars: []string{"SWARM_DHT_MODE"}},
		&cli.BoolFlag{Name: "port-mapping", Usage: "ask the router for a port forward (UPnP/NAT-PMP)", EnvVars: []string{"SWARM_PORT_MAPPING"}},
		&cli.StringFlag{Name: "reachability", Usage: "public (dialable: skip AutoNAT; the relay service, if on, starts at once), private (behind NAT: relay reservations at once) or auto; default: public for bootstrap nodes, auto for volunteers", EnvVars: []string{"SWARM_REACHABILITY"}},
		&cli.StringSliceFlag{Name: "announce", Usage: "multiaddr peers should dial this node at (a port forward, a public IP), repeatable; replaces the direct addresses it advertises", EnvVars: []string{"SWARM_ANNOUNCE"}},
		&cli.BoolFlag{Name: "pprof", Usage: "serve Go profiles under /debug/pprof/ on the control API", EnvVars: []string{"SWARM_PPROF"}},
		swarmKeyFlag(),
		&cli.Float64Flag{Name: "max-upload-mbps", Usage: "cap what this node sends on training streams (pipeline, averaging, state sync, progress), in Mbit/s; 0: no cap", EnvVars: []string{"SWARM_MAX_UPLOAD_MBPS"}},
		&cli.BoolFlag{Name: "metrics-open", Usage: "serve /metrics on the control API without the API token (a Prometheus scraper on this machine)", EnvVars: []string{"SWARM_METRICS_OPEN"}},
	}
}

// daemonConfig loads home/config.json (writing the role's defaults on first
// start), then applies flags and SWARM_* variables over it.
func daemonConfig(c *cli.Context, role node.Role) (node.Config, error) {
	home := c.String("home")
	if home == "" {
		return node.Config{}, errors.New("--home: empty")
	}
	if err := os.MkdirAll(home, 0o700); err != nil {
		return node.Config{}, fmt.Errorf("--home %s: %w", home, err)
	}
	cfg, exists, err := node.LoadConfig(home)
	if err != nil {
		return cfg, err
	}
	if !exists {
		def := node.DefaultConfig()
		if role == node.RoleBootstrap {
			def.RelayService = true
			def.DHTMode = node.DHTServer
			def.Reachability = node.ReachabilityPublic
		}
		if err := node.WriteConfig(home, def); err != nil && !errors.Is(err, os.ErrExist) {
			return cfg, fmt.Errorf("write default config: %w", err)
		}
		cfg = def
		cfg.Home = home
	}
	cfg.Role = role
	cfg.AppVersion = version
	if c.IsSet("listen") {
		cfg.Listen = nil
		for _, s := range c.StringSlice("listen") {
			if _, err := ma.NewMultiaddr(s); err != nil {
				return cfg, fmt.Errorf("--listen %q: not a multiaddr: %v", s, err)
			}
			cfg.Listen = append(cfg.Listen, s)
		}
	}
	if c.IsSet("bootstrap") {
		cfg.Bootstrap = []string{}
		for _, s := range c.StringSlice("bootstrap") {
			if s == "" || strings.EqualFold(s, "none") {
				continue
			}
			a, err := ma.NewMultiaddr(s)
			if err != nil {
				return cfg, fmt.Errorf("--bootstrap %q: not a multiaddr: %v", s, err)
			}
			if _, err := peer.AddrInfoFromP2pAddr(a); err != nil {
				return cfg, fmt.Errorf("--bootstrap %q: must end in /p2p/<peer id>: %v", s, err)
			}
			cfg.Bootstrap = append(cfg.Bootstrap, s)
		}
	}
	if c.IsSet("api-listen") {
		cfg.API = c.String("api-listen")
	}
	if c.IsSet("dht-mode") {
		cfg.DHTMode = c.String("dht-mode")
	}
	if c.IsSet("port-mapping") {
		cfg.PortMapping = c.Bool("port-mapping")
	}
	if c.IsSet("reachability") {
		cfg.Reachability = c.String("reachability")
	}
	if c.IsSet("announce") {
		cfg.Announce = nil
		for _, s := range c.StringSlice("announce") {
			if s != "" {
				cfg.Announce = append(cfg.Announce, s)
			}
		}
	}
	if c.IsSet("run-name") {
		cfg.RunName = c.String("run-name")
	}
	if c.IsSet("relay-service") {
		cfg.RelayService = c.Bool("relay-service")
	}
	if c.IsSet("relay-training") {
		cfg.RelayTraining = c.Bool("relay-training")
	}
	if c.IsSet("relay-mbps") {
		cfg.RelayMbps = c.Float64("relay-mbps")
	}
	if c.IsSet("relay-gb-per-day") {
		cfg.RelayGBPerDay = c.Float64("relay-gb-per-day")
	}
	if c.IsSet("relay-circuit-mb") {
		cfg.RelayCircuitMB = c.Int("relay-circuit-mb")
	}
	if c.IsSet("metrics-open") {
		cfg.MetricsWithoutToken = c.Bool("metrics-open")
	}
	if c.IsSet("max-upload-mbps") {
		cfg.MaxUploadMbps = c.Float64("max-upload-mbps")
	}
	if c.IsSet("swarm-key") {
		cfg.SwarmKeyFile = c.String("swarm-key")
	}
	if c.IsSet("token") {
		cfg.Token = readTokenValue(c.String("token"))
	}
	cfg.Pprof = c.Bool("pprof")
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("configuration (%s and flags): %w", filepath.Join(home, node.ConfigFile), err)
	}
	return cfg, nil
}

// shutdownGrace bounds a graceful shutdown after SIGINT/SIGTERM.
const shutdownGrace = 5 * time.Second

// runDaemon runs n until SIGINT or SIGTERM; onReady runs once the node is
// serving. A shutdown that takes longer than shutdownGrace ends the process.
func runDaemon(n *node.Node, onReady func()) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- n.Run(ctx) }()
	select {
	case <-n.Ready():
		if onReady != nil {
			onReady()
		}
	case err := <-errc:
		return err
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	n.Logger().Info("shutting down")
	select {
	case err := <-errc:
		return err
	case <-time.After(shutdownGrace):
		return fmt.Errorf("shutdown took longer than %v; exiting anyway", shutdownGrace)
	}
}

// apiClient finds the daemon: --api / SWARM_API first, else the home's file.
// The token is --api-token / SWARM_API_TOKEN, else (without --api) the
// home's token file: a token is never sent to an address the home did not
// name unless the user gave it.
func apiClient(c *cli.Context) (*client.Client, error) {
	tok := client.WithToken(c.String("api-token"))
	if a := c.String("api"); a != "" {
		return client.New(a, tok)
	}
	return client.FromHome(c.String("home"), tok)
}
