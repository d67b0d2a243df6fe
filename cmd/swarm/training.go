package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/engine/choose"
	"github.com/swarm-train/swarm/engine/torch"
	"github.com/swarm-train/swarm/gpu"
	"github.com/swarm-train/swarm/node"
	"github.com/swarm-train/swarm/node/api"
	"github.com/swarm-train/swarm/node/training"
	"github.com/swarm-train/swarm/spec/run"
	swarmdata "github.com/swarm-train/swarm/swarm/data"
	"github.com/swarm-train/swarm/swarm/trainer"
)

// trainingFlags are the `swarm node` flags of swarm training (with --run);
// the engine and the volunteer's limits come from gpuFlags.
func trainingFlags() []cli.Flag {
	return []cli.Flag{
		&cli.IntFlag{Name: "shard", Value: -1, Usage: "hold this shard instead of choosing (and never rebalance)", EnvVars: []string{"SWARM_SHARD"}},
		&cli.StringFlag{Name: "data-dir", Usage: "directory with the MNIST files or a text run's corpus, checked against the manifest's dataset.root (default: $SWARM_DATA, then the Go module cache / the manifest's path; what is missing is fetched from the run's peers)", EnvVars: []string{"SWARM_DATA"}},
		&cli.BoolFlag{Name: "no-train", Usage: "with --run: join the run's network without training", EnvVars: []string{"SWARM_NO_TRAIN"}},
		&cli.StringFlag{Name: "bulk-listen", Usage: "host:port of a TCP listener for averaging transfers on direct AES-GCM connections instead of libp2p streams (far less CPU per byte on fast links; peers with one use it among themselves, others stay on libp2p). Peers dial it at the IP of their libp2p connection to this node, so forward it too behind NAT. Port 0 picks one; empty: off", EnvVars: []string{"SWARM_BULK_LISTEN"}},
		&cli.IntFlag{Name: "in-flight", Usage: "micro-batches a first-shard node keeps in the pipeline at once, 1-64 (default: adapts to the pipeline's round trip)", EnvVars: []string{"SWARM_IN_FLIGHT"}},
		&cli.DurationFlag{Name: "rebalance-every", Value: 20 * time.Second, Usage: "mean interval between shard rebalancing checks", EnvVars: []string{"SWARM_REBALANCE_EVERY"}},
		&cli.IntFlag{Name: "checkpoint-every-epochs", Usage: "checkpoint the shard's state every this many epochs (default: the manifest's checkpoint.every_epochs, else 50)", EnvVars: []string{"SWARM_CHECKPOINT_EVERY_EPOCHS"}},
		&cli.DurationFlag{Name: "checkpoint-every", Usage: "checkpoint the shard's state at least this often (default: the manifest's checkpoint.every_minutes, else 10m)", EnvVars: []string{"SWARM_CHECKPOINT_EVERY"}},
		&cli.IntFlag{Name: "checkpoint-keep", Usage: "checkpoints kept per shard under HOME/runs/<run ID>/ (default: the manifest's checkpoint.keep, else 3)", EnvVars: []string{"SWARM_CHECKPOINT_KEEP"}},
		&cli.BoolFlag{Name: "no-checkpoints", Usage: "neither write nor resume from checkpoints (a restart then syncs from live holders only)", EnvVars: []string{"SWARM_NO_CHECKPOINTS"}},
		&cli.StringFlag{Name: "bench-cache", Usage: "swarm bench's cache, read for the throughput to announce (default: the user cache dir's swarm/bench.json)", EnvVars: []string{"SWARM_BENCH_CACHE"}},
		&cli.DurationFlag{Name: "gpu-sample-every", Value: 5 * time.Second, Usage: "interval between GPU telemetry samples for the limits", EnvVars: []string{"SWARM_GPU_SAMPLE_EVERY"}},
		// Fault injection for the exclusion tests: send NaN activations and gradients.
		&cli.BoolFlag{Name: "fault-nan", Hidden: true, EnvVars: []string{"SWARM_FAULT_NAN"}},
		// Fault injection for the Byzantine-peer tests: lie in records or state
		// sync (epoch-ahead, samples, normsq, donor, donor-chunks; comma-separated).
		&cli.StringFlag{Name: "fault", Hidden: true, EnvVars: []string{"SWARM_FAULT"}},
		// Fault injection for the data tests: serve data chunks that fail their CID.
		&cli.BoolFlag{Name: "fault-data", Hidden: true, EnvVars: []string{"SWARM_FAULT_DATA"}},
	}
}

// openEngine chooses and opens the training engine under the volunteer's
// limits (--engine, --gpus, --cpu-threads, ...). A torch engine that cannot
// start falls back to native, and the reason is logged. It returns the
// engine, the choice, the device's name (GPU model, or the CPU and its
// thread cap) and the lent GPUs.
func openEngine(c *cli.Context, l gpu.Limits, log *slog.Logger) (engine.Engine, choose.Choice, string, []gpu.Device, error) {
	found, sel, err := inspectGPUs(c, l)
	if err != nil {
		return nil, choose.Choice{}, "", nil, err
	}
	opts := torchOptions(c)
	opts.Logger = log
	e, choice, err := choose.Open(found.Engine, l, sel, opts)
	if err != nil {
		return nil, choice, "", nil, err
	}
	if choice.Fallback {
		log.Warn("torch engine unavailable, training on the native engine", "reason", choice.Reason)
	} else {
		log.Info("training engine", "engine", choice.Name(), "reason", choice.Reason)
	}
	if choice.Device != "cuda" {
		sel = nil
	}
	return e, choice, engineDevice(e, l), sel, nil
}

// engineDevice names the device e computes on: the GPU model for a torch
// engine on CUDA, else the CPU model with the thread cap. It is also the
// device in swarm bench's cache keys.
func engineDevice(e engine.Engine, l gpu.Limits) string {
	if te, ok := e.(*torch.Engine); ok && te.Device() == "cuda" && len(te.Info().Devices) > 0 {
		return te.Info().Devices[0]
	}
	return cpuName(l.Threads())
}

// announcedRate is the compute rate (FLOP/s) the node announces before it
// has measured itself while training: swarm bench's cached result in the
// cache at path ("" = the default) for the run's model on this device and
// engine (any of the run's shard sizes), or else a quick measurement of the
// first shard.
func announcedRate(path string, e engine.Engine, m *run.Manifest, device string, log *slog.Logger) float64 {
	if path == "" {
		path, _ = choose.DefaultBenchCachePath()
	}
	if path != "" {
		cache, err := choose.OpenBenchCache(path)
		if err != nil {
			log.Warn("bench cache unreadable; measuring instead", "err", err)
		} else {
			for _, sp := range m.Shards {
				if r, ok := cache.Get(choose.BenchKey(device, e.Name(), m.Model, sp.End-sp.Start, m.Training.BatchSize)); ok && r.GFLOPSec > 0 {
					log.Info("throughput from swarm bench's cache", "gflop_per_s", r.GFLOPSec, "units", r.Units, "measured", r.When)
					return r.GFLOPSec * 1e9
				}
			}
		}
	}
	sm, err := choose.SpanManifest(m, m.Shards[0].End-m.Shards[0].Start)
	if err == nil {
		var r choose.BenchResult
		if r, err = choose.BenchShard(e, sm, 0, m.Training.BatchSize, 300*time.Millisecond); err == nil && r.GFLOPSec > 0 {
			log.Info("throughput measured (run swarm bench for a steadier figure)", "gflop_per_s", r.GFLOPSec, "samples_per_s", r.SamplesSec)
			return r.GFLOPSec * 1e9
		}
	}
	log.Warn("could not measure throughput; announcing a default until training measures it", "err", err)
	return 0
}

// attachTraining adds the training service to cfg when the node was given a
// run manifest: the engine chosen under the volunteer's limits, the
// announced throughput and, when GPUs train, their governor. It reads the
// data set from data (attached before it).
func attachTraining(c *cli.Context, cfg *node.Config, m *run.Manifest, data *training.Data, log *slog.Logger) error {
	if m == nil || c.Bool("no-train") {
		return nil
	}
	l, err := gpuLimits(c)
	if err != nil {
		return err
	}
	if b := c.String("bulk-listen"); b != "" {
		if _, err := net.ResolveTCPAddr("tcp", b); err != nil {
			return fmt.Errorf("--bulk-listen %q: want HOST:PORT (port 0 picks one): %v", b, err)
		}
		if cfg.MaxUploadMbps > 0 {
			return fmt.Errorf("--bulk-listen %q with --max-upload-mbps %g: the upload cap is kept on libp2p streams, which bulk transfers leave; use one or the other", b, cfg.MaxUploadMbps)
		}
	}
	if f := c.Int("in-flight"); f < 0 || f > trainer.MaxInFlight {
		return fmt.Errorf("--in-flight %d: want 1 to %d, or 0 to adapt", f, trainer.MaxInFlight)
	}
	ck := trainer.Checkpoints{Dir: filepath.Join(cfg.Home, "runs"), EveryEpochs: c.Int("checkpoint-every-epochs"),
		Every: c.Duration("checkpoint-every"), Keep: c.Int("checkpoint-keep")}
	if ck.EveryEpochs < 0 || ck.Every < 0 || ck.Keep < 0 || ck.Keep > run.MaxCheckpointKeep {
		return fmt.Errorf("--checkpoint-every-epochs, --checkpoint-every and --checkpoint-keep must not be negative (keep at most %d)", run.MaxCheckpointKeep)
	}
	if c.Bool("no-checkpoints") || cfg.Home == "" {
		ck = trainer.Checkpoints{}
	}
	if m.Dataset.Name == run.DatasetMNIST && m.Dataset.Root == "" {
		// MNIST found locally (no data set to fetch first): decode it
		// while the engine starts, so a (re)started node trains sooner.
		go func() { _, _ = swarmdata.LoadMNIST(c.String("data-dir")) }()
	}
	eng, choice, device, gpus, err := openEngine(c, l, log)
	if err != nil {
		return err
	}
	svc := &training.Service{Config: trainer.Config{
		Manifest:       m,
		Engine:         eng,
		Device:         device,
		Shard:          c.Int("shard"),
		DataDir:        c.String("data-dir"),
		JoinDelay:      3 * time.Second,
		RebalanceEvery: c.Duration("rebalance-every"),
		InFlight:       c.Int("in-flight"),
		BulkListen:     c.String("bulk-listen"),
		FaultNaN:       c.Bool("fault-nan"),
		Fault:          c.String("fault"),
		Logger:         log,
		Rate:           announcedRate(c.String("bench-cache"), eng, m, device, log),
		Checkpoints:    ck,
	}, Engine: choice.Name(), Limits: l, SampleEvery: c.Duration("gpu-sample-every"), Data: data}
	if len(gpus) > 0 {
		// GPUs train: the governor watches them (pausing on heat or on
		// other processes' use). Without NVML the limits cannot be checked.
		if s, err := gpu.Open(); err != nil {
			log.Warn("GPU telemetry unavailable; the pause limits are not enforced", "err", err)
		} else {
			svc.Sampler = s
		}
	}
	cfg.Services = append(cfg.Services, svc)
	return nil
}

// printTraining renders a node's training fields of a status answer, with
// the extras of services.training (raw may be nil).
func printTraining(w io.Writer, st *api.Status, raw json.RawMessage) {
	var ts trainer.Status
	extras := raw != nil && json.Unmarshal(raw, &ts) == nil
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "device\t%s (%s engine)\n", st.Device, st.Engine)
	if g := st.Governor; g != nil {
		if g.Reason != "" {
			fmt.Fprintf(tw, "gpu limits\t%s: %s\n", g.State, g.Reason)
		} else {
			fmt.Fprintf(tw, "gpu limits\t%s\n", g.State)
		}
	}
	epoch := fmt.Sprintf("%d of %d", st.Epoch, st.Epochs)
	if extras {
		epoch += fmt.Sprintf(" (%d/%d samples, %s mode)", ts.Samples, ts.TargetBatch, ts.Mode)
	}
	fmt.Fprintf(tw, "epoch\t%s\n", epoch)
	self := fmt.Sprintf("shard %d, %s", st.Shard, st.State)
	if extras {
		self += fmt.Sprintf(", utilisation %.0f%%", 100*ts.Utilization)
	}
	fmt.Fprintf(tw, "this node\t%s\n", self)
	fmt.Fprintf(tw, "swarm\t%.0f samples/s, loss %.4f\n", st.SamplesPerS, st.Loss)
	fmt.Fprintf(tw, "credited\t%d samples (backed by receipts the stages signed)\n", st.Credit)
	if a := st.Averaging; a != nil {
		fmt.Fprintf(tw, "last averaging\tround %d, group of %d, %.0f%% averaged, %.2fs\n", a.Round, a.GroupSize, 100*a.Fraction, a.Seconds)
	}
	if extras && ts.EpochPhases != nil {
		fmt.Fprintf(tw, "epoch time\t%s\n", ts.EpochPhases)
	}
	if extras && ts.Bulk != nil {
		fmt.Fprintf(tw, "bulk transfers\t%d direct, %d on libp2p (listener %s)\n", ts.Bulk.Transfers, ts.Bulk.OnLibp2p, ts.Bulk.Listen)
	}
	if extras && ts.Accuracy >= 0 && ts.ValLoss == nil {
		fmt.Fprintf(tw, "test accuracy\t%.4f\n", ts.Accuracy)
	}
	if extras && ts.ValLoss != nil && ts.ValPerplexity != nil {
		fmt.Fprintf(tw, "validation\tloss %.4f, perplexity %.2f (this node's last evaluation)\n", *ts.ValLoss, *ts.ValPerplexity)
	}
	tw.Flush()
	if len(st.Shards) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARD\tPEERS\tSAMPLES/S\tHOLDERS")
	for _, s := range st.Shards {
		ids := make([]string, len(s.Peers))
		for i, p := range s.Peers {
			ids[i] = shortID(p)
		}
		fmt.Fprintf(tw, "%d\t%d\t%.0f\t%s\n", s.Index, len(s.Peers), s.Throughput, strings.Join(ids, " "))
	}
	tw.Flush()
	for _, s := range st.Shards {
		if s.NoHolder {
			seen := "never seen held"
			if s.LastSeenEpoch != nil {
				seen = fmt.Sprintf("last seen epoch %d", *s.LastSeenEpoch)
			}
			fmt.Fprintf(w, "shard %d: no holder (%s); training waits until a node takes it\n", s.Index, seen)
		}
	}
}

func shortID(id string) string {
	if len(id) > 16 {
		return id[:8] + "…" + id[len(id)-6:]
	}
	return strings.TrimSpace(id)
}
