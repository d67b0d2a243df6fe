package gpu

import (
	"strings"
	"testing"
	"time"
)

func TestParseSelection(t *testing.T) {
	devs := []Device{{Index: 0, UUID: "GPU-a"}, {Index: 1, UUID: "GPU-b"}, {Index: 2, UUID: "GPU-c"}}
	for _, c := range []struct {
		in, str string
		picked  []int
		err     string
	}{
		{"all", "all", []int{0, 1, 2}, ""},
		{"none", "none", nil, ""},
		{"", "none", nil, ""},
		{"2, 0", "0,2", []int{0, 2}, ""},
		{"0,0", "", nil, "repeated"},
		{"x", "", nil, "not a GPU index"},
		{"-1", "", nil, "not a GPU index"},
		{"3", "3", nil, "GPU 3 selected but only 3 GPU(s) found"},
	} {
		s, err := ParseSelection(c.in)
		if err == nil {
			if s.String() != c.str {
				t.Errorf("%q: String %q, want %q", c.in, s.String(), c.str)
			}
			var picked []Device
			picked, err = s.Apply(devs)
			var idx []int
			for _, d := range picked {
				idx = append(idx, d.Index)
			}
			if err == nil && !equalInts(idx, c.picked) {
				t.Errorf("%q: picked %v, want %v", c.in, idx, c.picked)
			}
		}
		if (err != nil) != (c.err != "") || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%q: error %v, want %q", c.in, err, c.err)
		}
	}
	if v := VisibleDevices(devs[1:]); v != "GPU-b,GPU-c" {
		t.Errorf("VisibleDevices %q", v)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestLimitsValidate(t *testing.T) {
	d := Defaults()
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	l := Limits{GPUs: "all", PauseTempC: 80}
	if err := l.Validate(); err != nil || l.ResumeTempC != 75 {
		t.Errorf("resume default: %v %d", err, l.ResumeTempC)
	}
	for _, c := range []struct {
		l     Limits
		field string
	}{
		{Limits{GPUs: "a"}, "limits.gpus"},
		{Limits{MaxMemoryMiB: -1}, "limits.max_memory_mib"},
		{Limits{PauseOtherUtilPct: 101}, "limits.pause_other_util_pct"},
		{Limits{PauseTempC: 80, ResumeTempC: 90}, "limits.resume_temp_c"},
		{Limits{PauseTempC: 500}, "limits.pause_temp_c"},
		{Limits{CPUThreads: -2}, "limits.cpu_threads"},
		{Limits{ResumeAfter: -time.Second}, "limits.resume_after"},
	} {
		if err := c.l.Validate(); err == nil || !strings.HasPrefix(err.Error(), c.field) {
			t.Errorf("%+v: %v, want an error naming %s", c.l, err, c.field)
		}
	}
	gib := uint64(1 << 30)
	dev := Device{MemoryFree: 10 * gib}
	if b := (Limits{MaxMemoryMiB: 4096}).MemoryBudget(dev); b != 4*gib {
		t.Errorf("budget under cap %d", b)
	}
	if b := (Limits{}).MemoryBudget(dev); b != 10*gib {
		t.Errorf("budget without cap %d", b)
	}
	if n := (Limits{CPUThreads: 1}).Threads(); n != 1 {
		t.Errorf("threads %d", n)
	}
}

// TestGovernorTable runs Observe directly: no clock or goroutine inside.
func TestGovernorTable(t *testing.T) {
	t0 := time.Unix(0, 0)
	g, err := NewGovernor(Limits{GPUs: "0", PauseOtherUtilPct: 20, ResumeAfter: time.Minute}, nil)
	if err != nil {
		t.Fatal(err)
	}
	busy := []Device{{Index: 0, Processes: []Process{{PID: 7, SMUtilPct: 50}}}}
	idle := []Device{{Index: 0}}
	steps := []struct {
		at      time.Duration
		devs    []Device
		state   State
		changed bool
	}{
		{0, idle, Running, false},
		{time.Second, busy, Paused, true},
		{2 * time.Second, idle, Paused, false},
		{30 * time.Second, busy, Paused, false}, // busy again: the clear period restarts
		{40 * time.Second, idle, Paused, false},
		{99 * time.Second, idle, Paused, false},
		{100 * time.Second, idle, Running, true},
		{101 * time.Second, nil, Paused, true}, // the GPU vanished
	}
	for i, s := range steps {
		d := g.Observe(t0.Add(s.at), s.devs, nil)
		if d.State != s.state || d.Changed != s.changed {
			t.Fatalf("step %d: %+v, want %s changed=%v", i, d, s.state, s.changed)
		}
	}
	if _, r := g.Paused(); !strings.Contains(r, "GPU 0 selected") {
		t.Errorf("vanished GPU reason %q", r)
	}
}
