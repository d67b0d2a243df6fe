package gpu

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func at(hhmm string) time.Time {
	t, err := time.ParseInLocation("2006-01-02 15:04", "2026-03-14 "+hhmm, time.UTC)
	if err != nil {
		panic(err)
	}
	return t
}

func TestActiveHoursAcrossMidnight(t *testing.T) {
	night, err := ParseActiveHours("22:00-07:00")
	if err != nil {
		t.Fatal(err)
	}
	day, err := ParseActiveHours("9:30-17:00")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		clock      string
		night, day bool
	}{
		{"21:59", false, false}, {"22:00", true, false}, {"23:59", true, false}, {"00:00", true, false},
		{"06:59", true, false}, {"07:00", false, false}, {"09:29", false, false}, {"09:30", false, true},
		{"16:59", false, true}, {"17:00", false, false},
	} {
		if got := night.Contains(at(c.clock)); got != c.night {
			t.Errorf("22:00-07:00 at %s: %v, want %v", c.clock, got, c.night)
		}
		if got := day.Contains(at(c.clock)); got != c.day {
			t.Errorf("09:30-17:00 at %s: %v, want %v", c.clock, got, c.day)
		}
	}
	if r := night.Reason(at("12:00")); !strings.Contains(r, "22:00-07:00") || !strings.Contains(r, "resumes at 22:00") {
		t.Errorf("reason %q does not name the window and when training resumes", r)
	}
	if r := night.Reason(at("23:00")); r != "" {
		t.Errorf("inside the window the reason is %q", r)
	}
	var none ActiveHours
	if !none.Contains(at("12:00")) || none.IsSet() {
		t.Error("no window must allow every hour")
	}
	whole, err := ParseActiveHours("00:00-24:00")
	if err != nil || !whole.Contains(at("23:59")) || !whole.Contains(at("00:00")) {
		t.Errorf("00:00-24:00: %v, contains 23:59 %v", err, whole.Contains(at("23:59")))
	}
}

func TestActiveHoursRefusesBadTimes(t *testing.T) {
	for in, want := range map[string]string{
		"22:00":        "want START-END",
		"25:00-07:00":  "hour 25 is past 23",
		"22:00-07:60":  "minute 60 is past 59",
		"ten-eleven":   "is not a time HH:MM",
		"22:00-22:00":  "start and end are the same",
		"22-07":        "is not a time HH:MM",
		"22:00-7:0":    "is not a time HH:MM",
		"-1:00-07:00":  "is not a time HH:MM",
		"22:00-07:00x": "is not a time HH:MM",
	} {
		_, err := ParseActiveHours(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseActiveHours(%q) = %v, want an error saying %q", in, err, want)
		}
	}
}

// The cpu-busy rule on a manual clock: it holds above the threshold, keeps
// holding while the share stays above the resume level, and lets go only
// after ResumeAfter below it (hysteresis).
func TestCPUBusyHysteresis(t *testing.T) {
	c, err := NewCPUBusy(50, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1_700_000_000, 0)
	steps := []struct {
		after time.Duration
		pct   float64
		held  bool
		says  string
	}{
		{0, 30, false, ""},
		{5 * time.Second, 50, false, ""},               // at the threshold: not above
		{10 * time.Second, 75, true, "75% of the CPU"}, // above: hold
		{15 * time.Second, 45, true, "limit 50%"},      // below the threshold, above resume (40): still held
		{20 * time.Second, 30, true, "for 0s of 30s"},  // below resume: the clear time starts
		{40 * time.Second, 35, true, "for 20s of 30s"}, // still clear
		{45 * time.Second, 60, true, "60% of the CPU"}, // busy again: the clear time resets
		{50 * time.Second, 10, true, "for 0s of 30s"},  // clear again
		{79 * time.Second, 10, true, "for 29s of 30s"}, // not yet
		{80 * time.Second, 10, false, ""},              // clear for 30 s: released
		{81 * time.Second, 45, false, ""},              // below the threshold: stays running
	}
	for _, s := range steps {
		r := c.Observe(t0.Add(s.after), s.pct)
		if (r != "") != s.held || !strings.Contains(r, s.says) {
			t.Fatalf("at +%v with %v%%: reason %q, want held=%v saying %q", s.after, s.pct, r, s.held, s.says)
		}
	}
	for _, bad := range []int{-1, 0, 101} {
		if _, err := NewCPUBusy(bad, 0); err == nil || !strings.Contains(err.Error(), "want 1 to 100") {
			t.Errorf("NewCPUBusy(%d) = %v", bad, err)
		}
	}
}

func TestOtherCPUPct(t *testing.T) {
	prev := CPUTimes{Busy: 1000, Total: 4000, Own: 500}
	for _, c := range []struct {
		cur  CPUTimes
		want float64
	}{
		{CPUTimes{Busy: 1400, Total: 5000, Own: 600}, 30}, // 400 busy, 100 ours: 300 of 1000
		{CPUTimes{Busy: 1400, Total: 5000, Own: 900}, 0},  // all ours
		{CPUTimes{Busy: 1000, Total: 4000, Own: 500}, 0},  // no time passed
	} {
		if got := OtherCPUPct(prev, c.cur); got != c.want {
			t.Errorf("OtherCPUPct(%+v) = %v, want %v", c.cur, got, c.want)
		}
	}
	if _, err := ReadCPUTimes(); err != nil {
		t.Logf("no /proc here: %v", err)
	}
}

// The gate: training waits while any rule holds, and the watcher sets and
// clears the active-hours and cpu-busy holds from a manual clock and
// scripted CPU readings.
func TestGateCombinesRules(t *testing.T) {
	g := NewGate()
	ctx := context.Background()
	if err := g.WaitRunning(ctx); err != nil {
		t.Fatalf("no hold: %v", err)
	}
	now := at("12:00")
	if !g.Set(now, RuleManual, "paused by the volunteer") || g.Set(now, RuleManual, "again") {
		t.Error("Set must report a change only when a hold starts")
	}
	hours, _ := ParseActiveHours("22:00-07:00")
	cpu, _ := NewCPUBusy(50, 10*time.Second)
	ticks := []CPUTimes{{0, 0, 0}, {800, 1000, 100}, {900, 2000, 200}, {1000, 3000, 300}}
	w := &RuleWatcher{Gate: g, Hours: hours, CPU: cpu, Location: time.UTC, ReadCPU: func() (CPUTimes, error) {
		if len(ticks) == 0 {
			return CPUTimes{}, errors.New("no more readings")
		}
		t := ticks[0]
		ticks = ticks[1:]
		return t, nil
	}}
	w.Step(now) // first reading: no share yet
	if got := rules(g); got != "active-hours manual" {
		t.Fatalf("holds at noon: %s", got)
	}
	w.Step(now.Add(5 * time.Second)) // 70% others
	if got := rules(g); got != "active-hours cpu-busy manual" {
		t.Fatalf("holds with a busy CPU: %s", got)
	}
	done := make(chan error, 1)
	go func() { done <- g.WaitRunning(ctx) }()
	g.Set(now, RuleManual, "")
	w.Step(at("22:00"))                       // in the window; 0% others: clear time starts
	w.Step(at("22:00").Add(10 * time.Second)) // clear 10 s: released
	select {
	case err := <-done:
		if err != nil || rules(g) != "" {
			t.Fatalf("WaitRunning %v with holds %q", err, rules(g))
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("WaitRunning still blocked; holds %q", rules(g))
	}
	// A failed reading leaves the cpu-busy hold as it was.
	w.Step(at("23:00"))
	if rules(g) != "" {
		t.Fatalf("holds after a failed reading: %s", rules(g))
	}
	cctx, cancel := context.WithCancel(ctx)
	g.Set(now, RuleManual, "x")
	cancel()
	if err := g.WaitRunning(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitRunning with a held gate and a cancelled context: %v", err)
	}
}

func rules(g *Gate) string {
	var names []string
	for _, h := range g.Holds() {
		names = append(names, h.Rule)
	}
	return strings.Join(names, " ")
}

func TestCheckSettable(t *testing.T) {
	if err := CheckSettable(RuleManual); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{RuleActiveHours, RuleCPUBusy, RuleInput, RuleGPU} {
		if err := CheckSettable(r); !errors.Is(err, ErrNotSettable) || !strings.Contains(err.Error(), r) {
			t.Errorf("CheckSettable(%q) = %v", r, err)
		}
	}
	if err := CheckSettable("coffee-break"); !errors.Is(err, ErrUnknownRule) || !strings.Contains(err.Error(), `"coffee-break"`) {
		t.Errorf("unknown rule: %v", err)
	}
}
