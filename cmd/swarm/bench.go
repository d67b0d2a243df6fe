package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/swarm-train/swarm/engine/choose"
	"github.com/swarm-train/swarm/engine/torch"
	"github.com/swarm-train/swarm/spec/run"
)

// benchOutput is what `swarm bench` prints.
type benchOutput struct {
	Engine  choose.Choice        `json:"engine"`
	Device  string               `json:"device"`
	Results []choose.BenchResult `json:"results"`
	Cached  []bool               `json:"cached"`
}

func init() {
	register(&cli.Command{
		Name:  "bench",
		Usage: "measure training samples/s of each shard size on the chosen engine (cached per device and model)",
		Description: `For every shard size k (1 to the model's units), times forward, backward and
optimizer step of a shard holding units [0, k) and reports samples/s and GFLOP/s.
Results are cached per device, engine, model and batch; the node announces them.`,
		Flags: append(gpuFlags(),
			&cli.StringFlag{Name: "model", Value: run.ArchMLPMNIST, Usage: "built-in model: mlp-mnist, gpt-char or a llama preset (llama-tiny, llama-124m, llama-350m; ignored with --run)"},
			&cli.StringFlag{Name: "run", Usage: "run manifest whose model to measure"},
			&cli.IntFlag{Name: "batch", Usage: "micro-batch size (default: the manifest's)"},
			&cli.StringFlag{Name: "units", Usage: "shard sizes to measure, e.g. 1,3 (default: all)"},
			&cli.DurationFlag{Name: "time", Value: 2 * time.Second, Usage: "minimum measuring time per shard size"},
			&cli.BoolFlag{Name: "no-cache", Usage: "measure even when a cached result exists, and do not store"},
			&cli.StringFlag{Name: "cache", Usage: "cache file (default: the user cache dir's swarm/bench.json)"},
			&cli.BoolFlag{Name: "json", Usage: "print a JSON object"},
		),
		Action: benchAction,
	})
}

func benchAction(c *cli.Context) error {
	fail := func(code int, err error) error { return cli.Exit("swarm bench: "+err.Error(), code) }
	l, err := gpuLimits(c)
	if err != nil {
		return fail(2, err)
	}
	m, err := benchManifest(c)
	if err != nil {
		return fail(2, err)
	}
	batch := c.Int("batch")
	if batch <= 0 {
		batch = m.Training.BatchSize
	}
	sizes, err := parseUnits(c.String("units"), m.Model.Units())
	if err != nil {
		return fail(2, err)
	}
	_, sel, err := inspectGPUs(c, l)
	if err != nil {
		return fail(1, err)
	}
	choice, err := choose.Engine(c.String("engine"), sel, func() (torch.Info, error) {
		return torch.Probe(c.Context, c.String("python"))
	})
	if err != nil {
		return fail(2, err)
	}
	e, choice, err := choose.Open(choice, l, sel, torchOptions(c))
	if err != nil {
		return fail(1, err)
	}
	defer e.Close()
	if choice.Fallback {
		fmt.Fprintln(c.App.ErrWriter, "swarm bench:", choice.Reason)
	}
	device := engineDevice(e, l) // the node looks its throughput up under the same key
	var cache *choose.BenchCache
	if !c.Bool("no-cache") {
		path := c.String("cache")
		if path == "" {
			if path, err = choose.DefaultBenchCachePath(); err != nil {
				return fail(1, err)
			}
		}
		if cache, err = choose.OpenBenchCache(path); err != nil {
			return fail(1, err)
		}
	}
	out := benchOutput{Engine: choice, Device: device}
	for _, k := range sizes {
		key := choose.BenchKey(device, e.Name(), m.Model, k, batch)
		if cache != nil {
			if r, ok := cache.Get(key); ok {
				out.Results, out.Cached = append(out.Results, r), append(out.Cached, true)
				continue
			}
		}
		sm, err := choose.SpanManifest(m, k)
		if err != nil {
			return fail(2, err)
		}
		r, err := choose.BenchShard(e, sm, 0, batch, c.Duration("time"))
		if err != nil {
			return fail(1, fmt.Errorf("shard of %d units: %w", k, err))
		}
		r.Device = device
		if cache != nil {
			if err := cache.Put(key, r); err != nil {
				return fail(1, err)
			}
		}
		out.Results, out.Cached = append(out.Results, r), append(out.Cached, false)
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	fmt.Fprintf(c.App.Writer, "Engine: %s on %s (%s)\n", choice.Name(), device, choice.Reason)
	tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MODEL\tUNITS\tBATCH\tSAMPLES/S\tGFLOP/S\tCACHED")
	for i, r := range out.Results {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.2f\t%v\n", r.Model, r.Units, r.Batch, r.SamplesSec, r.GFLOPSec, out.Cached[i])
	}
	return tw.Flush()
}

func benchManifest(c *cli.Context) (*run.Manifest, error) {
	if p := c.String("run"); p != "" {
		return run.Load(p)
	}
	switch c.String("model") {
	case run.ArchMLPMNIST:
		return run.NewMLPMNIST(1), nil
	case run.ArchGPTChar:
		return run.NewGPTChar(benchCharset, 1), nil
	case run.PresetLlamaTiny, run.PresetLlama124M, run.PresetLlama350M:
		return run.NewLlama(c.String("model"), benchCharset, 1)
	}
	return nil, fmt.Errorf("--model %q: want %s, %s or a llama preset (%s)", c.String("model"), run.ArchMLPMNIST, run.ArchGPTChar, strings.Join(run.LlamaPresets, ", "))
}

// benchCharset is the vocabulary of the character models `swarm bench` times.
const benchCharset = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"-()\n"

func parseUnits(v string, total int) ([]int, error) {
	if v == "" {
		out := make([]int, total)
		for i := range out {
			out[i] = i + 1
		}
		return out, nil
	}
	var out []int
	for _, p := range strings.Split(v, ",") {
		var k int
		if _, err := fmt.Sscanf(strings.TrimSpace(p), "%d", &k); err != nil || k < 1 || k > total {
			return nil, fmt.Errorf("--units %q: %q is not a shard size in 1..%d", v, p, total)
		}
		out = append(out, k)
	}
	return out, nil
}

// cpuName is the CPU model and the thread count, the cache key of CPU results.
func cpuName(threads int) string {
	name := "cpu"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				name = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%s ×%d threads", name, threads)
}
