// Command gpu measures the PyTorch engine's training samples/s with a chosen
// snapshot policy (torch.Options.SnapshotEvery), the same way `swarm bench`
// measures an engine (choose.BenchShard on the model's first k units). It prints
// a JSON array of choose.BenchResult. scripts/bench/gpu.sh uses it to time the
// node copying the worker's whole state after every step next to the default.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/swarm-train/swarm/engine/choose"
	"github.com/swarm-train/swarm/engine/torch"
	"github.com/swarm-train/swarm/spec/run"
)

func main() {
	model := flag.String("model", run.ArchMLPMNIST, "mlp-mnist, gpt-char or a llama preset (as `swarm bench --model`)")
	units := flag.String("units", "1", "shard sizes, comma-separated")
	threads := flag.Int("threads", 1, "worker CPU threads")
	minTime := flag.Duration("time", 2*time.Second, "minimum measuring time per shard size")
	every := flag.Int("snapshot-every", 1, "torch.Options.SnapshotEvery")
	device := flag.String("device", "cpu", "torch device: cpu, cuda or auto")
	flag.Parse()
	if err := bench(*model, *units, *threads, *minTime, *every, *device); err != nil {
		fmt.Fprintln(os.Stderr, "gpu bench:", err)
		os.Exit(1)
	}
}

const benchCharset = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"-()\n"

func bench(model, units string, threads int, minTime time.Duration, every int, device string) error {
	var m *run.Manifest
	switch model {
	case run.ArchMLPMNIST:
		m = run.NewMLPMNIST(1)
	case run.ArchGPTChar: // the vocabulary `swarm bench` uses
		m = run.NewGPTChar(benchCharset, 1)
	case run.PresetLlamaTiny, run.PresetLlama124M, run.PresetLlama350M:
		var err error
		if m, err = run.NewLlama(model, benchCharset, 1); err != nil {
			return err
		}
	default:
		return fmt.Errorf("model %q: want %s, %s or a llama preset", model, run.ArchMLPMNIST, run.ArchGPTChar)
	}
	e, err := torch.New(torch.Options{Device: device, Threads: threads, SnapshotEvery: every})
	if err != nil {
		return err
	}
	defer e.Close()
	var out []choose.BenchResult
	for _, u := range strings.Split(units, ",") {
		k, err := strconv.Atoi(strings.TrimSpace(u))
		if err != nil {
			return fmt.Errorf("units %q: %v", units, err)
		}
		sm, err := choose.SpanManifest(m, k)
		if err != nil {
			return err
		}
		r, err := choose.BenchShard(e, sm, 0, m.Training.BatchSize, minTime)
		if err != nil {
			return fmt.Errorf("shard of %d units: %w", k, err)
		}
		out = append(out, r)
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}
