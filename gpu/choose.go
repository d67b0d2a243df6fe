package gpu

import (
	"errors"
	"fmt"

	"github.com/swarm-train/swarm/gpu/engine"
	"github.com/swarm-train/swarm/gpu/native"
	"github.com/swarm-train/swarm/gpu/torch"
)

// Engine names for --engine.
const (
	EngineAuto   = "auto"
	EngineNative = "native"
	EngineTorch  = "torch"
)

// EngineChoice is the engine a node will train with, and why.
type EngineChoice struct {
	Engine string `json:"engine"` // native or torch
	Device string `json:"device"` // cpu or cuda
	Reason string `json:"reason"`
	// Fallback is set when torch was wanted but the native engine was chosen.
	Fallback bool `json:"fallback,omitempty"`
}

// Name is the engine's short name: native, torch-cpu or torch-cuda.
func (c EngineChoice) Name() string {
	if c.Engine == EngineTorch {
		return "torch-" + c.Device
	}
	return EngineNative
}

// ChooseEngine resolves --engine. selected are the GPUs the limits lend
// (empty without a driver or with --gpus none); probe finds PyTorch and is
// called only when torch is a candidate. auto takes torch on CUDA when a GPU
// is lent and PyTorch sees CUDA, else native; torch without python3/PyTorch
// falls back to native with the reason.
func ChooseEngine(want string, selected []Device, probe func() (torch.Info, error)) (EngineChoice, error) {
	switch want {
	case EngineNative:
		return EngineChoice{Engine: EngineNative, Device: "cpu", Reason: "--engine native"}, nil
	case EngineTorch, EngineAuto, "":
	default:
		return EngineChoice{}, fmt.Errorf("engine %q: want auto, native or torch", want)
	}
	auto := want != EngineTorch
	if auto && len(selected) == 0 {
		return EngineChoice{Engine: EngineNative, Device: "cpu", Reason: "no GPU lent to training"}, nil
	}
	info, err := probe()
	if err != nil {
		return EngineChoice{Engine: EngineNative, Device: "cpu", Reason: err.Error() + "; using the native engine", Fallback: !auto}, nil
	}
	switch {
	case info.CUDA && len(selected) > 0:
		return EngineChoice{Engine: EngineTorch, Device: "cuda", Reason: fmt.Sprintf("PyTorch %s with CUDA on %d GPU(s)", info.Torch, len(selected))}, nil
	case auto:
		return EngineChoice{Engine: EngineNative, Device: "cpu", Reason: fmt.Sprintf("PyTorch %s sees no CUDA device", info.Torch)}, nil
	case len(selected) == 0:
		return EngineChoice{Engine: EngineTorch, Device: "cpu", Reason: fmt.Sprintf("--engine torch, no GPU lent: PyTorch %s on the CPU", info.Torch)}, nil
	default:
		return EngineChoice{Engine: EngineTorch, Device: "cpu", Reason: fmt.Sprintf("--engine torch, but PyTorch %s sees no CUDA device: on the CPU", info.Torch)}, nil
	}
}

// OpenEngine builds the chosen engine under the limits: the native engine
// with the CPU thread cap, or a torch engine restricted to the selected GPUs
// and the memory cap. If torch cannot start it falls back to native and says
// so in the returned choice.
func OpenEngine(c EngineChoice, l Limits, selected []Device, opts torch.Options) (engine.Engine, EngineChoice, error) {
	if c.Engine == EngineTorch {
		opts.Device = c.Device
		if c.Device == "cpu" {
			opts.Threads = l.Threads()
		} else {
			opts.Env = append(opts.Env, "CUDA_VISIBLE_DEVICES="+VisibleDevices(selected))
			opts.MaxMemoryMiB = l.MaxMemoryMiB
		}
		e, err := torch.New(opts)
		if err == nil {
			return e, c, nil
		}
		if !errors.Is(err, torch.ErrUnavailable) {
			return nil, c, err
		}
		c = EngineChoice{Engine: EngineNative, Device: "cpu", Reason: err.Error() + "; using the native engine", Fallback: true}
	}
	return native.New(native.WithThreads(l.Threads())), c, nil
}
