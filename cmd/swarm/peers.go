package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

func init() {
	register(&cli.Command{
		Name:  "peers",
		Usage: "list the daemon's connected peers (or only its run's peers), one per line",
		Flags: []cli.Flag{
			homeFlag(), apiFlag(), apiTokenFlag(),
			&cli.BoolFlag{Name: "run", Usage: "only the live peers of this node's run"},
			&cli.BoolFlag{Name: "json", Usage: "print a JSON array of {peer_id, addrs}"},
		},
		Action: func(c *cli.Context) error {
			cl, err := apiClient(c)
			if err != nil {
				return cli.Exit("swarm peers: "+err.Error(), 1)
			}
			ctx, cancel := context.WithTimeout(c.Context, 10*time.Second)
			defer cancel()
			ps, err := cl.Peers(ctx, c.Bool("run"))
			if err != nil {
				return cli.Exit("swarm peers: "+err.Error(), 1)
			}
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				return enc.Encode(ps)
			}
			for _, p := range ps {
				fmt.Fprintf(c.App.Writer, "%s %s\n", p.PeerID, strings.Join(p.Addrs, ","))
			}
			return nil
		},
	})
}
