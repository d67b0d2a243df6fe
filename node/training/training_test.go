package training

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/swarm-train/swarm/engine/native"
	"github.com/swarm-train/swarm/gpu"
	"github.com/swarm-train/swarm/internal/testutil"
	"github.com/swarm-train/swarm/node"
	"github.com/swarm-train/swarm/node/api"
	"github.com/swarm-train/swarm/node/client"
	"github.com/swarm-train/swarm/node/nodetest"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/trainer"
)

// thermoSampler is one GPU whose temperature the test sets: the telemetry
// side of the governor (no NVIDIA driver on CI machines).
type thermoSampler struct {
	temp   atomic.Int32
	closed atomic.Bool
}

func (s *thermoSampler) Driver() gpu.Driver { return gpu.Driver{Version: "test", CUDA: "12.0"} }
func (s *thermoSampler) Close() error       { s.closed.Store(true); return nil }
func (s *thermoSampler) Sample() ([]gpu.Device, error) {
	if s.closed.Load() {
		return nil, fmt.Errorf("sampler closed")
	}
	return []gpu.Device{{Index: 0, Name: "Test GPU", UUID: "GPU-test", MemoryTotal: 8 << 30, MemoryFree: 8 << 30,
		UtilizationPct: 0, TemperatureC: int(s.temp.Load())}}, nil
}

// metricValue finds an unlabelled sample (or one with the given labels,
// written as in the exposition format) in a /metrics page.
func metricValue(page, name string) (float64, bool) {
	for _, line := range strings.Split(page, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

// A training node, one shard, its GPU limits driven through a sampler:
// hot → training pauses (status and /metrics say so, no samples are
// processed); cool → it resumes, and status's typed training fields and
// the swarm_training_* collectors follow the run.
func TestTrainingStatusMetricsAndPause(t *testing.T) {
	m := run.NewMLPMNIST(1)
	m.Model.Hidden = []int{32, 32}
	m.Training = run.TrainingSpec{BatchSize: 32, TargetBatch: 64, Steps: 1000}
	m.Optimizer.WarmupSteps, m.Optimizer.DecaySteps = 2, 1000
	id, err := m.ID()
	if err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	cfg := nodetest.Config(home, "api-run")
	cfg.RunID, cfg.RunName = id, m.Name
	sampler := &thermoSampler{}
	sampler.temp.Store(95)
	svc := &Service{
		Config: trainer.Config{Manifest: m, Engine: native.New(native.WithThreads(1)), Device: "Test CPU", Shard: 0,
			RecordTTL: time.Second},
		Engine:      "native",
		Limits:      gpu.Limits{GPUs: "all", PauseTempC: 85, ResumeTempC: 80},
		Sampler:     sampler,
		SampleEvery: 20 * time.Millisecond,
	}
	cfg.Services = []node.Service{svc}
	n := nodetest.Start(t, cfg)
	cl, err := client.FromHome(home)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	status := func() *api.Status {
		st, err := cl.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	scrape := func() string {
		page, err := cl.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return page
	}

	// Hot: paused, still holding its shard.
	var st *api.Status
	testutil.Eventually(t, 20*time.Second, func() string { return fmt.Sprintf("status %+v", st) }, func() bool {
		st = status()
		return st.Governor != nil && st.Governor.State == "paused" && st.State == "paused" && st.Shard == 0
	})
	if !strings.Contains(st.Governor.Reason, "95 °C") {
		t.Errorf("pause reason %q does not name the temperature", st.Governor.Reason)
	}
	page := scrape()
	if v, ok := metricValue(page, "swarm_training_paused"); !ok || v != 1 {
		t.Errorf("swarm_training_paused = %v (found %v), want 1", v, ok)
	}
	if v, ok := metricValue(page, "swarm_gpu_paused"); !ok || v != 1 {
		t.Errorf("swarm_gpu_paused = %v (found %v), want 1", v, ok)
	}
	before, _ := metricValue(page, "swarm_training_samples_total")
	for range 5 { // a paused node draws nothing: over a few polls, no samples move
		time.Sleep(100 * time.Millisecond)
		if v, _ := metricValue(scrape(), "swarm_training_samples_total"); v != before {
			t.Fatalf("samples went from %v to %v while paused", before, v)
		}
	}

	// Cool: training resumes and runs epochs.
	sampler.temp.Store(60)
	testutil.Eventually(t, 30*time.Second, func() string { return fmt.Sprintf("status %+v", st) }, func() bool {
		st = status()
		return st.Governor != nil && st.Governor.State == "running" && st.Epoch >= 3 && st.Averaging != nil
	})
	self := n.Host().ID().String()
	if st.Engine != "native" || st.Device != "Test CPU" || st.Shard != 0 || st.Epochs != 1000 || st.RunID != id.String() {
		t.Errorf("training fields: engine %q device %q shard %d epochs %d run %s", st.Engine, st.Device, st.Shard, st.Epochs, st.RunID)
	}
	if len(st.Shards) != 1 || st.Shards[0].Index != 0 || len(st.Shards[0].Peers) != 1 || st.Shards[0].Peers[0] != self {
		t.Errorf("shards %+v, want shard 0 held by this node", st.Shards)
	}
	if st.Averaging.GroupSize != 1 || st.Averaging.Round == 0 {
		t.Errorf("averaging %+v, want rounds alone", st.Averaging)
	}
	if _, ok := st.Services["training"]; !ok {
		t.Error("services.training missing")
	}
	if _, ok := st.Services["gpu"]; !ok {
		t.Error("services.gpu missing")
	}

	page = scrape()
	for _, name := range []string{"swarm_training_epoch", "swarm_training_samples_total", "swarm_training_loss",
		"swarm_training_samples_per_second", "swarm_training_swarm_samples_per_second", "swarm_training_averaging_fraction",
		"swarm_training_averaging_group_size", "swarm_training_pipeline_hops_total", "swarm_training_pipeline_hop_failures_total",
		"swarm_training_pipeline_hop_retries_total", "swarm_training_pipeline_bans_total", "swarm_training_utilization_ratio"} {
		if _, ok := metricValue(page, name); !ok {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	for _, labelled := range []string{`swarm_training_averaging_rounds_total{outcome="alone"}`, `swarm_training_statesync_bytes_total{direction="fetched"}`,
		`swarm_training_statesync_bytes_total{direction="served"}`, `swarm_training_state{state="online"} 1`, `swarm_gpu_temperature_celsius{gpu="0",uuid="GPU-test"} 60`,
		`swarm_training_device_info{device="Test CPU",engine="native"} 1`} {
		if !strings.Contains(page, labelled) {
			t.Errorf("/metrics lacks %s", labelled)
		}
	}
	if v, _ := metricValue(page, "swarm_training_epoch"); v < 3 {
		t.Errorf("swarm_training_epoch = %v, want ≥ 3", v)
	}
	if v, _ := metricValue(page, "swarm_training_samples_total"); v < 3*64 {
		t.Errorf("swarm_training_samples_total = %v, want ≥ %d", v, 3*64)
	}
	if v, _ := metricValue(page, "swarm_training_paused"); v != 0 {
		t.Errorf("swarm_training_paused = %v after resuming", v)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if !sampler.closed.Load() {
		t.Error("the service did not close its sampler")
	}
}
