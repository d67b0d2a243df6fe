package gpu

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/swarm-train/swarm/internal/clock"
)

// Limits are the volunteer's rules for lending hardware. The zero value
// lends nothing of the GPUs ("none") and never pauses; Defaults lends all.
type Limits struct {
	// GPUs selects the devices: "all", "none", or indices such as "0,2".
	GPUs string `json:"gpus"`
	// MaxMemoryMiB caps the GPU memory training may use on each device (0: no cap).
	MaxMemoryMiB int `json:"max_memory_mib"`
	// PauseOtherMemoryMiB pauses training while other processes hold more than
	// this much memory on a selected GPU (0: never).
	PauseOtherMemoryMiB int `json:"pause_other_memory_mib"`
	// PauseOtherUtilPct pauses training while other processes use more than
	// this share of a selected GPU's SMs (0: never).
	PauseOtherUtilPct int `json:"pause_other_util_pct"`
	// PauseTempC pauses training while a selected GPU is hotter than this (0: never).
	PauseTempC int `json:"pause_temp_c"`
	// ResumeTempC is the temperature a paused GPU must cool to (default PauseTempC − 5).
	ResumeTempC int `json:"resume_temp_c"`
	// ResumeAfter is how long every condition must stay clear before training resumes.
	ResumeAfter time.Duration `json:"resume_after"`
	// CPUThreads caps the threads of CPU training (0: all cores).
	CPUThreads int `json:"cpu_threads"`
}

// Defaults lends every GPU, pauses above 85 °C (resuming at 80 °C) and when
// other processes take more than 1 GiB or 20% of a GPU, and resumes after 30 s clear.
func Defaults() Limits {
	return Limits{GPUs: "all", PauseOtherMemoryMiB: 1024, PauseOtherUtilPct: 20, PauseTempC: 85, ResumeTempC: 80, ResumeAfter: 30 * time.Second}
}

// Validate checks every field, naming the first one that is wrong, and fills
// ResumeTempC's default.
func (l *Limits) Validate() error {
	if _, err := ParseSelection(l.GPUs); err != nil {
		return fmt.Errorf("limits.gpus: %w", err)
	}
	nonNeg := func(name string, v int) error {
		if v < 0 {
			return fmt.Errorf("limits.%s: must not be negative, got %d", name, v)
		}
		return nil
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"max_memory_mib", l.MaxMemoryMiB}, {"pause_other_memory_mib", l.PauseOtherMemoryMiB}, {"pause_other_util_pct", l.PauseOtherUtilPct},
		{"pause_temp_c", l.PauseTempC}, {"resume_temp_c", l.ResumeTempC}, {"cpu_threads", l.CPUThreads}} {
		if err := nonNeg(f.name, f.v); err != nil {
			return err
		}
	}
	if l.PauseOtherUtilPct > 100 {
		return fmt.Errorf("limits.pause_other_util_pct: %d is over 100", l.PauseOtherUtilPct)
	}
	if l.PauseTempC > 120 {
		return fmt.Errorf("limits.pause_temp_c: %d °C is not a plausible limit", l.PauseTempC)
	}
	if l.PauseTempC > 0 {
		if l.ResumeTempC == 0 {
			l.ResumeTempC = l.PauseTempC - 5
		}
		if l.ResumeTempC > l.PauseTempC {
			return fmt.Errorf("limits.resume_temp_c: %d is above pause_temp_c %d", l.ResumeTempC, l.PauseTempC)
		}
	}
	if l.ResumeAfter < 0 {
		return fmt.Errorf("limits.resume_after: must not be negative, got %v", l.ResumeAfter)
	}
	return nil
}

// Selection is the parsed GPUs field (Validate first).
func (l Limits) Selection() Selection {
	s, _ := ParseSelection(l.GPUs)
	return s
}

// Threads is the CPU thread count for CPU training under the cap.
func (l Limits) Threads() int {
	n := runtime.NumCPU()
	if l.CPUThreads > 0 && l.CPUThreads < n {
		return l.CPUThreads
	}
	return n
}

// MemoryBudget is the bytes training may use on d: its free memory, under the cap.
func (l Limits) MemoryBudget(d Device) uint64 {
	b := d.MemoryFree
	if l.MaxMemoryMiB > 0 {
		b = min(b, uint64(l.MaxMemoryMiB)<<20)
	}
	return b
}

// State of the governor.
type State string

const (
	Running State = "running"
	Paused  State = "paused"
)

// Decision is the governor's answer to one round of samples.
type Decision struct {
	State   State
	Changed bool
	// Reason says why training is paused, or for how long conditions have been clear.
	Reason string
}

// Governor decides, from telemetry samples, when training must pause and
// when it may resume. Observe is a pure step (no clock, no I/O inside); Watch
// runs the sampling loop. Safe for concurrent use.
type Governor struct {
	mu         sync.Mutex
	limits     Limits
	sel        Selection
	state      State
	reason     string
	progress   string    // while paused and clear: how long it has been clear
	since      time.Time // of the current state
	clearSince time.Time // while paused: when every condition was last found clear (zero: not clear)
	last       []Device
	lastErr    string
	pauses     map[string]int
	changed    chan struct{} // closed and replaced on every state change
	metrics    *Metrics
	notify     func(Decision) // after every observation of Watch (OnDecision)
}

// OnDecision makes Watch call f with every decision, so that the pause
// Gate's gpu rule follows the governor. Set it before Watch starts.
func (g *Governor) OnDecision(f func(Decision)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.notify = f
}

// NewGovernor validates the limits. own reports whether a GPU process
// belongs to this node (its torch workers), so its memory is not "other" use.
func NewGovernor(l Limits, metrics *Metrics) (*Governor, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	return &Governor{limits: l, sel: l.Selection(), state: Running, pauses: map[string]int{}, changed: make(chan struct{}), metrics: metrics}, nil
}

// Observe takes one round of samples of all devices at time now; own says
// which PIDs are this node's. It returns the new state.
func (g *Governor) Observe(now time.Time, devs []Device, own func(pid int) bool) Decision {
	g.mu.Lock()
	defer g.mu.Unlock()
	sel, err := g.sel.Apply(devs)
	if err != nil {
		// A selected GPU vanished: that is a reason to stop using it.
		return g.setLocked(now, Paused, err.Error())
	}
	g.last = sel
	g.lastErr = ""
	if g.metrics != nil {
		g.metrics.observe(sel, own)
	}
	reason := g.blockingLocked(sel, own)
	switch g.state {
	case Running:
		if reason != "" {
			return g.setLocked(now, Paused, reason)
		}
		return Decision{State: Running}
	default:
		if reason != "" {
			g.clearSince, g.reason, g.progress = time.Time{}, reason, ""
			return Decision{State: Paused, Reason: reason}
		}
		if g.clearSince.IsZero() {
			g.clearSince = now
		}
		if clear := now.Sub(g.clearSince); clear < g.limits.ResumeAfter {
			g.progress = fmt.Sprintf(" (clear for %v of %v)", clear.Round(time.Second), g.limits.ResumeAfter)
			return Decision{State: Paused, Reason: g.reason + g.progress}
		}
		return g.setLocked(now, Running, "")
	}
}

// SampleFailed records that telemetry could not be read. Training carries on
// (the limits cannot be checked, but neither is there evidence against them).
func (g *Governor) SampleFailed(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.lastErr = err.Error()
}

// blockingLocked returns why training may not run now, or "". While paused
// for heat, the GPU must cool to ResumeTempC (hysteresis).
func (g *Governor) blockingLocked(devs []Device, own func(int) bool) string {
	l := g.limits
	var reasons []string
	for _, d := range devs {
		if l.PauseTempC > 0 {
			limit := l.PauseTempC
			if g.state == Paused {
				limit = l.ResumeTempC
			}
			if d.TemperatureC > limit {
				reasons = append(reasons, fmt.Sprintf("GPU %d at %d °C (limit %d °C)", d.Index, d.TemperatureC, limit))
			}
		}
		mem, util := OtherUse(d, own)
		if l.PauseOtherMemoryMiB > 0 && mem > uint64(l.PauseOtherMemoryMiB)<<20 {
			reasons = append(reasons, fmt.Sprintf("other processes hold %d MiB on GPU %d (limit %d MiB)", mem>>20, d.Index, l.PauseOtherMemoryMiB))
		}
		if l.PauseOtherUtilPct > 0 && util > l.PauseOtherUtilPct {
			reasons = append(reasons, fmt.Sprintf("other processes use %d%% of GPU %d (limit %d%%)", util, d.Index, l.PauseOtherUtilPct))
		}
	}
	return strings.Join(reasons, "; ")
}

// OtherUse sums the memory and SM share of processes on d that are not own.
func OtherUse(d Device, own func(int) bool) (memory uint64, utilPct int) {
	for _, p := range d.Processes {
		if own != nil && own(p.PID) {
			continue
		}
		memory += p.MemoryUsed
		if p.SMUtilPct > 0 {
			utilPct += p.SMUtilPct
		}
	}
	return memory, utilPct
}

func (g *Governor) setLocked(now time.Time, s State, reason string) Decision {
	if g.state == s {
		g.reason = reason
		return Decision{State: s, Reason: reason}
	}
	g.state, g.reason, g.progress, g.since, g.clearSince = s, reason, "", now, time.Time{}
	if s == Paused {
		g.pauses[pauseKind(reason)]++
	}
	if g.metrics != nil {
		g.metrics.setState(s, pauseKind(reason))
	}
	close(g.changed)
	g.changed = make(chan struct{})
	return Decision{State: s, Changed: true, Reason: reason}
}

// pauseKind is the reason's class for metrics: temperature, other-memory, other-util or device.
func pauseKind(reason string) string {
	switch {
	case reason == "":
		return ""
	case strings.Contains(reason, "°C"):
		return "temperature"
	case strings.Contains(reason, "MiB"):
		return "other-memory"
	case strings.Contains(reason, "%"):
		return "other-util"
	}
	return "device"
}

// Paused reports whether training must pause now, and why.
func (g *Governor) Paused() (bool, string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.state == Paused, g.reason + g.progress
}

// WaitRunning returns once training may run (at once when it may now), or
// with ctx's error.
func (g *Governor) WaitRunning(ctx context.Context) error {
	for {
		g.mu.Lock()
		st, ch := g.state, g.changed
		g.mu.Unlock()
		if st == Running {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Watch samples every interval until ctx ends, feeding Observe; own names
// this node's GPU processes. Time comes from clk (nil: the wall clock).
func (g *Governor) Watch(ctx context.Context, s Sampler, interval time.Duration, clk clock.Clock, own func(pid int) bool) {
	clk = clock.Or(clk)
	for {
		devs, err := s.Sample()
		if err != nil && len(devs) == 0 {
			g.SampleFailed(err)
		} else {
			d := g.Observe(clk.Now(), devs, own)
			g.mu.Lock()
			f := g.notify
			g.mu.Unlock()
			if f != nil {
				f(d)
			}
		}
		if clock.Sleep(ctx, clk, interval) != nil {
			return
		}
	}
}

// Status is the GPU part of `swarm status`.
type Status struct {
	Limits  Limits         `json:"limits"`
	State   State          `json:"state"`
	Reason  string         `json:"reason,omitempty"`
	Since   time.Time      `json:"since,omitzero"`
	Pauses  map[string]int `json:"pauses,omitempty"`
	Devices []Device       `json:"devices"`
	Error   string         `json:"error,omitempty"`
}

// Status is the governor's state and the last samples of the selected GPUs.
func (g *Governor) Status() Status {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := make(map[string]int, len(g.pauses))
	for k, v := range g.pauses {
		p[k] = v
	}
	devs := append([]Device{}, g.last...)
	return Status{Limits: g.limits, State: g.state, Reason: g.reason + g.progress, Since: g.since, Pauses: p, Devices: devs, Error: g.lastErr}
}
