package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/data"
	"github.com/swarm-train/swarm/swarm/train"
)

func init() {
	register(&cli.Command{
		Name:  "train",
		Usage: "train a run's whole model on this machine (every shard in one process)",
		Description: `The single-node baseline: builds every shard of the run on the chosen engine
(--engine auto|native|torch, the GPU limits and --cpu-threads as for swarm node),
accumulates gradients over the target batch, clips by the global norm, follows
the learning-rate schedule, validates periodically and reports the held-out
metric (MNIST test accuracy, or text validation loss next to a bigram model's).
Interrupting it (Ctrl-C) writes a checkpoint first when --checkpoint-dir is set.`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "run", Required: true, Usage: "run manifest (swarm run init)"},
			&cli.IntFlag{Name: "steps", Usage: "stop at this optimizer step (default: the manifest's training.steps)"},
			&cli.StringFlag{Name: "checkpoint-dir", Usage: "write checkpoints here"},
			&cli.IntFlag{Name: "checkpoint-every", Usage: "steps between checkpoints (default: at each validation)"},
			&cli.IntFlag{Name: "keep", Value: 3, Usage: "checkpoints to keep"},
			&cli.BoolFlag{Name: "resume", Usage: "continue from the newest valid checkpoint in --checkpoint-dir"},
			&cli.IntFlag{Name: "eval-every", Usage: "steps between validations (default: a tenth of the run; -1: only at the end)"},
			&cli.IntFlag{Name: "eval-samples", Value: 2000, Usage: "held-out samples in periodic validations (0: all; the final one uses all)"},
			&cli.StringFlag{Name: "export", Usage: "write the trained model as safetensors to this file"},
			&cli.StringFlag{Name: "data-dir", Usage: "folder with the MNIST .gz files or a text run's corpus (default: $SWARM_DATA, then the GoMNIST module / the manifest's path)", EnvVars: []string{data.EnvDataDir}},
			&cli.StringFlag{Name: "home", Value: defaultHome(), Usage: "home whose data cache (HOME/data, filled by swarm node) may hold the run's data set", EnvVars: []string{"SWARM_HOME"}},
			&cli.BoolFlag{Name: "json", Usage: "print the result as a JSON object on stdout"},
		}, gpuFlags()...),
		Action: trainCmd,
	})
}

func trainCmd(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	m, err := run.Load(c.String("run"))
	if err != nil {
		return fmt.Errorf("train: %w", err)
	}
	if c.Bool("resume") && c.String("checkpoint-dir") == "" {
		return errors.New("train: --resume needs --checkpoint-dir")
	}
	l, err := gpuLimits(c)
	if err != nil {
		return fmt.Errorf("train: %w", err)
	}
	eng, _, _, _, err := openEngine(c, l, log)
	if err != nil {
		return fmt.Errorf("train: %w", err)
	}
	defer eng.Close()
	cfg := train.Config{
		Steps:           c.Int("steps"),
		EvalEvery:       c.Int("eval-every"),
		EvalSamples:     c.Int("eval-samples"),
		CheckpointDir:   c.String("checkpoint-dir"),
		CheckpointEvery: c.Int("checkpoint-every"),
		Keep:            c.Int("keep"),
		Resume:          c.Bool("resume"),
		Log:             log,
	}
	dir, err := localData(m, c.String("data-dir"), c.String("home"), log)
	if err != nil {
		return fmt.Errorf("train: %w", err)
	}
	if dir != "" {
		cfg.Data = append(cfg.Data, data.WithDataDir(dir))
	}
	if isTerminal(c.App.ErrWriter) {
		cfg.Progress = c.App.ErrWriter
	}
	tr, err := train.NewSolo(m, eng, cfg)
	if err != nil {
		return fmt.Errorf("train: %w", err)
	}
	defer tr.Close()
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := tr.Run(ctx)
	if err != nil {
		if res != nil && res.Checkpoint != "" {
			log.Info("checkpoint written", "path", res.Checkpoint, "step", tr.StepCount())
		}
		return fmt.Errorf("train: %w", err)
	}
	if m.Dataset.Name == run.DatasetText {
		if l, k, err := data.BigramBaseline(m); err == nil {
			res.BigramValLoss = &l
			log.Debug("bigram baseline", "val_loss", l, "k", k)
		} else {
			log.Warn("bigram baseline", "err", err)
		}
	}
	if out := c.String("export"); out != "" {
		if err := exportModel(m, tr.State(), out); err != nil {
			return fmt.Errorf("train: export: %w", err)
		}
		log.Info("exported", "path", out)
	}
	w := c.App.Writer
	if c.Bool("json") {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	printResult(w, res)
	return nil
}

func printResult(w io.Writer, r *train.Result) {
	fmt.Fprintf(w, "run %s (%s, %d shard(s), %s engine)\n", r.RunID, r.Model, r.Shards, r.Engine)
	fmt.Fprintf(w, "  steps %d, samples %d, %.1fs (%.1fs training, %.0f samples/s), last train loss %.4f\n",
		r.Steps, r.Samples, r.Seconds, r.TrainSeconds, r.SamplesPerSec, r.TrainLoss)
	if r.TestAccuracy != nil {
		fmt.Fprintf(w, "  test accuracy %.2f%% (test loss %.4f)\n", 100**r.TestAccuracy, *r.TestLoss)
	}
	if r.ValLoss != nil {
		fmt.Fprintf(w, "  validation loss %.4f, perplexity %.2f", *r.ValLoss, math.Exp(*r.ValLoss))
		if r.BigramValLoss != nil {
			fmt.Fprintf(w, " (bigram model %.4f, perplexity %.2f)", *r.BigramValLoss, math.Exp(*r.BigramValLoss))
		}
		fmt.Fprintln(w)
	}
	if r.ResumedFrom != "" {
		fmt.Fprintf(w, "  resumed from %s\n", r.ResumedFrom)
	}
	if r.Checkpoint != "" {
		fmt.Fprintf(w, "  checkpoint %s\n", r.Checkpoint)
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
