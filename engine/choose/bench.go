package choose

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/internal/atomicfile"
	"github.com/swarm-train/swarm/spec/run"
)

// BenchResult is the measured training throughput of one shard span.
type BenchResult struct {
	Model      string    `json:"model"`
	Engine     string    `json:"engine"`
	Device     string    `json:"device"`
	Units      int       `json:"units"`      // units in the measured shard
	FirstUnit  int       `json:"first_unit"` // its first unit
	Batch      int       `json:"batch"`      // micro-batch size
	Steps      int       `json:"steps"`      // timed micro-batches
	SamplesSec float64   `json:"samples_per_sec"`
	GFLOPSec   float64   `json:"gflop_per_sec"` // by run.Manifest.FLOPsPerSample
	When       time.Time `json:"when"`
}

// BenchShard times training micro-batches (forward, backward, optimizer
// step) of shard index of m on e: one warm-up, then until minTime has passed
// (at least 2). Batches are random valid inputs.
func BenchShard(e engine.Engine, m *run.Manifest, index, batch int, minTime time.Duration) (BenchResult, error) {
	s, err := e.NewShard(m, index)
	if err != nil {
		return BenchResult{}, err
	}
	defer s.Close()
	b := engine.RandomBatch(m, batch, 3)
	var in []float32
	if index > 0 {
		in = make([]float32, batch*m.ActivationSize(index-1))
		r := rand.New(rand.NewPCG(1, 2))
		for i := range in {
			in[i] = float32(r.NormFloat64())
		}
	}
	var gradOut []float32
	if index < len(m.Shards)-1 {
		gradOut = make([]float32, batch*m.ActivationSize(index))
		for i := range gradOut {
			gradOut[i] = 1e-3
		}
	}
	one := func() error {
		_, _, tape, err := s.Forward(b, in, true)
		if err != nil {
			return err
		}
		if _, err := s.Backward(tape, gradOut); err != nil {
			return err
		}
		if err := s.Step(m.Optimizer.LR, 1); err != nil {
			return err
		}
		s.ZeroGrad()
		return nil
	}
	if err := one(); err != nil {
		return BenchResult{}, err
	}
	start := time.Now()
	steps := 0
	for steps < 2 || time.Since(start) < minTime {
		if err := one(); err != nil {
			return BenchResult{}, err
		}
		steps++
	}
	el := time.Since(start).Seconds()
	flops, _ := m.FLOPsPerSample(index)
	sp := m.Shards[index]
	r := BenchResult{Model: m.Model.Arch, Engine: e.Name(), Units: sp.End - sp.Start, FirstUnit: sp.Start, Batch: batch, Steps: steps,
		SamplesSec: float64(steps*batch) / el, When: time.Now().UTC()}
	r.GFLOPSec = r.SamplesSec * flops / 1e9
	return r, nil
}

// SpanManifest is m split so that shard 0 holds units [0, units) and shard 1
// the rest (none when units covers the model): the shard BenchShard measures
// for a given shard size.
func SpanManifest(m *run.Manifest, units int) (*run.Manifest, error) {
	total := m.Model.Units()
	if units < 1 || units > total {
		return nil, fmt.Errorf("shard of %d units: model has %d", units, total)
	}
	c := *m
	c.Shards = []run.ShardSpec{{Index: 0, Start: 0, End: units}}
	if units < total {
		c.Shards = append(c.Shards, run.ShardSpec{Index: 1, Start: units, End: total})
	}
	return &c, nil
}

// BenchKey names a cached measurement: the device, the engine, the model
// (its architecture and sizes), the shard span and the batch.
func BenchKey(device, engineName string, md run.ModelSpec, units, batch int) string {
	spec, _ := json.Marshal(md)
	h := sha256.Sum256(spec)
	return fmt.Sprintf("%s|%s|%s-%s|units=%d|batch=%d", device, engineName, md.Arch, hex.EncodeToString(h[:6]), units, batch)
}

// BenchCache keeps measurements in a JSON file, so a node announces its
// throughput without measuring again on every start.
type BenchCache struct {
	path    string
	mu      sync.Mutex
	Entries map[string]BenchResult `json:"entries"`
}

// DefaultBenchCachePath is $XDG_CACHE_HOME/swarm/bench.json (or the OS equivalent).
func DefaultBenchCachePath() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "swarm", "bench.json"), nil
}

// OpenBenchCache reads the cache at path; a missing file is an empty cache,
// an unreadable one an error naming it.
func OpenBenchCache(path string) (*BenchCache, error) {
	c := &BenchCache{path: path, Entries: map[string]BenchResult{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, c); err != nil {
		return nil, fmt.Errorf("bench cache %s: %w", path, err)
	}
	if c.Entries == nil {
		c.Entries = map[string]BenchResult{}
	}
	return c, nil
}

// Get returns a cached result.
func (c *BenchCache) Get(key string) (BenchResult, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.Entries[key]
	return r, ok
}

// Put stores a result and writes the file atomically.
func (c *BenchCache) Put(key string, r BenchResult) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.Entries[key] = r
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(c.path), 0o755); err != nil {
		return err
	}
	return atomicfile.WriteFile(c.path, data, 0o644)
}
