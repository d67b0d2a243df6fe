package main

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/swarm-train/swarm/engine/choose"
	"github.com/swarm-train/swarm/engine/native"
	"github.com/swarm-train/swarm/spec/run"
)

// The node announces swarm bench's cached rate for its device, engine and
// one of the run's shard sizes; without one it measures the first shard.
func TestAnnouncedRate(t *testing.T) {
	m := run.NewMLPMNIST(2)
	m.Model.Hidden = []int{32, 32}
	m.Shards = run.EvenShards(m.Model.Units(), 2)
	e := native.New(native.WithThreads(1))
	defer e.Close()
	path := filepath.Join(t.TempDir(), "bench.json")
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	measured := announcedRate(path, e, m, "Test CPU", log)
	if measured <= 0 || !strings.Contains(logs.String(), "throughput measured") {
		t.Fatalf("without a cached result: rate %v, log:\n%s", measured, logs.String())
	}

	cache, err := choose.OpenBenchCache(path)
	if err != nil {
		t.Fatal(err)
	}
	units := m.Shards[1].End - m.Shards[1].Start
	// Another device's and another batch's results do not count.
	for _, k := range []string{choose.BenchKey("Other CPU", e.Name(), m.Model, units, m.Training.BatchSize),
		choose.BenchKey("Test CPU", e.Name(), m.Model, units, m.Training.BatchSize+1)} {
		if err := cache.Put(k, choose.BenchResult{GFLOPSec: 1, When: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if err := cache.Put(choose.BenchKey("Test CPU", e.Name(), m.Model, units, m.Training.BatchSize), choose.BenchResult{Units: units, GFLOPSec: 123, When: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := announcedRate(path, e, m, "Test CPU", log); got != 123e9 {
		t.Fatalf("with a cached result: rate %v, want 123e9", got)
	}
}
