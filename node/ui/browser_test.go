package ui_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/swarm-train/swarm/engine/native"
	"github.com/swarm-train/swarm/internal/testutil"
	"github.com/swarm-train/swarm/node"
	"github.com/swarm-train/swarm/node/api"
	"github.com/swarm-train/swarm/node/client"
	"github.com/swarm-train/swarm/node/nodetest"
	"github.com/swarm-train/swarm/node/training"
	"github.com/swarm-train/swarm/node/ui"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/trainer"
)

// chromium finds Debian's chromium (CI installs it with apt).
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no chromium on this machine (apt-get install chromium): the dashboard's browser test is skipped")
	return ""
}

// trainingNode starts an in-process node with its own home that trains a
// tiny MNIST MLP of shards shards, holding shard; boot are bootstrap
// addresses.
func trainingNode(t *testing.T, m *run.Manifest, shard int, boot ...string) (*node.Node, string) {
	t.Helper()
	id, err := m.ID()
	if err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	cfg := nodetest.Config(home, m.Name, boot...)
	cfg.RunID = id
	cfg.Services = []node.Service{&training.Service{
		Config: trainer.Config{Manifest: m, Engine: native.New(native.WithThreads(1)), Device: "Test CPU", Shard: shard},
		Engine: "native",
	}}
	n := nodetest.Start(t, cfg)
	return n, home
}

func pauseOf(st *api.Status) api.Pause {
	var p api.Pause
	_ = json.Unmarshal(st.Services["pause"], &p)
	return p
}

// bootstrapNode starts an ephemeral bootstrap node (no home, no API).
func bootstrapNode(t *testing.T) *node.Node {
	t.Helper()
	cfg := node.DefaultConfig()
	cfg.Role, cfg.API, cfg.DHTMode = node.RoleBootstrap, "", node.DHTServer
	cfg.Listen, cfg.Bootstrap, cfg.PortMapping = []string{"/ip4/127.0.0.1/tcp/0"}, nil, false
	n, err := node.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- n.Run(context.Background()) }()
	t.Cleanup(func() {
		n.Close()
		<-errc
	})
	<-n.Ready()
	return n
}

// TestDashboardInBrowser drives headless chromium against a live local
// swarm of two training nodes: the page loads without console errors, its
// plots fill with points from the run, and (with SWARM_UPDATE_SCREENSHOT=1)
// it writes docs/dashboard.png for the README.
func TestDashboardInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the browser test starts chromium and three nodes")
	}
	exe := chromium(t)
	m := run.NewMLPMNIST(2)
	m.Model.Hidden = []int{32, 32}
	m.Training = run.TrainingSpec{BatchSize: 32, TargetBatch: 256, Steps: 100000} // never ends during the test
	m.Optimizer.WarmupSteps, m.Optimizer.DecaySteps = 2, 100000
	boot := bootstrapNode(t)
	a, home := trainingNode(t, m, 0, boot.Addrs()[0].String())
	_, homeB := trainingNode(t, m, 1, boot.Addrs()[0].String())
	cl, err := client.FromHome(home)
	if err != nil {
		t.Fatal(err)
	}
	clB, err := client.FromHome(homeB)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Second)
	defer cancel()
	begin := time.Now()
	var st *api.Status
	testutil.Eventually(t, 40*time.Second, func() string { return fmt.Sprintf("status %+v", st) }, func() bool {
		st, err = cl.Status(ctx)
		return err == nil && st.State == "online" && st.Epoch >= 1 && st.Loss > 0
	})

	t.Logf("%.1fs: node online", time.Since(begin).Seconds())
	bctx, bcancel := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1280, 1100))...)
	defer bcancel()
	bctx, bcancel2 := chromedp.NewContext(bctx)
	defer bcancel2()
	// The console: every error or exception the page logs fails the test.
	var mu sync.Mutex
	var consoleErrors []string
	messages := chromedp.Console(bctx)
	go func() {
		for msg, err := range messages {
			if err != nil {
				return
			}
			if msg.Type == "error" || msg.Type == chromedp.ConsoleException {
				mu.Lock()
				consoleErrors = append(consoleErrors, fmt.Sprintf("%s: %s", msg.Type, msg.Text))
				mu.Unlock()
			}
		}
	}()

	url := a.APIURL() + "/ui/?token=" + a.APIToken()
	if err := chromedp.Do(bctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
	loc, err := chromedp.Run(bctx, chromedp.Location())
	if err != nil || strings.Contains(loc, "token=") || !strings.HasSuffix(loc, "/ui/") {
		t.Errorf("after the token redirect the page is at %q (%v), want /ui/ without the token", loc, err)
	}
	// Plots hold points from the running swarm: a few ticks of loss and rate.
	// (A first-shard node learns the loss from the last shard's progress
	// records, so on a loaded machine some of its points have none.)
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](`Number(document.body.dataset.lossPoints || 0) >= 1 && Number(document.body.dataset.ratePoints || 0) >= 3`,
		chromedp.WithPollingInterval(200*time.Millisecond), chromedp.WithPollingTimeout(45*time.Second))); err != nil {
		diag, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`JSON.stringify({points: document.body.dataset.points, loss: document.body.dataset.lossPoints, rate: document.body.dataset.ratePoints, state: document.getElementById("state").textContent, error: document.getElementById("error").textContent})`))
		st, _ = cl.Status(ctx)
		stB, _ := clB.Status(ctx)
		t.Fatalf("the loss plot did not fill: %v; page %s; node A: state %s epoch %d loss %v sps %v shards %+v; node B: state %s epoch %d loss %v shards %+v",
			err, diag, st.State, st.Epoch, st.Loss, st.SamplesPerS, st.Shards, stB.State, stB.Epoch, stB.Loss, stB.Shards)
	}
	t.Logf("%.1fs: plots filled", time.Since(begin).Seconds())
	text, err := chromedp.Run(bctx, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Test CPU (native)", "Shards", m.Name, "online"} {
		if !strings.Contains(strings.ToLower(text), strings.ToLower(want)) {
			t.Errorf("the page does not show %q", want)
		}
	}
	canvases, err := chromedp.Run(bctx, chromedp.Evaluate[int](`document.querySelectorAll(".uplot canvas").length`))
	if err != nil || canvases < 2 {
		t.Errorf("%d plot canvases (%v), want the loss and samples/s plots", canvases, err)
	}
	rows, err := chromedp.Run(bctx, chromedp.Evaluate[int](`document.querySelectorAll("#shards tr").length`))
	if err != nil || rows != 2 {
		t.Errorf("%d shard rows (%v), want 2", rows, err)
	}

	if os.Getenv("SWARM_UPDATE_SCREENSHOT") != "" {
		// A longer history for the README's picture.
		if _, err := chromedp.Run(bctx, chromedp.Poll[bool](`Number(document.body.dataset.lossPoints || 0) >= 20`,
			chromedp.WithPollingInterval(200*time.Millisecond), chromedp.WithPollingTimeout(40*time.Second))); err != nil {
			t.Fatal(err)
		}
		png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join("..", "..", "docs", "dashboard.png")
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", path)
	}

	// Pause from the page: the node holds training by the manual rule,
	// says so in status and on the page, and stays in the swarm, where its
	// peer sees it as paused; Resume brings it back online.
	if err := chromedp.Do(bctx, chromedp.Click("#pause")); err != nil {
		t.Fatal(err)
	}
	self := a.Host().ID().String()
	peerState := func(st *api.Status) string {
		for _, p := range st.Peers {
			if p.PeerID == self {
				return p.State
			}
		}
		return "absent"
	}
	var stB *api.Status
	testutil.Eventually(t, 20*time.Second, func() string {
		return fmt.Sprintf("node state %q, pause %s; its peer sees it %q", st.State, st.Services["pause"], peerState(stB))
	}, func() bool {
		st, err = cl.Status(ctx)
		if err != nil {
			return false
		}
		stB, err = clB.Status(ctx)
		return err == nil && st.State == "paused" && pauseOf(st).State == "paused" && len(pauseOf(st).Holds) == 1 && pauseOf(st).Holds[0].Rule == "manual" &&
			peerState(stB) == "paused"
	})
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](`document.getElementById("state").textContent === "paused" && document.getElementById("why").textContent.includes("manual")`,
		chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(10*time.Second))); err != nil {
		t.Errorf("the page does not say paused by the manual rule: %v", err)
	}
	if err := chromedp.Do(bctx, chromedp.Click("#resume")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, func() string { return fmt.Sprintf("node state %q, pause %s", st.State, st.Services["pause"]) }, func() bool {
		st, err = cl.Status(ctx)
		return err == nil && st.State == "online" && pauseOf(st).State == "running"
	})
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](`document.getElementById("state").textContent === "online"`,
		chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(10*time.Second))); err != nil {
		t.Errorf("the page does not say online after Resume: %v", err)
	}

	t.Logf("%.1fs: paused and resumed", time.Since(begin).Seconds())
	// The bootstrap's public page: no token, the run's shards and their
	// holders from the DHT provider records it holds.
	public := ui.NewPublic(boot, []*run.Manifest{m}, 200*time.Millisecond)
	pctx, pcancel := context.WithCancel(ctx)
	defer pcancel()
	go public.Run(pctx)
	testutil.Eventually(t, 30*time.Second, func() string { return fmt.Sprintf("public view %+v", public.View()) }, func() bool {
		v := public.View()
		return len(v.Runs) == 1 && len(v.Runs[0].Peers) == 2 && len(v.Runs[0].Shards) == 2 &&
			len(v.Runs[0].Shards[0].Holders) == 1 && len(v.Runs[0].Shards[1].Holders) == 1 &&
			v.Runs[0].Reported == 2 && v.Runs[0].Epoch > 0 && len(v.Runs[0].Volunteers) == 2 && v.Runs[0].Volunteers[0].Processed > 0
	})
	t.Logf("%.1fs: public view complete", time.Since(begin).Seconds())
	srv := httptest.NewServer(public)
	defer srv.Close()
	if err := chromedp.Do(bctx, chromedp.Navigate(srv.URL+"/")); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](`document.body.dataset.runs === "1" && document.body.dataset.volunteers === "2"`,
		chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(10*time.Second))); err != nil {
		t.Fatalf("the public page shows no run: %v", err)
	}
	text, err = chromedp.Run(bctx, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		t.Fatal(err)
	}
	short := self[:8]
	if lower := strings.ToLower(text); !strings.Contains(lower, "run "+m.Name) || !strings.Contains(text, short) || !strings.Contains(lower, "2 peers") {
		t.Errorf("the public page does not show the run, its 2 peers and holder %s:\n%s", short, text)
	}
	if !strings.Contains(text, "Volunteers, most work first") || !strings.Contains(text, "epoch") {
		t.Errorf("the public page does not show the run's epoch and the leaderboard:\n%s", text)
	}

	mu.Lock()
	defer mu.Unlock()
	if len(consoleErrors) > 0 {
		t.Errorf("console errors:\n%s", strings.Join(consoleErrors, "\n"))
	}
}
