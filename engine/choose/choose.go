// Package choose picks the engine a node trains with (native or torch, on
// the devices the volunteer lends) and measures it on a shard (BenchShard,
// cached per device, engine and model). It joins gpu (devices, limits) and
// the engines, so the daemon core (node, gpu) links neither engine.
package choose

import (
	"errors"
	"fmt"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/engine/native"
	"github.com/swarm-train/swarm/engine/torch"
	"github.com/swarm-train/swarm/gpu"
)

// Engine names for --engine.
const (
	EngineAuto   = "auto"
	EngineNative = "native"
	EngineTorch  = "torch"
)

// Choice is the engine a node will train with, and why.
type Choice struct {
	Engine string `json:"engine"` // native or torch
	Device string `json:"device"` // cpu or cuda
	Reason string `json:"reason"`
	// Fallback is set when torch was wanted but the native engine was chosen.
	Fallback bool `json:"fallback,omitempty"`
}

// Name is the engine's short name: native, torch-cpu or torch-cuda.
func (c Choice) Name() string {
	if c.Engine == EngineTorch {
		return "torch-" + c.Device
	}
	return EngineNative
}

// Engine resolves --engine. selected are the GPUs the limits lend
// (empty without a driver or with --gpus none); probe finds PyTorch and is
// called only when torch is a candidate. auto takes torch on CUDA when a GPU
// is lent and PyTorch sees CUDA, else native; torch without python3/PyTorch
// falls back to native with the reason.
func Engine(want string, selected []gpu.Device, probe func() (torch.Info, error)) (Choice, error) {
	switch want {
	case EngineNative:
		return Choice{Engine: EngineNative, Device: "cpu", Reason: "--engine native"}, nil
	case EngineTorch, EngineAuto, "":
	default:
		return Choice{}, fmt.Errorf("engine %q: want auto, native or torch", want)
	}
	auto := want != EngineTorch
	if auto && len(selected) == 0 {
		return Choice{Engine: EngineNative, Device: "cpu", Reason: "no GPU lent to training"}, nil
	}
	info, err := probe()
	if err != nil {
		return Choice{Engine: EngineNative, Device: "cpu", Reason: err.Error() + "; using the native engine", Fallback: !auto}, nil
	}
	switch {
	case info.CUDA && len(selected) > 0:
		return Choice{Engine: EngineTorch, Device: "cuda", Reason: fmt.Sprintf("PyTorch %s with CUDA on %d GPU(s)", info.Torch, len(selected))}, nil
	case auto:
		return Choice{Engine: EngineNative, Device: "cpu", Reason: fmt.Sprintf("PyTorch %s sees no CUDA device", info.Torch)}, nil
	case len(selected) == 0:
		return Choice{Engine: EngineTorch, Device: "cpu", Reason: fmt.Sprintf("--engine torch, no GPU lent: PyTorch %s on the CPU", info.Torch)}, nil
	default:
		return Choice{Engine: EngineTorch, Device: "cpu", Reason: fmt.Sprintf("--engine torch, but PyTorch %s sees no CUDA device: on the CPU", info.Torch)}, nil
	}
}

// Open builds the chosen engine under the limits: the native engine
// with the CPU thread cap, or a torch engine restricted to the selected GPUs
// and the memory cap. If torch cannot start it falls back to native and says
// so in the returned choice.
func Open(c Choice, l gpu.Limits, selected []gpu.Device, opts torch.Options) (engine.Engine, Choice, error) {
	if c.Engine == EngineTorch {
		opts.Device = c.Device
		if c.Device == "cpu" {
			opts.Threads = l.Threads()
		} else {
			opts.Env = append(opts.Env, "CUDA_VISIBLE_DEVICES="+gpu.VisibleDevices(selected))
			opts.MaxMemoryMiB = l.MaxMemoryMiB
		}
		e, err := torch.New(opts)
		if err == nil {
			return e, c, nil
		}
		if !errors.Is(err, torch.ErrUnavailable) {
			return nil, c, err
		}
		c = Choice{Engine: EngineNative, Device: "cpu", Reason: err.Error() + "; using the native engine", Fallback: true}
	}
	return native.New(native.WithThreads(l.Threads())), c, nil
}
