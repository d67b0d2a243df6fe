package training

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
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

// postPause sends body to path with the node's token and returns the code
// and the error message.
func postPause(t *testing.T, n *node.Node, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, n.APIURL()+path, bytes.NewBufferString(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+n.APIToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e api.Error
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Error
}

// A node started outside its active hours holds training at once and
// says why; swarm pause adds the manual rule and resume clears only it;
// unknown rules and rules that follow the settings are refused by name.
func TestPauseRulesOnATrainingNode(t *testing.T) {
	m := run.NewMLPMNIST(1)
	m.Model.Hidden = []int{16, 16}
	m.Training = run.TrainingSpec{BatchSize: 16, TargetBatch: 32, Steps: 1000}
	m.Optimizer.WarmupSteps, m.Optimizer.DecaySteps = 2, 1000
	id, err := m.ID()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	// A one-minute window two hours from now: outside it for the whole test.
	from := now.Add(2 * time.Hour)
	hours, err := gpu.ParseActiveHours(from.Format("15:04") + "-" + from.Add(time.Minute).Format("15:04"))
	if err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	cfg := nodetest.Config(home, "api-run")
	cfg.RunID, cfg.RunName = id, m.Name
	cfg.Services = []node.Service{&Service{
		Config: trainer.Config{Manifest: m, Engine: native.New(native.WithThreads(1)), Device: "Test CPU", Shard: 0},
		Engine: "native", ActiveHours: hours,
	}}
	n := nodetest.Start(t, cfg)
	cl, err := client.FromHome(home)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var st *api.Status
	var p api.Pause
	// The trainer loads MNIST before it joins its shard and shows the
	// pause: 1.7 s, but 12 s under the race detector on a loaded machine
	// (the 20 s this waited were once not enough).
	testutil.Eventually(t, time.Minute, func() string { return fmt.Sprintf("state %q pause %+v", st.State, p) }, func() bool {
		if st, err = cl.Status(ctx); err != nil {
			return false
		}
		p = api.Pause{}
		_ = json.Unmarshal(st.Services["pause"], &p)
		return st.State == "paused" && p.State == "paused"
	})
	if len(p.Holds) != 1 || p.Holds[0].Rule != gpu.RuleActiveHours || !strings.Contains(p.Holds[0].Reason, "outside the active hours "+hours.String()) || p.ActiveHours != hours.String() {
		t.Errorf("pause %+v, want the active-hours rule naming %s", p, hours)
	}
	if st.Epoch != 0 {
		t.Errorf("epoch %d: a node outside its hours trained", st.Epoch)
	}

	got, err := cl.Pause(ctx)
	if err != nil || got.State != "paused" || len(got.Holds) != 2 || got.Holds[0].Rule != gpu.RuleActiveHours || got.Holds[1].Rule != gpu.RuleManual {
		t.Fatalf("pause: %+v %v", got, err)
	}
	got, err = cl.Resume(ctx)
	if err != nil || len(got.Holds) != 1 || got.Holds[0].Rule != gpu.RuleActiveHours {
		t.Fatalf("resume: %+v %v, want the active-hours hold left", got, err)
	}
	for _, c := range []struct {
		path, body string
		code       int
		says       string
	}{
		{api.PathPause, `{"rule":"coffee-break"}`, 400, `unknown pause rule "coffee-break": want manual`},
		{api.PathResume, `{"rule":"active-hours"}`, 409, "active-hours is set by --active-hours"},
		{api.PathResume, `{"rule":"gpu"}`, 409, "gpu is set by the GPU limits"},
		{api.PathPause, `{"reason":"x"}`, 400, `unknown field "reason"`},
		{api.PathPause, ``, 400, "empty request body"},
	} {
		if code, msg := postPause(t, n, c.path, c.body); code != c.code || !strings.Contains(msg, c.says) {
			t.Errorf("POST %s %s: %d %q, want %d saying %q", c.path, c.body, code, msg, c.code, c.says)
		}
	}
}

// Pause on a node that does not train says so.
func TestPauseWithoutTraining(t *testing.T) {
	n := nodetest.Start(t, nodetest.Config(t.TempDir(), "api-run"))
	if code, msg := postPause(t, n, api.PathPause, `{}`); code != http.StatusConflict || !strings.Contains(msg, "does not train") {
		t.Errorf("pause without training: %d %q", code, msg)
	}
}
