package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/swarm-train/swarm/node/api"
)

func init() {
	register(&cli.Command{
		Name:  "ui",
		Usage: "print the address of the daemon's web dashboard (with its token), or open it with --open",
		Description: `The dashboard is served by the daemon's control API. The address carries the API
token once: the browser gets it as a cookie and the address bar drops it. Anyone
with the address can drive the node, so do not share it.`,
		Flags: []cli.Flag{
			homeFlag(), apiFlag(), apiTokenFlag(),
			&cli.BoolFlag{Name: "open", Usage: "open the address in the desktop's browser"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return cli.Exit("swarm ui: unexpected arguments: "+c.Args().First(), 2)
			}
			cl, err := apiClient(c)
			if err != nil {
				return cli.Exit("swarm ui: "+err.Error(), 1)
			}
			ctx, cancel := context.WithTimeout(c.Context, 10*time.Second)
			defer cancel()
			if _, err := cl.ID(ctx); err != nil { // the daemon is up and takes the token
				return cli.Exit("swarm ui: "+err.Error(), 1)
			}
			u, err := cl.DashboardURL()
			if err != nil {
				return cli.Exit("swarm ui: "+err.Error(), 1)
			}
			fmt.Fprintln(c.App.Writer, u)
			if c.Bool("open") {
				if err := openBrowser(u); err != nil {
					return cli.Exit("swarm ui: open a browser: "+err.Error()+" (open the address above yourself)", 1)
				}
			}
			return nil
		},
	})
	for _, pause := range []bool{true, false} {
		name, usage := "pause", "hold this node's training until 'swarm resume' (it stays in the swarm, as paused)"
		if !pause {
			name, usage = "resume", "clear 'swarm pause' (other pause rules, such as --active-hours, may still hold training)"
		}
		register(&cli.Command{
			Name:  name,
			Usage: usage,
			Flags: []cli.Flag{homeFlag(), apiFlag(), apiTokenFlag(), &cli.BoolFlag{Name: "json", Usage: "print the pause state as JSON"}},
			Action: func(c *cli.Context) error {
				if c.NArg() > 0 {
					return cli.Exit("swarm "+name+": unexpected arguments: "+c.Args().First(), 2)
				}
				cl, err := apiClient(c)
				if err != nil {
					return cli.Exit("swarm "+name+": "+err.Error(), 1)
				}
				ctx, cancel := context.WithTimeout(c.Context, 10*time.Second)
				defer cancel()
				var p *api.Pause
				if pause {
					p, err = cl.Pause(ctx)
				} else {
					p, err = cl.Resume(ctx)
				}
				if err != nil {
					return cli.Exit("swarm "+name+": "+err.Error(), 1)
				}
				if c.Bool("json") {
					enc := json.NewEncoder(c.App.Writer)
					enc.SetIndent("", "  ")
					return enc.Encode(p)
				}
				printPause(c.App.Writer, p)
				return nil
			},
		})
	}
}

// printPause says whether training runs and which rules hold it.
func printPause(w io.Writer, p *api.Pause) {
	if len(p.Holds) == 0 {
		fmt.Fprintln(w, "training runs: no pause rule holds it")
		return
	}
	rules := make([]string, len(p.Holds))
	for i, h := range p.Holds {
		rules[i] = h.Rule
	}
	fmt.Fprintf(w, "training paused by %s:\n", strings.Join(rules, ", "))
	for _, h := range p.Holds {
		fmt.Fprintf(w, "  %s: %s (since %s)\n", h.Rule, h.Reason, h.Since)
	}
}

// printPauseRow adds the pause rules to swarm status's table: which rules
// hold training and why (raw is services.pause; nothing without training).
func printPauseRow(w io.Writer, raw json.RawMessage) {
	var p api.Pause
	if raw == nil || json.Unmarshal(raw, &p) != nil {
		return
	}
	var rules []string
	if p.ActiveHours != "" {
		rules = append(rules, "active hours "+p.ActiveHours)
	}
	if p.PauseOtherCPUPct > 0 {
		rules = append(rules, fmt.Sprintf("pause above %d%% other CPU", p.PauseOtherCPUPct))
	}
	if p.PauseOnInput != "" {
		rules = append(rules, "pause on keyboard or mouse input within "+p.PauseOnInput)
	}
	line := "running"
	if len(p.Holds) > 0 {
		line = "paused"
	}
	if len(rules) > 0 {
		line += " (" + strings.Join(rules, ", ") + ")"
	}
	fmt.Fprintf(w, "training\t%s\n", line)
	for _, h := range p.Holds {
		fmt.Fprintf(w, "  held by %s\t%s (since %s)\n", h.Rule, h.Reason, h.Since)
	}
}

// openBrowser hands u to the desktop's opener and does not wait for it.
func openBrowser(u string) error {
	var cmd *exec.Cmd
	switch runtime.GOOS {
	case "darwin":
		cmd = exec.Command("open", u)
	case "windows":
		cmd = exec.Command("rundll32", "url.dll,FileProtocolHandler", u)
	default:
		cmd = exec.Command("xdg-open", u)
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	go cmd.Wait() //nolint:errcheck // the opener's exit is not ours to judge
	return nil
}
