package ui_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/swarm-train/swarm/node/ui"
)

// The history survives a restart: Run saves it when it stops and New reads
// it back, the newest Keep points in time order.
func TestHistoryPersists(t *testing.T) {
	file := filepath.Join(t.TempDir(), "ui-history.json")
	d := ui.New(&fakeSource{}, ui.Options{Keep: 4, File: file})
	t0 := time.Unix(1_700_000_000, 0)
	for i := range 6 {
		d.Sample(t0.Add(time.Duration(i) * time.Second))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d.Run(ctx) // samples once more, saves, stops
	want := d.History()
	var errs []error
	again := ui.New(&fakeSource{}, ui.Options{Keep: 4, File: file, OnError: func(err error) { errs = append(errs, err) }})
	got := again.History()
	if len(errs) > 0 || len(got) != 4 || got[0].T != want[0].T || got[3].T != want[3].T {
		t.Fatalf("restored %+v (errors %v), want %+v", got, errs, want)
	}
	// A smaller ring keeps the newest points.
	small := ui.New(&fakeSource{}, ui.Options{Keep: 2, File: file})
	if h := small.History(); len(h) != 2 || h[1].T != want[3].T {
		t.Fatalf("Keep 2 restored %+v", h)
	}
}

// A bad history file is reported, restores nothing and is left in place.
func TestBadHistoryFile(t *testing.T) {
	for name, body := range map[string]string{
		"garbage":    "not json",
		"negative":   `[{"t": 1, "loss": -1}]`,
		"time order": `[{"t": 5}, {"t": 4}]`,
		"huge":       "[" + strings.Repeat(`{"t": 1},`, 10000) + `{"t": 1}]`,
	} {
		t.Run(name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "ui-history.json")
			if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			var errs []error
			d := ui.New(&fakeSource{}, ui.Options{Keep: 4, File: file, OnError: func(err error) { errs = append(errs, err) }})
			if len(d.History()) != 0 || len(errs) != 1 || !strings.Contains(errs[0].Error(), file) {
				t.Fatalf("history %+v, errors %v", d.History(), errs)
			}
			if b, _ := os.ReadFile(file); string(b) != body {
				t.Error("the bad file was changed")
			}
		})
	}
}
