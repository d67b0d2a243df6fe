package gpu

// The in-use rule (--pause-on-input): hold training while someone uses the
// machine, as desktop volunteer clients do. "In use" is keyboard or mouse
// input in the last Quiet period. Linux counts the interrupts of PS/2
// keyboards, mice and touchpads (the i8042 controller) and of devices that
// name themselves keyboard, mouse or touchpad in /proc/interrupts; USB
// keyboards and mice share their USB controller's interrupt line with
// everything else on it, so they can't be told apart there. Where no such
// line exists the rule says it is unavailable and never holds.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// RuleInput is the in-use rule's name.
const RuleInput = "in-use"

// ErrNoInputCounter says the machine shows no keyboard or mouse interrupts.
var ErrNoInputCounter = errors.New("no keyboard or mouse interrupt line in /proc/interrupts (USB input devices share their controller's line)")

// inputDevices are the substrings that mark an input device's interrupt
// line.
var inputDevices = []string{"i8042", "keyboard", "mouse", "touchpad"}

// ReadInputCount sums the interrupts of the machine's keyboard and mouse
// lines in /proc/interrupts.
func ReadInputCount() (uint64, error) {
	b, err := os.ReadFile("/proc/interrupts")
	if err != nil {
		return 0, err
	}
	return parseInputCount(b)
}

func parseInputCount(b []byte) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var sum uint64
	found := false
	for sc.Scan() {
		line := sc.Text()
		lower := strings.ToLower(line)
		dev := false
		for _, d := range inputDevices {
			if strings.Contains(lower, d) {
				dev = true
				break
			}
		}
		_, rest, ok := strings.Cut(line, ":")
		if !dev || !ok {
			continue
		}
		// The per-CPU counts come first; the first field that is not a
		// number ends them.
		for _, f := range strings.Fields(rest) {
			n, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				break
			}
			sum += n
		}
		found = true
	}
	if !found {
		return 0, ErrNoInputCounter
	}
	return sum, nil
}

// InputIdle is the in-use rule: it holds while the input counter moved in
// the last Quiet.
type InputIdle struct {
	Quiet time.Duration

	last      uint64
	have      bool
	lastInput time.Time
}

// NewInputIdle returns the rule for a quiet period of at least a minute
// and at most a day.
func NewInputIdle(quiet time.Duration) (*InputIdle, error) {
	if quiet < time.Minute || quiet > 24*time.Hour {
		return nil, fmt.Errorf("pause-on-input %v: want a quiet period between 1m and 24h, or 0 for never", quiet)
	}
	return &InputIdle{Quiet: quiet}, nil
}

// Observe takes the input counter at now and returns the hold's reason
// ("" when the machine has been quiet for Quiet). The first reading only
// starts the count: it does not hold.
func (r *InputIdle) Observe(now time.Time, count uint64) string {
	if r.have && count != r.last {
		r.lastInput = now
	}
	r.last, r.have = count, true
	if r.lastInput.IsZero() {
		return ""
	}
	if ago := now.Sub(r.lastInput); ago < r.Quiet {
		return fmt.Sprintf("the machine is in use: keyboard or mouse input %v ago; training resumes after %v without input",
			ago.Round(time.Second), r.Quiet)
	}
	return ""
}
