// Package gpu finds the node's NVIDIA GPUs and watches them through NVML,
// holds the volunteer's limits (which GPUs, how much memory, when to pause),
// and decides when training must pause and may resume (Governor, Gate). It
// holds no engine code: engine/choose picks the engine for the devices found
// here, and the engines live in engine/native (pure Go) and engine/torch (a
// PyTorch worker).
//
// NVML needs cgo: nvml.go is built with cgo, nvml_nocgo.go without it, where
// Open reports ErrNoNVML ("NVML not compiled in"). Every NVML call is made
// only after a successful nvml.Init: calling NVML after a failed Init kills
// the process.
package gpu

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Errors from Open and Detect.
var (
	// ErrNoNVML: this binary was built without cgo, so without NVML.
	ErrNoNVML = errors.New("gpu: NVML not compiled in (built with CGO_ENABLED=0)")
	// ErrNoDriver: NVML could not start: no NVIDIA driver or library on this machine.
	ErrNoDriver = errors.New("gpu: no NVIDIA driver")
)

// Device is one GPU as NVML saw it at one moment. Fields NVML does not
// support on a device are zero (temperature, power) or -1 (utilisation).
type Device struct {
	Index          int       `json:"index"`
	Name           string    `json:"name"`
	UUID           string    `json:"uuid"`
	MemoryTotal    uint64    `json:"memory_total_bytes"`
	MemoryUsed     uint64    `json:"memory_used_bytes"`
	MemoryFree     uint64    `json:"memory_free_bytes"`
	UtilizationPct int       `json:"utilization_pct"`
	TemperatureC   int       `json:"temperature_c"`
	PowerW         float64   `json:"power_w"`
	PowerLimitW    float64   `json:"power_limit_w"`
	Processes      []Process `json:"processes,omitempty"`
}

// Process is a compute process on a GPU.
type Process struct {
	PID        int    `json:"pid"`
	MemoryUsed uint64 `json:"memory_used_bytes"`
	// SMUtilPct is its recent share of the streaming multiprocessors, -1 when unknown.
	SMUtilPct int `json:"sm_util_pct"`
}

// Driver is the NVIDIA driver's version and the CUDA version it supports.
type Driver struct {
	Version string `json:"version"`
	CUDA    string `json:"cuda"`
}

// Sampler reads the GPUs: Open returns one that holds an initialised NVML
// session until Close.
type Sampler interface {
	Driver() Driver
	// Sample reads every GPU's telemetry now.
	Sample() ([]Device, error)
	Close() error
}

// Report is what `swarm gpu` prints: the driver and the devices, or why there are none.
type Report struct {
	NVML    bool     `json:"nvml"`
	Error   string   `json:"error,omitempty"`
	Driver  Driver   `json:"driver"`
	Devices []Device `json:"devices"`
}

// Detect opens NVML, reads every GPU once, and closes it. Without a driver
// it returns an error wrapping ErrNoDriver (or ErrNoNVML), never crashes.
func Detect() ([]Device, error) {
	r := Inspect()
	if !r.NVML {
		return nil, errors.New(r.Error)
	}
	return r.Devices, nil
}

// Inspect is Detect with the driver versions, as one value for printing.
func Inspect() Report {
	return inspect(Open)
}

func inspect(open func() (Sampler, error)) Report {
	s, err := open()
	if err != nil {
		return Report{Error: err.Error(), Devices: []Device{}}
	}
	defer s.Close()
	devs, err := s.Sample()
	r := Report{NVML: true, Driver: s.Driver(), Devices: devs}
	if err != nil {
		r.Error = err.Error()
	}
	if r.Devices == nil {
		r.Devices = []Device{}
	}
	return r
}

// Selection is the set of GPUs a volunteer lends: all, none, or by index.
type Selection struct {
	All     bool
	Indices []int // sorted, without repeats; used when All is false
}

// String is the flag form: "all", "none" or "0,2".
func (s Selection) String() string {
	if s.All {
		return "all"
	}
	if len(s.Indices) == 0 {
		return "none"
	}
	parts := make([]string, len(s.Indices))
	for i, x := range s.Indices {
		parts[i] = strconv.Itoa(x)
	}
	return strings.Join(parts, ",")
}

// ParseSelection reads --gpus: "all", "none" (or empty) or comma-separated indices.
func ParseSelection(v string) (Selection, error) {
	v = strings.TrimSpace(strings.ToLower(v))
	switch v {
	case "all":
		return Selection{All: true}, nil
	case "", "none":
		return Selection{}, nil
	}
	seen := map[int]bool{}
	var s Selection
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		i, err := strconv.Atoi(part)
		if err != nil || i < 0 || i > 1023 {
			return Selection{}, fmt.Errorf("gpus %q: %q is not a GPU index (want all, none or indices such as 0,2)", v, part)
		}
		if seen[i] {
			return Selection{}, fmt.Errorf("gpus %q: index %d repeated", v, i)
		}
		seen[i] = true
		s.Indices = append(s.Indices, i)
	}
	sort.Ints(s.Indices)
	return s, nil
}

// Apply picks the selected devices. An index that is not present is an error
// naming it.
func (s Selection) Apply(devs []Device) ([]Device, error) {
	if s.All {
		return append([]Device(nil), devs...), nil
	}
	byIndex := map[int]Device{}
	for _, d := range devs {
		byIndex[d.Index] = d
	}
	var out []Device
	for _, i := range s.Indices {
		d, ok := byIndex[i]
		if !ok {
			return nil, fmt.Errorf("gpus: GPU %d selected but only %d GPU(s) found", i, len(devs))
		}
		out = append(out, d)
	}
	return out, nil
}

// VisibleDevices is the CUDA_VISIBLE_DEVICES value that shows a worker the selected devices.
func VisibleDevices(devs []Device) string {
	ids := make([]string, len(devs))
	for i, d := range devs {
		if d.UUID != "" {
			ids[i] = d.UUID
		} else {
			ids[i] = strconv.Itoa(d.Index)
		}
	}
	return strings.Join(ids, ",")
}
