package choose

import (
	"errors"
	"strings"
	"testing"

	"github.com/swarm-train/swarm/engine/torch"
	"github.com/swarm-train/swarm/gpu"
)

func TestEngine(t *testing.T) {
	lent := []gpu.Device{{Index: 0}}
	withCUDA := func() (torch.Info, error) { return torch.Info{Torch: "2.3", CUDA: true}, nil }
	cpuOnly := func() (torch.Info, error) { return torch.Info{Torch: "1.13"}, nil }
	missing := func() (torch.Info, error) {
		return torch.Info{}, errors.New("torch: PyTorch engine unavailable: /usr/bin/python3 cannot import torch")
	}
	notCalled := func() (torch.Info, error) { t.Error("probe called"); return torch.Info{}, nil }
	for _, c := range []struct {
		want     string
		sel      []gpu.Device
		probe    func() (torch.Info, error)
		name     string
		fallback bool
		reason   string
	}{
		{"auto", lent, withCUDA, "torch-cuda", false, "CUDA"},
		{"auto", nil, notCalled, "native", false, "no GPU"},
		{"auto", lent, cpuOnly, "native", false, "no CUDA"},
		{"auto", lent, missing, "native", false, "cannot import torch"},
		{"native", lent, notCalled, "native", false, "--engine native"},
		{"torch", lent, withCUDA, "torch-cuda", false, "CUDA"},
		{"torch", nil, withCUDA, "torch-cpu", false, "no GPU lent"},
		{"torch", lent, cpuOnly, "torch-cpu", false, "no CUDA"},
		{"torch", lent, missing, "native", true, "cannot import torch"},
	} {
		ch, err := Engine(c.want, c.sel, c.probe)
		if err != nil || ch.Name() != c.name || ch.Fallback != c.fallback || !strings.Contains(ch.Reason, c.reason) {
			t.Errorf("%s with %d GPU(s): %+v %v, want %s fallback=%v reason with %q", c.want, len(c.sel), ch, err, c.name, c.fallback, c.reason)
		}
	}
	if _, err := Engine("cuda", lent, notCalled); err == nil {
		t.Error("unknown engine accepted")
	}
}

// TestOpenEngineFallback: torch chosen but no interpreter → native, and the
// choice says why.
func TestOpenEngineFallback(t *testing.T) {
	e, ch, err := Open(Choice{Engine: EngineTorch, Device: "cpu"}, gpu.Limits{CPUThreads: 1}, nil, torch.Options{Python: "/nonexistent/python3"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.Name() != "native" || !ch.Fallback || !strings.Contains(ch.Reason, "/nonexistent/python3") {
		t.Errorf("engine %s, choice %+v", e.Name(), ch)
	}
}
