package gpu

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseInputCount(t *testing.T) {
	laptop := `           CPU0       CPU1
   1:       1200         34   IO-APIC    1-edge      i8042
   8:          0          0   IO-APIC    8-edge      rtc0
  12:      88000         12   IO-APIC   12-edge      i8042
 130:        500          0   PCI-MSI 1-edge      xhci_hcd
 NMI:          0          0   Non-maskable interrupts
`
	n, err := parseInputCount([]byte(laptop))
	if err != nil || n != 1200+34+88000+12 {
		t.Fatalf("laptop: %d, %v", n, err)
	}
	server := `           CPU0       CPU1
  24:          1          0  IO-APIC   5-edge      ACPI:Ged
  28:          0          0 PCI-MSIX-0000:00:01.0   0-edge      virtio0-config
`
	if _, err := parseInputCount([]byte(server)); !errors.Is(err, ErrNoInputCounter) {
		t.Fatalf("server without input devices: %v", err)
	}
}

// The in-use rule in virtual time: input holds training until Quiet has
// passed without any; the first reading only starts the count.
func TestInputIdleRule(t *testing.T) {
	if _, err := NewInputIdle(10 * time.Second); err == nil {
		t.Error("a 10 s quiet period accepted")
	}
	r, err := NewInputIdle(5 * time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	steps := []struct {
		at    time.Duration
		count uint64
		held  bool
	}{
		{0, 100, false},               // first reading: no hold
		{5 * time.Second, 100, false}, // no input
		{10 * time.Second, 130, true}, // typing
		{4 * time.Minute, 130, true},  // quiet for 3m50s of 5m
		{5*time.Minute + 11*time.Second, 130, false},
		{6 * time.Minute, 131, true}, // a mouse move
	}
	g := NewGate()
	w := &RuleWatcher{Gate: g, Input: r}
	for i, s := range steps {
		count := s.count
		w.ReadInput = func() (uint64, error) { return count, nil }
		w.Step(t0.Add(s.at))
		if g.Held(RuleInput) != s.held {
			t.Fatalf("step %d (%v): held %v, want %v (%+v)", i, s.at, g.Held(RuleInput), s.held, g.Holds())
		}
	}
	if h := g.Holds(); len(h) != 1 || !strings.Contains(h[0].Reason, "in use") {
		t.Errorf("holds %+v", h)
	}
}
