//go:build cgo

package gpu

import (
	"errors"
	"fmt"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// NVMLCompiledIn is true when this binary can talk to NVML.
const NVMLCompiledIn = true

// Open starts an NVML session. Without a driver it returns an error wrapping
// ErrNoDriver and has made no NVML call but Init.
func Open() (Sampler, error) { return openNVML(nvml.New()) }

type nvmlSampler struct {
	mu     sync.Mutex
	lib    nvml.Interface
	closed bool
	driver Driver
}

func openNVML(lib nvml.Interface) (Sampler, error) {
	if ret := lib.Init(); ret != nvml.SUCCESS {
		// Nothing else may be called now, not even nvml.ErrorString.
		return nil, fmt.Errorf("%w: nvml.Init: %s", ErrNoDriver, retName(ret))
	}
	s := &nvmlSampler{lib: lib}
	if v, ret := lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		s.driver.Version = v
	}
	if v, ret := lib.SystemGetCudaDriverVersion(); ret == nvml.SUCCESS {
		s.driver.CUDA = fmt.Sprintf("%d.%d", v/1000, v%1000/10)
	}
	return s, nil
}

func (s *nvmlSampler) Driver() Driver { return s.driver }

func (s *nvmlSampler) Sample() ([]Device, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("gpu: NVML session closed")
	}
	n, ret := s.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("gpu: nvml device count: %s", retName(ret))
	}
	devs := make([]Device, 0, n)
	var errs []error
	for i := range n {
		h, ret := s.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			errs = append(errs, fmt.Errorf("gpu %d: handle: %s", i, retName(ret)))
			continue
		}
		devs = append(devs, readDevice(i, h))
	}
	return devs, errors.Join(errs...)
}

// readDevice reads one device; a query the device does not support leaves its field unset.
func readDevice(i int, h nvml.Device) Device {
	d := Device{Index: i, UtilizationPct: -1}
	if v, ret := h.GetName(); ret == nvml.SUCCESS {
		d.Name = v
	}
	if v, ret := h.GetUUID(); ret == nvml.SUCCESS {
		d.UUID = v
	}
	if m, ret := h.GetMemoryInfo(); ret == nvml.SUCCESS {
		d.MemoryTotal, d.MemoryUsed, d.MemoryFree = m.Total, m.Used, m.Free
	}
	if u, ret := h.GetUtilizationRates(); ret == nvml.SUCCESS {
		d.UtilizationPct = int(u.Gpu)
	}
	if t, ret := h.GetTemperature(nvml.TEMPERATURE_GPU); ret == nvml.SUCCESS {
		d.TemperatureC = int(t)
	}
	if p, ret := h.GetPowerUsage(); ret == nvml.SUCCESS {
		d.PowerW = float64(p) / 1000
	}
	if p, ret := h.GetPowerManagementLimit(); ret == nvml.SUCCESS {
		d.PowerLimitW = float64(p) / 1000
	}
	util := map[int]int{}
	if samples, ret := h.GetProcessUtilization(0); ret == nvml.SUCCESS {
		for _, s := range samples {
			util[int(s.Pid)] = max(util[int(s.Pid)], int(s.SmUtil))
		}
	}
	if ps, ret := h.GetComputeRunningProcesses(); ret == nvml.SUCCESS {
		for _, p := range ps {
			u, ok := util[int(p.Pid)]
			if !ok {
				u = -1
			}
			d.Processes = append(d.Processes, Process{PID: int(p.Pid), MemoryUsed: p.UsedGpuMemory, SMUtilPct: u})
		}
	}
	return d
}

func (s *nvmlSampler) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if ret := s.lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("gpu: nvml.Shutdown: %s", retName(ret))
	}
	return nil
}

// retName names an NVML return code without calling into NVML.
func retName(r nvml.Return) string {
	switch r {
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return "NVML library not found (libnvidia-ml.so.1; is the NVIDIA driver installed?)"
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return "NVIDIA driver not loaded"
	case nvml.ERROR_NO_PERMISSION:
		return "no permission to talk to the NVIDIA driver"
	case nvml.ERROR_UNINITIALIZED:
		return "NVML not initialised"
	case nvml.ERROR_NOT_SUPPORTED:
		return "not supported"
	case nvml.ERROR_GPU_IS_LOST:
		return "GPU is lost"
	case nvml.ERROR_LIB_RM_VERSION_MISMATCH:
		return "driver/library version mismatch"
	}
	return fmt.Sprintf("NVML error %d", int32(r))
}
