package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/swarm-train/swarm/gpu/native"
	"github.com/swarm-train/swarm/node"
	"github.com/swarm-train/swarm/swarm/run"
	"github.com/swarm-train/swarm/swarm/trainer"
)

// trainingFlags are the `swarm node` flags of swarm training (with --run).
func trainingFlags() []cli.Flag {
	return []cli.Flag{
		&cli.IntFlag{Name: "shard", Value: -1, Usage: "hold this shard instead of choosing (and never rebalance)", EnvVars: []string{"SWARM_SHARD"}},
		&cli.StringFlag{Name: "data-dir", Usage: "directory with the MNIST files (default: $SWARM_DATA or the Go module cache)", EnvVars: []string{"SWARM_DATA"}},
		&cli.IntFlag{Name: "threads", Usage: "engine threads (default: all cores)", EnvVars: []string{"SWARM_THREADS"}},
		&cli.BoolFlag{Name: "no-train", Usage: "with --run: join the run's network without training", EnvVars: []string{"SWARM_NO_TRAIN"}},
		&cli.DurationFlag{Name: "rebalance-every", Value: 20 * time.Second, Usage: "mean interval between shard rebalancing checks", EnvVars: []string{"SWARM_REBALANCE_EVERY"}},
		// Fault injection for the exclusion tests: send NaN activations and gradients.
		&cli.BoolFlag{Name: "fault-nan", Hidden: true, EnvVars: []string{"SWARM_FAULT_NAN"}},
	}
}

// attachTraining adds the training service to cfg when the node was given a
// run manifest.
func attachTraining(c *cli.Context, cfg *node.Config, m *run.Manifest, log *slog.Logger) {
	if m == nil || c.Bool("no-train") {
		return
	}
	var opts []native.Option
	if n := c.Int("threads"); n > 0 {
		opts = append(opts, native.WithThreads(n))
	}
	eng := native.New(opts...)
	cfg.Services = append(cfg.Services, &node.Training{Config: trainer.Config{
		Manifest:       m,
		Engine:         eng,
		Device:         fmt.Sprintf("cpu (%s engine, %d threads)", eng.Name(), eng.Threads()),
		Shard:          c.Int("shard"),
		DataDir:        c.String("data-dir"),
		JoinDelay:      3 * time.Second,
		RebalanceEvery: c.Duration("rebalance-every"),
		FaultNaN:       c.Bool("fault-nan"),
		Logger:         log,
	}})
}

// printTraining renders services.training of a status answer.
func printTraining(w io.Writer, raw json.RawMessage) {
	var st trainer.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		fmt.Fprintf(w, "training: %s\n", raw)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "training\t%s (%s), %s mode\n", st.RunName, st.RunID, st.Mode)
	fmt.Fprintf(tw, "epoch\t%d of %d (%d/%d samples)\n", st.Epoch, st.Epochs, st.Samples, st.TargetBatch)
	fmt.Fprintf(tw, "this node\tshard %d, %s, utilisation %.0f%%\n", st.Shard, st.State, 100*st.Utilization)
	fmt.Fprintf(tw, "swarm\t%.0f samples/s, loss %.4f\n", st.SamplesPerS, st.Loss)
	a := st.Averaging
	if a.GroupSize > 0 {
		fmt.Fprintf(tw, "last averaging\tround %d, group of %d, %.0f%% averaged, %.2fs\n", a.Round, a.GroupSize, 100*a.Fraction, a.Seconds)
	}
	if st.Accuracy >= 0 {
		fmt.Fprintf(tw, "test accuracy\t%.4f\n", st.Accuracy)
	}
	tw.Flush()
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARD\tPEERS\tSAMPLES/S")
	for _, s := range st.Shards {
		fmt.Fprintf(tw, "%d\t%d\t%.0f\n", s.Index, len(s.Peers), s.Throughput)
	}
	fmt.Fprintln(tw, "PEER\tSHARD\tSTATE\tEPOCH\tSAMPLES/S\tDEVICE")
	for _, p := range st.Peers {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%.0f\t%s\n", shortID(p.PeerID), p.Shard, p.State, p.Epoch, p.Throughput, p.Device)
	}
	tw.Flush()
}

func shortID(id string) string {
	if len(id) > 16 {
		return id[:8] + "…" + id[len(id)-6:]
	}
	return strings.TrimSpace(id)
}
