package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/swarm-train/swarm/engine/choose"
	"github.com/swarm-train/swarm/engine/torch"
	"github.com/swarm-train/swarm/gpu"
)

// gpuOutput is what `swarm gpu` prints: the NVML report, the PyTorch probe
// and the engine --engine auto would choose under the given limits.
type gpuOutput struct {
	gpu.Report
	Selected []int         `json:"selected"`
	Torch    *torch.Info   `json:"torch,omitempty"`
	TorchErr string        `json:"torch_error,omitempty"`
	Engine   choose.Choice `json:"engine"`
}

// gpuFlags are the volunteer's GPU limits, the CPU thread cap and the
// engine choice; the node, train, bench and gpu commands share them.
func gpuFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "engine", Value: "auto", Usage: "training engine: auto (torch on CUDA when usable, else native), native or torch", EnvVars: []string{"SWARM_ENGINE"}},
		&cli.StringFlag{Name: "gpus", Value: "all", Usage: "GPUs lent to training: all, none, or indices such as 0,2", EnvVars: []string{"SWARM_GPUS"}},
		&cli.IntFlag{Name: "gpu-max-memory", Usage: "cap on GPU memory per device, MiB (0: no cap)", EnvVars: []string{"SWARM_GPU_MAX_MEMORY"}},
		&cli.IntFlag{Name: "pause-temp", Value: gpu.Defaults().PauseTempC, Usage: "pause training above this GPU temperature, °C (0: never)", EnvVars: []string{"SWARM_PAUSE_TEMP"}},
		&cli.IntFlag{Name: "pause-other-memory", Value: gpu.Defaults().PauseOtherMemoryMiB, Usage: "pause while other processes hold more than this GPU memory, MiB (0: never)", EnvVars: []string{"SWARM_PAUSE_OTHER_MEMORY"}},
		&cli.IntFlag{Name: "pause-other-util", Value: gpu.Defaults().PauseOtherUtilPct, Usage: "pause while other processes use more than this % of a GPU (0: never)", EnvVars: []string{"SWARM_PAUSE_OTHER_UTIL"}},
		&cli.DurationFlag{Name: "resume-after", Value: gpu.Defaults().ResumeAfter, Usage: "resume once every pause condition has been clear this long", EnvVars: []string{"SWARM_RESUME_AFTER"}},
		&cli.IntFlag{Name: "cpu-threads", Aliases: []string{"threads"}, Usage: "cap on CPU threads for CPU training (0: all cores)", EnvVars: []string{"SWARM_CPU_THREADS", "SWARM_THREADS"}},
		&cli.StringFlag{Name: "python", Value: torch.DefaultPython, Usage: "python3 with PyTorch for the torch engine", EnvVars: []string{"SWARM_PYTHON"}},
		&cli.StringFlag{Name: "precision", Value: "auto", Usage: "torch engine: auto (bf16 autocast on CUDA, fp32 on the CPU), fp32 or bf16", EnvVars: []string{"SWARM_PRECISION"}},
		&cli.BoolFlag{Name: "checkpoint-activations", Usage: "torch engine: recompute each transformer block in the backward instead of keeping its activations (less GPU memory, about a third more compute)", EnvVars: []string{"SWARM_CHECKPOINT_ACTIVATIONS"}},
		&cli.BoolFlag{Name: "torch-compile", Usage: "torch engine: run the model through torch.compile (PyTorch 2.0 and later)", EnvVars: []string{"SWARM_TORCH_COMPILE"}},
	}
}

// torchOptions reads the torch engine's settings from gpuFlags.
func torchOptions(c *cli.Context) torch.Options {
	return torch.Options{Python: c.String("python"), Precision: c.String("precision"), Compile: c.Bool("torch-compile"),
		CheckpointActivations: c.Bool("checkpoint-activations")}
}

// gpuLimits reads the limits from gpuFlags.
func gpuLimits(c *cli.Context) (gpu.Limits, error) {
	l := gpu.Limits{
		GPUs: c.String("gpus"), MaxMemoryMiB: c.Int("gpu-max-memory"), PauseTempC: c.Int("pause-temp"),
		PauseOtherMemoryMiB: c.Int("pause-other-memory"), PauseOtherUtilPct: c.Int("pause-other-util"),
		ResumeAfter: c.Duration("resume-after"), CPUThreads: c.Int("cpu-threads"),
	}
	return l, l.Validate()
}

// inspectGPUs detects the GPUs, applies the selection and chooses the engine.
func inspectGPUs(c *cli.Context, l gpu.Limits) (gpuOutput, []gpu.Device, error) {
	out := gpuOutput{Report: gpu.Inspect(), Selected: []int{}}
	sel, err := l.Selection().Apply(out.Devices)
	if err != nil {
		return out, nil, err
	}
	for _, d := range sel {
		out.Selected = append(out.Selected, d.Index)
	}
	probe := func() (torch.Info, error) {
		info, err := torch.Probe(context.Background(), c.String("python"))
		if err != nil {
			out.TorchErr = err.Error()
		} else {
			out.Torch = &info
		}
		return info, err
	}
	out.Engine, err = choose.Engine(c.String("engine"), sel, probe)
	return out, sel, err
}

func init() {
	register(&cli.Command{
		Name:  "gpu",
		Usage: "show the GPUs NVML finds, PyTorch, and the engine this node would train with",
		Flags: append(gpuFlags(), &cli.BoolFlag{Name: "json", Usage: "print a JSON object"}),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return cli.Exit("swarm gpu: unexpected arguments: "+c.Args().First(), 2)
			}
			l, err := gpuLimits(c)
			if err != nil {
				return cli.Exit("swarm gpu: "+err.Error(), 2)
			}
			out, _, err := inspectGPUs(c, l)
			if err != nil {
				return cli.Exit("swarm gpu: "+err.Error(), 1)
			}
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			printGPUs(c.App.Writer, out)
			return nil
		},
	})
}

func printGPUs(w io.Writer, o gpuOutput) {
	if !o.NVML {
		fmt.Fprintf(w, "NVML:    unavailable (%s)\n", o.Error)
	} else {
		fmt.Fprintf(w, "Driver:  %s (CUDA %s)\n", o.Driver.Version, o.Driver.CUDA)
		if o.Error != "" {
			fmt.Fprintf(w, "Warning: %s\n", o.Error)
		}
	}
	if len(o.Devices) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "GPU\tNAME\tMEMORY USED/TOTAL\tUTIL\tTEMP\tPOWER\tLENT\tUUID")
		lent := map[int]bool{}
		for _, i := range o.Selected {
			lent[i] = true
		}
		for _, d := range o.Devices {
			util := "-"
			if d.UtilizationPct >= 0 {
				util = fmt.Sprintf("%d%%", d.UtilizationPct)
			}
			fmt.Fprintf(tw, "%d\t%s\t%d/%d MiB\t%s\t%d °C\t%.0f W\t%v\t%s\n", d.Index, d.Name, d.MemoryUsed>>20, d.MemoryTotal>>20, util, d.TemperatureC, d.PowerW, lent[d.Index], d.UUID)
		}
		tw.Flush()
	} else if o.NVML {
		fmt.Fprintln(w, "GPUs:    none found")
	}
	switch {
	case o.Torch != nil:
		cuda := "no CUDA"
		if o.Torch.CUDA {
			cuda = "CUDA " + o.Torch.CUDAVersion + ": " + strings.Join(o.Torch.Devices, ", ")
		}
		fmt.Fprintf(w, "PyTorch: %s at %s (%s)\n", o.Torch.Torch, o.Torch.Python, cuda)
	case o.TorchErr != "":
		fmt.Fprintf(w, "PyTorch: %s\n", o.TorchErr)
	}
	fmt.Fprintf(w, "Engine:  %s (%s)\n", o.Engine.Name(), o.Engine.Reason)
}
