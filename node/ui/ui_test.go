package ui_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/node"
	"github.com/swarm-train/swarm/node/api"
	"github.com/swarm-train/swarm/node/ui"
	"github.com/swarm-train/swarm/spec/run"
)

// fakeSource counts its status answers; each has a loss of 1/n.
type fakeSource struct{ n atomic.Int64 }

func (f *fakeSource) Status() api.Status {
	n := f.n.Add(1)
	gpu, _ := json.Marshal(map[string]any{"devices": []map[string]any{{"index": 0, "temperature_c": 60 + n, "utilization_pct": 90, "memory_used_bytes": 1 << 30}}})
	return api.Status{PeerID: "self", State: "online", Loss: 1 / float64(n), SamplesPerS: 100,
		Services: map[string]json.RawMessage{"gpu": gpu}}
}

// The ring keeps the last Keep points, oldest first, with the GPU telemetry.
func TestHistoryRingIsBounded(t *testing.T) {
	d := ui.New(&fakeSource{}, ui.Options{Keep: 4})
	t0 := time.Unix(1_700_000_000, 0)
	for i := range 10 {
		d.Sample(t0.Add(time.Duration(i) * time.Second))
	}
	h := d.History()
	if len(h) != 4 {
		t.Fatalf("%d points, want 4", len(h))
	}
	for i, p := range h {
		if want := float64(t0.Unix() + int64(6+i)); p.T != want {
			t.Errorf("point %d at %v, want %v", i, p.T, want)
		}
		if len(p.GPUs) != 1 || p.GPUs[0].TemperatureC != 60+7+i || p.GPUs[0].MemoryUsedMB != 1024 {
			t.Errorf("point %d GPUs %+v", i, p.GPUs)
		}
	}
}

// The page's security headers, a JSON 404 inside /ui/ (never a stack trace
// or an HTML error page), and the event stream: hello with the history,
// then a tick per sample.
func TestDashboardServesPageAndEvents(t *testing.T) {
	d := ui.New(&fakeSource{}, ui.Options{Keep: 8})
	d.Sample(time.Now())
	srv := httptest.NewServer(d)
	defer srv.Close()

	resp, err := http.Get(srv.URL + ui.Path)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "static/app.js") {
		t.Fatalf("page: %d %.100s", resp.StatusCode, body)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") || resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Errorf("security headers: CSP %q, X-Frame-Options %q", csp, resp.Header.Get("X-Frame-Options"))
	}
	for _, path := range []string{"static/nope.js", "static/..%2f..%2fui.go", "elsewhere"} {
		resp, err := http.Get(srv.URL + ui.Path + path)
		if err != nil {
			t.Fatal(err)
		}
		var e api.Error
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != 404 || err != nil || e.Error == "" {
			t.Errorf("%s: %d %v %+v, want a JSON 404", path, resp.StatusCode, err, e)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+ui.Path+"events", nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("events Content-Type %q", ct)
	}
	events := make(chan [2]string, 4)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var name string
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
				name = v
			} else if v, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				events <- [2]string{name, v}
			}
		}
		close(events)
	}()
	next := func() (string, ui.Event) {
		select {
		case e, ok := <-events:
			if !ok {
				t.Fatal("the stream ended")
			}
			var ev ui.Event
			if err := json.Unmarshal([]byte(e[1]), &ev); err != nil {
				t.Fatal(err)
			}
			return e[0], ev
		case <-ctx.Done():
			t.Fatal("no event")
		}
		return "", ui.Event{}
	}
	name, ev := next()
	if name != "hello" || len(ev.History) != 1 || ev.Status.PeerID != "self" {
		t.Fatalf("first event %q with %d points, status %q", name, len(ev.History), ev.Status.PeerID)
	}
	d.Sample(time.Now())
	name, ev = next()
	if name != "tick" || ev.Point == nil || ev.Point.Loss != 0.5 {
		t.Fatalf("second event %q point %+v", name, ev.Point)
	}
}

// The dashboard on a real node is behind the API's checks: no token, a
// wrong one, a foreign Origin or a rebinding Host are refused with the
// reason in JSON; ?token= sets the cookie and leads to the page.
func TestDashboardNeedsTheAPIToken(t *testing.T) {
	cfg := node.DefaultConfig()
	cfg.Home, cfg.API = t.TempDir(), "127.0.0.1:0"
	cfg.Listen, cfg.Bootstrap, cfg.PortMapping, cfg.RunName = []string{"/ip4/127.0.0.1/tcp/0"}, nil, false, "ui-test"
	n, err := node.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- n.Run(context.Background()) }()
	defer func() { n.Close(); <-errc }()
	<-n.Ready()
	base := n.APIURL()
	for _, c := range []struct {
		name   string
		header map[string]string
		query  string
		code   int
		says   string
	}{
		{"no token", nil, "", 401, "missing API token"},
		{"wrong token", map[string]string{"Authorization": "Bearer " + strings.Repeat("0", 64)}, "", 401, "wrong API token"},
		{"foreign origin", map[string]string{"Authorization": "Bearer " + n.APIToken(), "Origin": "http://evil.example"}, "", 403, "Origin"},
		{"rebinding host", map[string]string{"Authorization": "Bearer " + n.APIToken(), "Host": "evil.example"}, "", 403, "Host"},
		{"events without token", nil, "events", 401, "missing API token"},
	} {
		req, _ := http.NewRequest(http.MethodGet, base+ui.Path+c.query, nil)
		for k, v := range c.header {
			if k == "Host" {
				req.Host = v
			} else {
				req.Header.Set(k, v)
			}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e api.Error
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != c.code || err != nil || !strings.Contains(e.Error, c.says) {
			t.Errorf("%s: %d %q (%v), want %d saying %q", c.name, resp.StatusCode, e.Error, err, c.code, c.says)
		}
	}
	// The token in the address once: a cookie, a redirect, then the page.
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar}
	resp, err := hc.Get(base + "/?token=" + n.APIToken())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Request.URL.Path != ui.Path || !strings.Contains(string(body), "<title>swarm node</title>") {
		t.Fatalf("/?token=: %d at %s", resp.StatusCode, resp.Request.URL)
	}
}

// fakeFinder is a bootstrap whose DHT holds provider records for one
// holder of every key, peer 0 connected.
type fakeFinder struct {
	fakeSource
	holder peer.AddrInfo
}

func (f *fakeFinder) FindProviders(ctx context.Context, c cid.Cid) ([]peer.AddrInfo, error) {
	return []peer.AddrInfo{f.holder, f.holder}, nil
}

func (f *fakeFinder) FetchSummary(ctx context.Context, p peer.ID, runID cid.Cid, shards int, maxEpoch uint64) (api.RunSummary, error) {
	return api.RunSummary{}, errors.New("no answer")
}

// The public page is read-only: GET only, JSON errors, the node's own
// dashboard files are not served there, and swarm.json lists the run's
// shards with their (deduplicated) holders.
func TestPublicPageIsReadOnly(t *testing.T) {
	id, err := peer.Decode("12D3KooWLRLCnJBWEt8NtwizpXAYRwTx2xKA9SoQUyE7XH2TqbRF")
	if err != nil {
		t.Fatal(err)
	}
	m := run.NewMLPMNIST(2)
	p := ui.NewPublic(&fakeFinder{holder: peer.AddrInfo{ID: id}}, []*run.Manifest{m}, time.Hour)
	p.Refresh(context.Background())
	v := p.View()
	if len(v.Runs) != 1 || len(v.Runs[0].Shards) != 2 || len(v.Runs[0].Shards[1].Holders) != 1 || len(v.Runs[0].Peers) != 1 {
		t.Fatalf("view %+v", v)
	}
	srv := httptest.NewServer(p)
	defer srv.Close()
	for _, c := range []struct {
		method, path string
		code         int
	}{
		{"GET", "/", 200}, {"GET", "/swarm.json", 200}, {"GET", "/static/public.js", 200},
		{"GET", "/static/app.js", 404}, {"GET", "/ui/", 404}, {"POST", "/swarm.json", 405}, {"POST", "/v1/pause", 405},
	} {
		req, _ := http.NewRequest(c.method, srv.URL+c.path, strings.NewReader("{}"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, resp.StatusCode, c.code)
		}
		if c.code >= 400 && !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			t.Errorf("%s %s: error answer is %s: %.80s", c.method, c.path, resp.Header.Get("Content-Type"), body)
		}
	}
}
