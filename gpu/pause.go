package gpu

// Pause rules: everything that may hold a volunteer's training, combined in
// one Gate whose WaitRunning the trainer blocks on. Each rule sets or clears
// its hold with a reason; training runs while no rule holds it.
//
//   - manual: the volunteer said `swarm pause` (or pressed Pause on the
//     dashboard) and has not resumed;
//   - active-hours: the local time is outside --active-hours;
//   - cpu-busy: other processes use more of the CPU than the threshold;
//   - gpu: the Governor's GPU limits (heat, other processes on the GPU).
//
// The decisions (ActiveHours.Contains, CPUBusy.Observe) are pure steps fed
// a time and a sample; RuleWatcher runs them on a clock.Clock.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/swarm-train/swarm/internal/clock"
)

// Pause rules, as named in status and by the control API.
const (
	RuleManual      = "manual"
	RuleActiveHours = "active-hours"
	RuleCPUBusy     = "cpu-busy"
	RuleGPU         = "gpu"
)

// Rules lists every pause rule.
var Rules = []string{RuleManual, RuleActiveHours, RuleCPUBusy, RuleInput, RuleGPU}

// ErrUnknownRule is wrapped by CheckSettable for a name that is no rule.
var ErrUnknownRule = errors.New("unknown pause rule")

// ErrNotSettable is wrapped by CheckSettable for a rule that follows the
// node's settings and clears by itself (active-hours, cpu-busy, gpu).
var ErrNotSettable = errors.New("pause rule follows the node's settings")

// CheckSettable says whether a volunteer may set or clear rule by hand:
// only the manual rule; the others name what governs them.
func CheckSettable(rule string) error {
	switch rule {
	case RuleManual:
		return nil
	case RuleActiveHours:
		return fmt.Errorf("%w: %s is set by --active-hours and clears at the window's start", ErrNotSettable, rule)
	case RuleCPUBusy:
		return fmt.Errorf("%w: %s is set by --pause-other-cpu and clears when other processes use less CPU", ErrNotSettable, rule)
	case RuleInput:
		return fmt.Errorf("%w: %s is set by --pause-on-input and clears after the quiet period without keyboard or mouse input", ErrNotSettable, rule)
	case RuleGPU:
		return fmt.Errorf("%w: %s is set by the GPU limits (--pause-temp, --pause-other-*) and clears when they are clear", ErrNotSettable, rule)
	}
	return fmt.Errorf("%w %.40q: want %s", ErrUnknownRule, rule, RuleManual)
}

// Hold is one rule holding training.
type Hold struct {
	Rule   string    `json:"rule"`
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

// Gate combines the pause rules. Safe for concurrent use.
type Gate struct {
	mu      sync.Mutex
	holds   map[string]Hold
	changed chan struct{} // closed and replaced when a rule starts or stops holding
}

// NewGate returns a gate that no rule holds.
func NewGate() *Gate {
	return &Gate{holds: map[string]Hold{}, changed: make(chan struct{})}
}

// Set makes rule hold training for reason, or clears its hold when reason
// is empty. It reports whether the rule started or stopped holding (a new
// reason for a rule that already holds is not a change).
func (g *Gate) Set(now time.Time, rule, reason string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	h, held := g.holds[rule]
	switch {
	case reason == "" && !held:
		return false
	case reason == "":
		delete(g.holds, rule)
	case held:
		h.Reason = reason
		g.holds[rule] = h
		return false
	default:
		g.holds[rule] = Hold{Rule: rule, Reason: reason, Since: now}
	}
	close(g.changed)
	g.changed = make(chan struct{})
	return true
}

// Holds returns the rules holding training now, by rule name.
func (g *Gate) Holds() []Hold {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]Hold, 0, len(g.holds))
	for _, h := range g.holds {
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Rule < out[j].Rule })
	return out
}

// Held reports whether rule holds training now.
func (g *Gate) Held(rule string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.holds[rule]
	return ok
}

// Changed returns a channel closed at the next start or end of a hold.
func (g *Gate) Changed() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.changed
}

// WaitRunning returns once no rule holds training (at once when none does
// now), or with ctx's error. It is the trainer's Config.WaitRunning.
func (g *Gate) WaitRunning(ctx context.Context) error {
	for {
		g.mu.Lock()
		n, ch := len(g.holds), g.changed
		g.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// ActiveHours is a daily window of local time in which training may run;
// the zero value (no window) allows every hour. A window whose end is
// before its start crosses midnight (22:00-07:00).
type ActiveHours struct {
	set        bool
	start, end int // minutes after midnight
}

// ParseActiveHours parses "HH:MM-HH:MM" (24-hour clock, local time); ""
// means no window. It names what is wrong with a bad value.
func ParseActiveHours(s string) (ActiveHours, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return ActiveHours{}, nil
	}
	from, to, ok := strings.Cut(s, "-")
	if !ok {
		return ActiveHours{}, fmt.Errorf("active hours %.40q: want START-END such as 22:00-07:00", s)
	}
	start, err := parseClock(from)
	if err != nil {
		return ActiveHours{}, fmt.Errorf("active hours %.40q: start: %w", s, err)
	}
	end, err := parseClock(to)
	if err != nil {
		return ActiveHours{}, fmt.Errorf("active hours %.40q: end: %w", s, err)
	}
	if start == end {
		return ActiveHours{}, fmt.Errorf("active hours %.40q: start and end are the same time; leave the window out to train at all hours", s)
	}
	return ActiveHours{set: true, start: start, end: end}, nil
}

// parseClock parses HH:MM, 00:00 to 23:59 (24:00 is accepted as an end of day).
func parseClock(s string) (int, error) {
	s = strings.TrimSpace(s)
	hh, mm, ok := strings.Cut(s, ":")
	if !ok || len(hh) < 1 || len(hh) > 2 || len(mm) != 2 {
		return 0, fmt.Errorf("%.10q is not a time HH:MM", s)
	}
	h, err1 := strconv.Atoi(hh)
	m, err2 := strconv.Atoi(mm)
	if err1 != nil || err2 != nil || h < 0 || m < 0 {
		return 0, fmt.Errorf("%.10q is not a time HH:MM", s)
	}
	if h == 24 && m == 0 {
		return 24 * 60, nil
	}
	if h > 23 {
		return 0, fmt.Errorf("hour %d is past 23", h)
	}
	if m > 59 {
		return 0, fmt.Errorf("minute %d is past 59", m)
	}
	return h*60 + m, nil
}

// IsSet reports whether a window was given.
func (a ActiveHours) IsSet() bool { return a.set }

// String is the window as parsed ("22:00-07:00"), "" when none.
func (a ActiveHours) String() string {
	if !a.set {
		return ""
	}
	return hhmm(a.start) + "-" + hhmm(a.end)
}

func hhmm(min int) string { return fmt.Sprintf("%02d:%02d", min/60%24, min%60) }

// Contains reports whether t, in t's location, is inside the window.
func (a ActiveHours) Contains(t time.Time) bool {
	if !a.set {
		return true
	}
	m := t.Hour()*60 + t.Minute()
	if a.start < a.end {
		return m >= a.start && m < a.end
	}
	return m >= a.start || m < a.end // across midnight
}

// Reason is the hold's reason at t, "" inside the window.
func (a ActiveHours) Reason(t time.Time) string {
	if a.Contains(t) {
		return ""
	}
	return fmt.Sprintf("outside the active hours %s (local time %s; training resumes at %s)", a, t.Format("15:04"), hhmm(a.start))
}

// CPUTimes are cumulative CPU ticks read from /proc: the whole machine's
// busy and total time, and this process's own (with its live children,
// the torch workers).
type CPUTimes struct {
	Busy, Total, Own uint64
}

// OtherCPUPct is the share of the machine's CPU time, in percent, that
// processes other than this node used between two readings.
func OtherCPUPct(prev, cur CPUTimes) float64 {
	if cur.Total <= prev.Total {
		return 0
	}
	total := float64(cur.Total - prev.Total)
	busy := float64(cur.Busy) - float64(prev.Busy)
	own := float64(cur.Own) - float64(prev.Own)
	other := busy - own
	if other < 0 {
		other = 0
	}
	return min(100, 100*other/total)
}

// CPUBusy is the cpu-busy rule: hold while other processes use more than
// PausePct of the CPU; release once they have stayed below ResumePct
// (hysteresis: the node's own start does not flap it) for ResumeAfter.
type CPUBusy struct {
	PausePct    float64
	ResumePct   float64
	ResumeAfter time.Duration

	held       bool
	clearSince time.Time
}

// NewCPUBusy returns the rule with the threshold pct (1-100); it resumes
// below pct-10 (at least pct/2) after resumeAfter.
func NewCPUBusy(pct int, resumeAfter time.Duration) (*CPUBusy, error) {
	if pct < 1 || pct > 100 {
		return nil, fmt.Errorf("pause-other-cpu %d: want 1 to 100 (percent of all cores), or 0 for never", pct)
	}
	resume := max(float64(pct)-10, float64(pct)/2)
	return &CPUBusy{PausePct: float64(pct), ResumePct: resume, ResumeAfter: resumeAfter}, nil
}

// Observe takes other processes' CPU share at now and returns the hold's
// reason ("" when the rule does not hold).
func (c *CPUBusy) Observe(now time.Time, otherPct float64) string {
	if !c.held {
		if otherPct > c.PausePct {
			c.held, c.clearSince = true, time.Time{}
			return c.reason(otherPct, "")
		}
		return ""
	}
	if otherPct >= c.ResumePct {
		c.clearSince = time.Time{}
		return c.reason(otherPct, "")
	}
	if c.clearSince.IsZero() {
		c.clearSince = now
	}
	if clear := now.Sub(c.clearSince); clear < c.ResumeAfter {
		return c.reason(otherPct, fmt.Sprintf(" (below %.0f%% for %v of %v)", c.ResumePct, clear.Round(time.Second), c.ResumeAfter))
	}
	c.held = false
	return ""
}

func (c *CPUBusy) reason(pct float64, progress string) string {
	return fmt.Sprintf("other processes use %.0f%% of the CPU (limit %.0f%%)%s", pct, c.PausePct, progress)
}

// ReadCPUTimes reads the machine's and this process's CPU ticks from /proc
// (Linux). Elsewhere it returns an error and the cpu-busy rule stays off.
func ReadCPUTimes() (CPUTimes, error) {
	var t CPUTimes
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return t, fmt.Errorf("cpu-busy rule: %w", err)
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return t, errors.New("cpu-busy rule: /proc/stat has no cpu line")
	}
	for i, s := range f[1:] {
		if i >= 8 { // guest time is already in user and nice
			break
		}
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return t, fmt.Errorf("cpu-busy rule: /proc/stat: %w", err)
		}
		t.Total += v
		if i != 3 && i != 4 { // idle, iowait
			t.Busy += v
		}
	}
	t.Own = procTicks("/proc/self/stat")
	for _, pid := range childPIDs() {
		t.Own += procTicks("/proc/" + pid + "/stat")
	}
	return t, nil
}

// procTicks is a process's user+system ticks from its stat file (0 when gone).
func procTicks(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	i := bytes.LastIndex(b, []byte(") "))
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseUint(f[11], 10, 64)
	s, _ := strconv.ParseUint(f[12], 10, 64)
	return u + s
}

// childPIDs lists this process's live children.
func childPIDs() []string {
	tasks, _ := filepath.Glob("/proc/self/task/*/children")
	var out []string
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Split(bufio.ScanWords)
		for sc.Scan() {
			out = append(out, sc.Text())
		}
	}
	return out
}

// RuleWatcher runs the active-hours, cpu-busy and in-use rules on a gate.
type RuleWatcher struct {
	Gate  *Gate
	Hours ActiveHours
	CPU   *CPUBusy // nil: the cpu-busy rule is off
	// ReadCPU reads the CPU ticks (ReadCPUTimes when nil).
	ReadCPU func() (CPUTimes, error)
	// Location is the volunteer's time zone (time.Local when nil).
	Location *time.Location
	// Input is the in-use rule (nil: off); ReadInput reads its counter
	// (ReadInputCount when nil).
	Input     *InputIdle
	ReadInput func() (uint64, error)

	prev    CPUTimes
	havePrv bool
}

// Step applies the rules at now. The first CPU reading only starts the
// measurement; a reading that fails leaves the cpu-busy hold as it was.
func (w *RuleWatcher) Step(now time.Time) {
	loc := w.Location
	if loc == nil {
		loc = time.Local
	}
	w.Gate.Set(now, RuleActiveHours, w.Hours.Reason(now.In(loc)))
	if w.Input != nil {
		read := w.ReadInput
		if read == nil {
			read = ReadInputCount
		}
		if n, err := read(); err == nil {
			w.Gate.Set(now, RuleInput, w.Input.Observe(now, n))
		}
	}
	if w.CPU == nil {
		return
	}
	read := w.ReadCPU
	if read == nil {
		read = ReadCPUTimes
	}
	cur, err := read()
	if err != nil {
		return
	}
	if w.havePrv {
		w.Gate.Set(now, RuleCPUBusy, w.CPU.Observe(now, OtherCPUPct(w.prev, cur)))
	}
	w.prev, w.havePrv = cur, true
}

// Run steps every interval on clk (nil: the wall clock) until ctx ends.
func (w *RuleWatcher) Run(ctx context.Context, clk clock.Clock, every time.Duration) {
	clk = clock.Or(clk)
	for {
		w.Step(clk.Now())
		if clock.Sleep(ctx, clk, every) != nil {
			return
		}
	}
}
