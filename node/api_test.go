package node

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/swarm-train/swarm/internal/testutil"
	"github.com/swarm-train/swarm/node/api"
	"github.com/swarm-train/swarm/node/client"
)

// homeNode is a node with a home and a control API on 127.0.0.1.
func homeConfig(t *testing.T, home string) Config {
	cfg := testConfig("api-run")
	cfg.Home = home
	cfg.API = "127.0.0.1:0"
	return cfg
}

func TestHomeLockAndRestartKeepsIdentity(t *testing.T) {
	home := t.TempDir()
	n1, err := New(homeConfig(t, home), nil)
	if err != nil {
		t.Fatal(err)
	}
	id := n1.Host().ID()
	if _, err := New(homeConfig(t, home), nil); !errors.Is(err, ErrHomeLocked) {
		t.Fatalf("second node on the same home: %v, want ErrHomeLocked", err)
	}
	if err := n1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n1.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	n2, err := New(homeConfig(t, home), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Close()
	if n2.Host().ID() != id {
		t.Fatalf("identity changed across restart: %s then %s", id, n2.Host().ID())
	}
}

type testService struct {
	started, closed bool
}

func (s *testService) Start(ctx context.Context, n *Node) error {
	s.started = true
	n.AddStatus("test", func() any { return map[string]int{"answer": 42} })
	return nil
}

func (s *testService) Close() error { s.closed = true; return nil }

func TestControlAPI(t *testing.T) {
	home := t.TempDir()
	cfg := homeConfig(t, home)
	svc := &testService{}
	cfg.Services = []Service{svc}
	n := startNode(t, cfg)

	apiPath := filepath.Join(home, APIFile)
	b, err := os.ReadFile(apiPath)
	if err != nil {
		t.Fatalf("API file not written: %v", err)
	}
	if strings.TrimSpace(string(b)) != n.APIURL() {
		t.Fatalf("API file %q, node says %q", b, n.APIURL())
	}
	cl, err := client.FromHome(home)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Status, through the typed client and as raw JSON (the documented schema).
	st, err := cl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.PeerID != n.Host().ID().String() || st.RunID != RunIDFromName("api-run").String() || st.Role != "node" {
		t.Fatalf("status %+v", st)
	}
	var svcStatus struct{ Answer int }
	if json.Unmarshal(st.Services["test"], &svcStatus) != nil || svcStatus.Answer != 42 {
		t.Fatalf("service status %s", st.Services["test"])
	}
	req, _ := http.NewRequest("GET", n.APIURL()+api.PathStatus, nil)
	req.Header.Set("Authorization", "Bearer "+n.APIToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, k := range []string{"schema", "version", "role", "peer_id", "addrs", "listen_addrs", "reachability",
		"reachability_help", "run_id", "run_name", "dht_mode", "routing_table_size", "peers", "run_peers", "uptime_seconds"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("status JSON lacks %q", k)
		}
	}
	if _, ok := raw["peers"].([]any); !ok {
		t.Errorf("peers is %T, want an array", raw["peers"])
	}
	if _, err := cid.Decode(raw["run_id"].(string)); err != nil {
		t.Errorf("run_id: %v", err)
	}

	id, err := cl.ID(ctx)
	if err != nil || id.PeerID != st.PeerID || len(id.Addrs) == 0 {
		t.Fatalf("id %+v %v", id, err)
	}
	if err := cl.RefreshRun(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := cl.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"swarm_node_routing_table_size", "swarm_node_run_queries_total", "libp2p_"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// Malformed requests (with the token, and JSON declared on POSTs): 4xx
	// with a JSON error.
	for _, tc := range []struct {
		method, path, body string
		code               int
	}{
		{"GET", "/v1/nope", "", 404},
		{"POST", api.PathStatus, "", 405},
		{"GET", api.PathConnect, "", 405},
		{"POST", api.PathConnect, "", 400},
		{"POST", api.PathConnect, "{", 400},
		{"POST", api.PathConnect, `{"addr": "/ip4/1.2.3.4/tcp/x"}`, 400},
		{"POST", api.PathConnect, `{"addr": "/ip4/127.0.0.1/tcp/1"}`, 400},
		{"POST", api.PathConnect, `{"adr": "x"}`, 400},
		{"POST", api.PathConnect, `{"addr": ""} trailing`, 400},
		{"POST", api.PathConnect, `{"addr": "` + strings.Repeat("a", 100<<10) + `"}`, 400},
		{"GET", api.PathPeers + "?run=maybe", "", 400},
	} {
		req, _ := http.NewRequest(tc.method, n.APIURL()+tc.path, strings.NewReader(tc.body))
		req.Header.Set("Authorization", "Bearer "+n.APIToken())
		if tc.method == "POST" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e api.Error
		if resp.StatusCode != tc.code || json.Unmarshal(body, &e) != nil || e.Error == "" {
			t.Errorf("%s %s %.40q: %d %s, want %d with a JSON error", tc.method, tc.path, tc.body, resp.StatusCode, body, tc.code)
		}
	}
	var apiErr *client.APIError
	if _, err := cl.Connect(ctx, "/ip4/127.0.0.1/tcp/1"); !errors.As(err, &apiErr) || apiErr.Status != 400 {
		t.Errorf("client connect with bad address: %v", err)
	}

	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(apiPath); !os.IsNotExist(err) {
		t.Fatalf("API file still there after Close: %v", err)
	}
	if !svc.started || !svc.closed {
		t.Fatalf("service started=%v closed=%v", svc.started, svc.closed)
	}
	if _, err := client.FromHome(home); !errors.Is(err, client.ErrNoDaemon) {
		t.Fatalf("client after shutdown: %v", err)
	}
}

func TestUnixSocketAPI(t *testing.T) {
	home := t.TempDir()
	cfg := homeConfig(t, home)
	cfg.API = "unix:" + filepath.Join(home, "api.sock")
	n := startNode(t, cfg)
	cl, err := client.FromHome(home)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	id, err := cl.ID(ctx)
	if err != nil || id.PeerID != n.Host().ID().String() {
		t.Fatalf("id over unix socket: %+v %v", id, err)
	}
}

// The generic announce/find helpers work under any CID, apart from the run.
func TestAnnounceFindPeers(t *testing.T) {
	_, bootAddr := startBootstrap(t)
	a := startNode(t, testConfig("r", bootAddr))
	b := startNode(t, testConfig("r", bootAddr))
	c := startNode(t, testConfig("r", bootAddr))
	key := RunIDFromName("shard-7")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	testutil.Eventually(t, 5*time.Second, func() string { return "routing tables empty" }, func() bool {
		return a.DHT().RoutingTable().Size() > 0 && c.DHT().RoutingTable().Size() > 0
	})
	if err := a.Announce(ctx, key); err != nil {
		t.Fatal(err)
	}
	b.AnnounceEvery(ctx, key, time.Minute)
	testutil.Eventually(t, 10*time.Second, func() string { return "c did not find a and b under the key" }, func() bool {
		ps, err := c.FindPeers(ctx, key)
		return err == nil && len(ps) == 2
	})
	if ps, err := c.FindPeers(ctx, RunIDFromName("shard-8")); err != nil || len(ps) != 0 {
		t.Fatalf("unannounced key: %v %v", ps, err)
	}
}

// The resource manager admits a run of a few hundred peers (the memory-scaled
// libp2p defaults stop inbound connections at about 90).
func TestResourceLimitsFitLargeRuns(t *testing.T) {
	cfg := DefaultConfig()
	l := resourceLimits(&cfg).ToPartialLimitConfig().System
	if int(l.ConnsInbound) < 300 || int(l.Conns) <= cfg.ConnsHigh || int(l.StreamsInbound) < 16*300 {
		t.Fatalf("system limits %+v too small for a run of 300 peers", l)
	}
}
