package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/urfave/cli/v2"

	"github.com/swarm-train/swarm/node"
	"github.com/swarm-train/swarm/node/api"
	"github.com/swarm-train/swarm/node/client"
)

func init() {
	register(&cli.Command{
		Name:  "id",
		Usage: "print this node's peer ID and the addresses to hand out",
		Description: `Asks the running daemon; with no daemon running, reads the peer ID from the
home's identity file (addresses are then unknown).`,
		Flags: []cli.Flag{
			homeFlag(), apiFlag(), apiTokenFlag(),
			&cli.BoolFlag{Name: "json", Usage: "print a JSON object {peer_id, addrs}"},
			&cli.BoolFlag{Name: "addrs", Usage: "print only the full multiaddrs (/.../p2p/ID), one per line"},
		},
		Action: func(c *cli.Context) error {
			id, err := lookupID(c)
			if err != nil {
				return cli.Exit("swarm id: "+err.Error(), 1)
			}
			w := c.App.Writer
			switch {
			case c.Bool("json"):
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(id)
			case c.Bool("addrs"):
				for _, a := range id.Addrs {
					fmt.Fprintln(w, a)
				}
			default:
				fmt.Fprintln(w, id.PeerID)
				for _, a := range id.Addrs {
					fmt.Fprintln(w, "  "+a)
				}
			}
			return nil
		},
	})
}

func lookupID(c *cli.Context) (*api.ID, error) {
	cl, err := apiClient(c)
	if err == nil {
		ctx, cancel := context.WithTimeout(c.Context, 10*time.Second)
		defer cancel()
		return cl.ID(ctx)
	}
	if !errors.Is(err, client.ErrNoDaemon) {
		return nil, err
	}
	sk, kerr := node.LoadIdentity(c.String("home"))
	if kerr != nil {
		return nil, fmt.Errorf("%v; and %v", err, kerr)
	}
	pid, kerr := peer.IDFromPrivateKey(sk)
	if kerr != nil {
		return nil, kerr
	}
	return &api.ID{PeerID: pid.String(), Addrs: []string{}}, nil
}
