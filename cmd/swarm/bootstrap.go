package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/swarm-train/swarm/node"
)

func init() {
	register(&cli.Command{
		Name:  "bootstrap",
		Usage: "run a public bootstrap node: DHT server and circuit relay for volunteers",
		Description: `A bootstrap node is the first peer volunteers dial. It serves swarm's DHT, relays
(with limits) for volunteers behind NAT, keeps its identity in its home, and prints
the multiaddrs to hand out (pass them to 'swarm node --bootstrap').`,
		Flags: append(daemonFlags(),
			&cli.StringFlag{Name: "dashboard", Usage: "serve the public, read-only swarm page on this address (no token), such as 0.0.0.0:8080", EnvVars: []string{"SWARM_DASHBOARD"}},
			&cli.StringSliceFlag{Name: "dashboard-run", Usage: "run manifest whose peers and shards the public page shows, repeatable", EnvVars: []string{"SWARM_DASHBOARD_RUN"}},
		),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return cli.Exit("swarm bootstrap: unexpected arguments: "+c.Args().First(), 2)
			}
			log, err := newLogger(c, c.App.ErrWriter)
			if err != nil {
				return cli.Exit(err.Error(), 2)
			}
			cfg, err := daemonConfig(c, node.RoleBootstrap)
			if err != nil {
				return cli.Exit("swarm bootstrap: "+err.Error(), 1)
			}
			page, err := listenPublicPage(c)
			if err != nil {
				return cli.Exit("swarm bootstrap: "+err.Error(), 2)
			}
			n, err := node.New(cfg, log)
			if err != nil {
				page.close()
				return cli.Exit("swarm bootstrap: "+err.Error(), 1)
			}
			defer page.close()
			err = runDaemon(n, func() {
				page.serve(n, log)
				w := c.App.Writer
				fmt.Fprintln(w, "bootstrap node ready; hand out these addresses (swarm node --bootstrap ADDR):")
				for _, a := range n.Addrs() {
					fmt.Fprintln(w, "  "+a.String())
				}
				if page.ln != nil {
					fmt.Fprintf(w, "public swarm page: http://%s/\n", page.ln.Addr())
				}
			})
			if err != nil {
				return cli.Exit("swarm bootstrap: "+err.Error(), 1)
			}
			return nil
		},
	})
}
