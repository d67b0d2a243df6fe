package main

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/swarm-train/swarm/node/api"
	"github.com/swarm-train/swarm/node/client"
)

// checkTrainingStatus checks, on a training node of a run with shards
// shards and nodes volunteer nodes, the documented `swarm status --json`
// schema (top-level run_id, epoch, shards, peers with their shard, device
// and state), the human table, and the swarm_training_* collectors on
// /metrics.
func checkTrainingStatus(t *testing.T, bin, home string, shards, nodes int) {
	t.Helper()
	out, stderr, code := swarmCmd(t, bin, "status", "--json", "--home", home)
	if code != 0 {
		t.Fatalf("swarm status --json: %s", stderr)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatal(err)
	}
	if id, _ := raw["run_id"].(string); id == "" {
		t.Errorf("run_id %v", raw["run_id"])
	}
	if e, ok := raw["epoch"].(float64); !ok || e < 1 {
		t.Errorf("epoch %v, want a number ≥ 1", raw["epoch"])
	}
	rawShards, _ := raw["shards"].([]any)
	if len(rawShards) != shards {
		t.Errorf("shards %v, want %d", raw["shards"], shards)
	}
	for _, s := range rawShards {
		obj, _ := s.(map[string]any)
		for _, k := range []string{"index", "peers", "throughput"} {
			if _, ok := obj[k]; !ok {
				t.Errorf("shard %v lacks %q", s, k)
			}
		}
	}
	training := 0
	for _, p := range raw["peers"].([]any) {
		obj, _ := p.(map[string]any)
		if _, ok := obj["peer_id"].(string); !ok {
			t.Errorf("peer %v lacks peer_id", p)
		}
		if _, ok := obj["addrs"].([]any); !ok {
			t.Errorf("peer %v lacks addrs", p)
		}
		if _, ok := obj["shard"]; ok {
			training++
			if obj["device"] == "" || obj["state"] == "" {
				t.Errorf("training peer %v lacks device or state", p)
			}
		}
	}
	if training != nodes-1 {
		t.Errorf("%d peers with training info, want the %d other nodes", training, nodes-1)
	}
	var st api.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if st.Engine != "native" || st.Device == "" || st.Shard < 0 || st.State == "" || st.Averaging == nil || st.Averaging.GroupSize < 2 {
		t.Errorf("training fields: engine %q device %q shard %d state %q averaging %+v", st.Engine, st.Device, st.Shard, st.State, st.Averaging)
	}
	for _, s := range st.Shards {
		if len(s.Peers) != nodes/shards {
			t.Errorf("shard %d held by %v", s.Index, s.Peers)
		}
	}

	human, _, code := swarmCmd(t, bin, "status", "--home", home)
	for _, want := range []string{"SHARD", "last averaging", "native engine", "DEVICE"} {
		if code != 0 || !strings.Contains(human, want) {
			t.Errorf("human status lacks %q:\n%s", want, human)
		}
	}

	cl, err := client.FromHome(home) // with the home's API token
	if err != nil {
		t.Fatal(err)
	}
	page, err := cl.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	value := func(series string) float64 {
		for _, line := range strings.Split(string(page), "\n") {
			if rest, ok := strings.CutPrefix(line, series+" "); ok {
				v, _ := strconv.ParseFloat(rest, 64)
				return v
			}
		}
		t.Errorf("/metrics lacks %s", series)
		return -1
	}
	if v := value("swarm_training_epoch"); v != float64(st.Epoch) {
		t.Errorf("swarm_training_epoch %v, status says %d", v, st.Epoch)
	}
	if v := value(`swarm_training_averaging_rounds_total{outcome="grouped"}`); v < 1 {
		t.Errorf("no grouped averaging round counted (%v)", v)
	}
	if v := value("swarm_training_samples_total"); v < 1 {
		t.Errorf("swarm_training_samples_total %v", v)
	}
	hops := value("swarm_training_pipeline_hops_total")
	if st.Shard == 0 && hops < 1 {
		t.Errorf("a first-shard node sent %v micro-batches", hops)
	}
	value(`swarm_training_statesync_bytes_total{direction="served"}`)
}
