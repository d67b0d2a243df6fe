package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/swarm-train/swarm/node/api"
)

func init() {
	register(&cli.Command{
		Name:  "status",
		Usage: "show what a running daemon is doing: identity, reachability, run, peers",
		Flags: []cli.Flag{
			homeFlag(), apiFlag(), apiTokenFlag(),
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object (schema in README.md)"},
			&cli.BoolFlag{Name: "watch", Usage: "refresh in place until Ctrl+C"},
			&cli.DurationFlag{Name: "interval", Value: 2 * time.Second, Usage: "refresh interval with --watch"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return cli.Exit("swarm status: unexpected arguments: "+c.Args().First(), 2)
			}
			cl, err := apiClient(c)
			if err != nil {
				return cli.Exit("swarm status: "+err.Error(), 1)
			}
			show := func(ctx context.Context, w io.Writer) error {
				ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				st, err := cl.Status(ctx)
				if err != nil {
					return err
				}
				if c.Bool("json") {
					enc := json.NewEncoder(w)
					enc.SetIndent("", "  ")
					return enc.Encode(st)
				}
				printStatus(w, st)
				return nil
			}
			if !c.Bool("watch") {
				if err := show(c.Context, c.App.Writer); err != nil {
					return cli.Exit("swarm status: "+err.Error(), 1)
				}
				return nil
			}
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer stop()
			for {
				var b strings.Builder
				if err := show(ctx, &b); err != nil {
					if ctx.Err() != nil {
						return nil
					}
					fmt.Fprintf(&b, "swarm status: %v\n", err)
				}
				// Home the cursor, print, clear what is left of the old frame.
				fmt.Fprint(c.App.Writer, "\x1b[H\x1b[2J"+b.String())
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(c.Duration("interval")):
				}
			}
		},
	})
}

// printStatus writes the human table of a status.
func printStatus(w io.Writer, st *api.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "peer id\t%s\n", st.PeerID)
	fmt.Fprintf(tw, "role\t%s (version %s, up %s)\n", st.Role, st.Version, (time.Duration(st.UptimeSeconds) * time.Second).String())
	if st.RunID != "" {
		run := st.RunID
		if st.RunName != "" {
			run = fmt.Sprintf("%s (%s)", st.RunName, st.RunID)
		}
		fmt.Fprintf(tw, "run\t%s\n", run)
	}
	fmt.Fprintf(tw, "reachability\t%s: %s\n", st.Reachability, st.ReachabilityHelp)
	if st.MaxUploadMbps > 0 {
		fmt.Fprintf(tw, "upload cap\t%g Mbit/s on training streams (--max-upload-mbps)\n", st.MaxUploadMbps)
	}
	fmt.Fprintf(tw, "dht\t%s mode, %d peers in routing table\n", st.DHTMode, st.RoutingTableSize)
	for i, a := range st.Addrs {
		label := ""
		if i == 0 {
			label = "addresses"
		}
		fmt.Fprintf(tw, "%s\t%s\n", label, a)
	}
	fmt.Fprintf(tw, "connected peers\t%d\n", len(st.Peers))
	if st.Role != "bootstrap" {
		relayed, viaTraining := 0, 0
		for _, p := range st.RunPeers {
			switch p.Connection {
			case "relayed":
				relayed++
			case "training-relay":
				viaTraining++
			}
		}
		line := fmt.Sprint(len(st.RunPeers))
		if viaTraining > 0 {
			line += fmt.Sprintf(" (%d through a training relay)", viaTraining)
		}
		if relayed > 0 {
			line += fmt.Sprintf(" (%d only through a relay: no training with them until hole punching connects them directly or a training relay carries it)", relayed)
		}
		fmt.Fprintf(tw, "run peers\t%s\n", line)
		for _, p := range st.UnreachablePeers {
			fmt.Fprintf(tw, "unreachable\t%s: %s\n", p.PeerID, p.Error)
		}
		if st.Stall != nil {
			fmt.Fprintf(tw, "connectivity\t%s (since %s)\n", st.Stall.Message, st.Stall.Since)
		}
	}
	if r := st.TrainingRelay; r != nil {
		line := fmt.Sprintf("%.0f Mbit/s, %.0f GB a day (%.2f GB relayed today), %d MiB a circuit", r.Mbps, r.GBPerDay,
			float64(r.UsedTodayBytes)/1e9, r.CircuitMB)
		if r.Spent {
			line += ": today's budget is spent, no new circuits until " + r.SpentUntil
		}
		fmt.Fprintf(tw, "training relay\t%s\n", line)
	}
	printSecurity(tw, st.Security)
	printPauseRow(tw, st.Services["pause"])
	printDataRow(tw, st.Services["data"])
	tw.Flush()
	if st.Engine != "" {
		printTraining(w, st, st.Services["training"])
	}
	for k, v := range st.Services {
		if k == "training" || k == "gpu" || k == "pause" || k == "data" {
			continue // shown above from the typed fields; in full with --json
		}
		fmt.Fprintf(w, "%s: %s\n", k, string(v))
	}
	if len(st.Peers) == 0 && len(st.UnreachablePeers) == 0 {
		return
	}
	inRun := map[string]bool{}
	for _, p := range st.RunPeers {
		inRun[p.PeerID] = true
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tRUN\tLINK\tSHARD\tSTATE\tEPOCH\tSAMPLES/S\tCREDIT\tDEVICE\tADDRESS")
	for _, p := range append(append([]api.Peer{}, st.Peers...), st.UnreachablePeers...) {
		addr := ""
		if len(p.Addrs) > 0 {
			addr = p.Addrs[0]
		}
		run := ""
		if inRun[p.PeerID] || p.Connection == "unreachable" {
			run = "yes"
		}
		shard, epoch, tp := "", "", ""
		if p.Shard != nil {
			shard, epoch, tp = fmt.Sprint(*p.Shard), fmt.Sprint(p.Epoch), fmt.Sprintf("%.0f", p.Throughput)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.PeerID, run, p.Connection, shard, p.State, epoch, tp, creditCell(p), p.Device, addr)
	}
	tw.Flush()
}

// printSecurity adds the admission and refusal rows of a status.
func printSecurity(tw io.Writer, sec *api.Security) {
	if sec == nil {
		return
	}
	adm := sec.Admission
	if sec.TokenExpires != "" {
		adm += ", token expires " + sec.TokenExpires
	}
	fmt.Fprintf(tw, "admission\t%s\n", adm)
	if sec.AdmissionRefused != "" {
		fmt.Fprintf(tw, "refused by a peer\t%s\n", sec.AdmissionRefused)
	}
	var total uint64
	var rows []string
	for _, r := range sec.Refusals {
		total += r.Count
		rows = append(rows, fmt.Sprintf("%s %s %d", r.Protocol, r.Reason, r.Count))
	}
	fmt.Fprintf(tw, "refused input\t%d (offenders %d, banned now %d)\n", total, sec.Offenders, sec.Banned)
	for _, r := range rows {
		fmt.Fprintf(tw, "\t  %s\n", r)
	}
}

// creditCell is a peer's claimed credit and what this node's check of it
// found: "(backed)", "(unchecked)" or "(REFUSED)".
func creditCell(p api.Peer) string {
	if p.Credit == 0 && p.CreditCheck == "" {
		return ""
	}
	switch p.CreditCheck {
	case "":
		return fmt.Sprintf("%d (unchecked)", p.Credit)
	case "backed":
		return fmt.Sprintf("%d (backed)", p.Credit)
	default:
		return fmt.Sprintf("%d (REFUSED)", p.Credit)
	}
}
