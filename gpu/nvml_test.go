//go:build cgo

package gpu

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/swarm-train/swarm/internal/clock"
)

// fakeGPU is the telemetry one mock device reports; tests change it between samples.
type fakeGPU struct {
	name, uuid  string
	total, used uint64
	util, temp  uint32
	powerMW     uint32
	procs       []nvml.ProcessInfo
	smUtil      map[uint32]uint32
}

// mockNVML builds a go-nvml mock with the given GPUs. calls counts every
// NVML function called, to check nothing runs after a failed Init.
func mockNVML(initRet nvml.Return, gpus []*fakeGPU) (*mock.Interface, *sync.Map) {
	var calls sync.Map
	count := func(name string) {
		v, _ := calls.LoadOrStore(name, new(int))
		*(v.(*int))++
	}
	devs := make([]nvml.Device, len(gpus))
	for i, g := range gpus {
		devs[i] = &mock.Device{
			GetNameFunc: func() (string, nvml.Return) { count("GetName"); return g.name, nvml.SUCCESS },
			GetUUIDFunc: func() (string, nvml.Return) { count("GetUUID"); return g.uuid, nvml.SUCCESS },
			GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
				count("GetMemoryInfo")
				return nvml.Memory{Total: g.total, Used: g.used, Free: g.total - g.used}, nvml.SUCCESS
			},
			GetUtilizationRatesFunc: func() (nvml.Utilization, nvml.Return) {
				return nvml.Utilization{Gpu: g.util}, nvml.SUCCESS
			},
			GetTemperatureFunc: func(nvml.TemperatureSensors) (uint32, nvml.Return) { return g.temp, nvml.SUCCESS },
			GetPowerUsageFunc:  func() (uint32, nvml.Return) { return g.powerMW, nvml.SUCCESS },
			GetPowerManagementLimitFunc: func() (uint32, nvml.Return) {
				return 0, nvml.ERROR_NOT_SUPPORTED
			},
			GetComputeRunningProcessesFunc: func() ([]nvml.ProcessInfo, nvml.Return) { return g.procs, nvml.SUCCESS },
			GetProcessUtilizationFunc: func(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
				var out []nvml.ProcessUtilizationSample
				for pid, u := range g.smUtil {
					out = append(out, nvml.ProcessUtilizationSample{Pid: pid, SmUtil: u})
				}
				return out, nvml.SUCCESS
			},
		}
	}
	lib := &mock.Interface{
		InitFunc:                   func() nvml.Return { count("Init"); return initRet },
		ShutdownFunc:               func() nvml.Return { count("Shutdown"); return nvml.SUCCESS },
		SystemGetDriverVersionFunc: func() (string, nvml.Return) { count("SystemGetDriverVersion"); return "550.54.15", nvml.SUCCESS },
		SystemGetCudaDriverVersionFunc: func() (int, nvml.Return) {
			count("SystemGetCudaDriverVersion")
			return 12040, nvml.SUCCESS
		},
		DeviceGetCountFunc: func() (int, nvml.Return) { count("DeviceGetCount"); return len(devs), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			count("DeviceGetHandleByIndex")
			if i < 0 || i >= len(devs) {
				return nil, nvml.ERROR_INVALID_ARGUMENT
			}
			return devs[i], nvml.SUCCESS
		},
	}
	return lib, &calls
}

func twoGPUs() []*fakeGPU {
	return []*fakeGPU{
		{name: "NVIDIA A100-SXM4-40GB", uuid: "GPU-aaaa", total: 40 << 30, used: 2 << 30, util: 35, temp: 61, powerMW: 180500,
			procs: []nvml.ProcessInfo{{Pid: 100, UsedGpuMemory: 1 << 30}, {Pid: 200, UsedGpuMemory: 1 << 30}}, smUtil: map[uint32]uint32{100: 30, 200: 5}},
		{name: "NVIDIA GeForce RTX 3090", uuid: "GPU-bbbb", total: 24 << 30, used: 0, util: 0, temp: 40, powerMW: 30000},
	}
}

func TestDetectWithMock(t *testing.T) {
	lib, calls := mockNVML(nvml.SUCCESS, twoGPUs())
	r := inspect(func() (Sampler, error) { return openNVML(lib) })
	if !r.NVML || r.Error != "" {
		t.Fatalf("report: %+v", r)
	}
	if r.Driver != (Driver{Version: "550.54.15", CUDA: "12.4"}) {
		t.Errorf("driver %+v", r.Driver)
	}
	if len(r.Devices) != 2 {
		t.Fatalf("%d devices", len(r.Devices))
	}
	d := r.Devices[0]
	if d.Index != 0 || d.Name != "NVIDIA A100-SXM4-40GB" || d.UUID != "GPU-aaaa" || d.MemoryTotal != 40<<30 || d.MemoryFree != 38<<30 ||
		d.UtilizationPct != 35 || d.TemperatureC != 61 || d.PowerW != 180.5 || d.PowerLimitW != 0 {
		t.Errorf("device 0: %+v", d)
	}
	if len(d.Processes) != 2 || d.Processes[0] != (Process{PID: 100, MemoryUsed: 1 << 30, SMUtilPct: 30}) {
		t.Errorf("processes: %+v", d.Processes)
	}
	if r.Devices[1].Index != 1 || r.Devices[1].Processes != nil {
		t.Errorf("device 1: %+v", r.Devices[1])
	}
	if v, _ := calls.Load("Shutdown"); v == nil || *(v.(*int)) != 1 {
		t.Error("Inspect did not shut NVML down")
	}
}

// TestNoDriverMock: after a failed Init, no other NVML function is called.
func TestNoDriverMock(t *testing.T) {
	for _, ret := range []nvml.Return{nvml.ERROR_LIBRARY_NOT_FOUND, nvml.ERROR_DRIVER_NOT_LOADED, nvml.ERROR_NO_PERMISSION} {
		lib, calls := mockNVML(ret, twoGPUs())
		r := inspect(func() (Sampler, error) { return openNVML(lib) })
		if r.NVML || len(r.Devices) != 0 || !strings.Contains(r.Error, "no NVIDIA driver") {
			t.Errorf("%d: report %+v", ret, r)
		}
		calls.Range(func(k, v any) bool {
			if k != "Init" {
				t.Errorf("%d: %s called after a failed Init", ret, k)
			}
			return true
		})
	}
}

// TestDetectThisMachine calls the real NVML: a GPU machine lists its GPUs,
// any other returns ErrNoDriver — and the process survives either way.
func TestDetectThisMachine(t *testing.T) {
	devs, err := Detect()
	if err != nil {
		if !strings.Contains(err.Error(), ErrNoDriver.Error()) {
			t.Fatalf("Detect: %v", err)
		}
		t.Logf("no driver here: %v", err)
		return
	}
	t.Logf("found %d GPU(s)", len(devs))
	for _, d := range devs {
		if d.UUID == "" || d.MemoryTotal == 0 {
			t.Errorf("GPU %d incomplete: %+v", d.Index, d)
		}
	}
}

func TestSamplerClosed(t *testing.T) {
	lib, _ := mockNVML(nvml.SUCCESS, twoGPUs())
	s, err := openNVML(lib)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if _, err := s.Sample(); err == nil {
		t.Error("Sample after Close succeeded")
	}
}

// TestWatchPauseResume drives the governor's watch loop through the NVML
// mock and a manual clock: GPU 1 is not selected, GPU 0 heats up, cools with
// hysteresis, then another process takes memory; metrics follow.
func TestWatchPauseResume(t *testing.T) {
	gpus := twoGPUs()
	gpus[0].procs, gpus[0].smUtil = []nvml.ProcessInfo{{Pid: 100, UsedGpuMemory: 3 << 30}}, map[uint32]uint32{100: 90}
	gpus[1].temp = 99 // not selected: must not matter
	lib, _ := mockNVML(nvml.SUCCESS, gpus)
	s, err := openNVML(lib)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	l := Limits{GPUs: "0", PauseTempC: 80, PauseOtherMemoryMiB: 512, ResumeAfter: 10 * time.Second}
	g, err := NewGovernor(l, m)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	set := func(f func()) { mu.Lock(); f(); mu.Unlock() }
	// Sample reads the fakes; guard them against the loop goroutine.
	locked := &lockedSampler{Sampler: s, mu: &mu}
	clk := clock.NewManual(time.Unix(1_700_000_000, 0))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	own := func(pid int) bool { return pid == 100 } // the node's own worker
	go func() { g.Watch(ctx, locked, 5*time.Second, clk, own); close(done) }()
	// step changes the fakes while the loop waits for its next tick, lets
	// it take one sample, and checks the state it reached.
	step := func(mutate func(), st State, reasonPart string) {
		t.Helper()
		set(mutate)
		clk.Advance(5 * time.Second)
		clk.BlockUntil(1) // the loop sampled and waits for its next tick
		paused, reason := g.Paused()
		if (st == Paused) != paused || !strings.Contains(reason, reasonPart) {
			t.Fatalf("paused=%v reason %q, want %s with %q", paused, reason, st, reasonPart)
		}
	}
	nop := func() {}
	clk.BlockUntil(1) // first sample: own process with 3 GiB and 90% is not "other"
	if paused, reason := g.Paused(); paused {
		t.Fatalf("paused at start: %s", reason)
	}
	step(func() { gpus[0].temp = 86 }, Paused, "GPU 0 at 86 °C")
	step(func() { gpus[0].temp = 78 }, Paused, "limit 75 °C") // under the pause limit, over the resume one
	step(func() { gpus[0].temp = 70 }, Paused, "clear for 0s of 10s")
	step(nop, Paused, "clear for 5s")
	step(nop, Running, "")
	if v := testutil.ToFloat64(m.paused); v != 0 {
		t.Errorf("paused gauge %v", v)
	}
	step(func() { gpus[0].procs = append(gpus[0].procs, nvml.ProcessInfo{Pid: 300, UsedGpuMemory: 1 << 30}) },
		Paused, "other processes hold 1024 MiB on GPU 0")
	if v := testutil.ToFloat64(m.paused); v != 1 {
		t.Errorf("paused gauge %v", v)
	}
	if v := testutil.ToFloat64(m.pauses.WithLabelValues("temperature")); v != 1 {
		t.Errorf("temperature pauses %v", v)
	}
	if v := testutil.ToFloat64(m.otherMem.WithLabelValues("0", "GPU-aaaa")); v != 1<<30 {
		t.Errorf("other memory gauge %v", v)
	}
	st := g.Status()
	if st.State != Paused || len(st.Devices) != 1 || st.Devices[0].UUID != "GPU-aaaa" || st.Pauses["temperature"] != 1 || st.Pauses["other-memory"] != 1 {
		t.Errorf("status %+v", st)
	}
	// WaitRunning blocks while paused and returns on resume.
	woke := make(chan error, 1)
	go func() { woke <- g.WaitRunning(context.Background()) }()
	step(func() { gpus[0].procs = gpus[0].procs[:1] }, Paused, "clear for 0s")
	step(nop, Paused, "clear for 5s")
	step(nop, Running, "")
	if err := <-woke; err != nil {
		t.Fatal(err)
	}
	cancel()
	<-done
}

type lockedSampler struct {
	Sampler
	mu *sync.Mutex
}

func (s *lockedSampler) Sample() ([]Device, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Sampler.Sample()
}
