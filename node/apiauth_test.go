package node

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/swarm-train/swarm/node/api"
	"github.com/swarm-train/swarm/node/client"
)

// apiReq is one raw request to the control API, as a browser or a script
// would send it.
type apiReq struct {
	method, path, body string
	host               string // Host header; empty: the listener's address
	header             map[string]string
}

// noRedirect is an HTTP client that shows redirects instead of following them.
var noRedirect = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// send runs r against base (http://127.0.0.1:PORT) with hc and returns the
// answer and its body.
func (r apiReq) send(t *testing.T, hc *http.Client, base string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(r.method, base+r.path, strings.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	if r.host != "" {
		req.Host = r.host
	}
	for k, v := range r.header {
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", r.method, r.path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// apiNode starts an ephemeral node with a control API on 127.0.0.1.
func apiNode(t *testing.T, edit func(*Config)) *Node {
	cfg := testConfig("auth-run")
	cfg.API = "127.0.0.1:0"
	if edit != nil {
		edit(&cfg)
	}
	return startNode(t, cfg)
}

// The attacks of the security issue, sent as a browser would send them, are
// refused with the right code and a JSON error naming what was wrong, and
// the daemon dials nobody; the CLI's own request still works.
func TestAPIRefusesBrowserRequests(t *testing.T) {
	n := apiNode(t, nil)
	other := startNode(t, testConfig("auth-run"))
	target := other.Addrs()[0].String() + "/p2p/" + other.Host().ID().String()
	connect := `{"addr": "` + target + `"}`
	hostport := strings.TrimPrefix(n.APIURL(), "http://")
	_, port, _ := net.SplitHostPort(hostport)
	tok := n.APIToken()
	bearer := "Bearer " + tok
	const evil = "http://evil.example"

	for _, tc := range []struct {
		name string
		req  apiReq
		code int
		says string // in the error message
	}{
		{"form post from a foreign page", apiReq{method: "POST", path: api.PathConnect, body: connect,
			header: map[string]string{"Content-Type": "text/plain", "Origin": evil}}, 403, "Origin"},
		{"form post with a rebound Host", apiReq{method: "POST", path: api.PathConnect, body: connect, host: "evil.example:" + port,
			header: map[string]string{"Content-Type": "text/plain", "Origin": evil}}, 403, "Host"},
		{"foreign Origin even with the token and JSON", apiReq{method: "POST", path: api.PathConnect, body: connect,
			header: map[string]string{"Content-Type": "application/json", "Origin": evil, "Authorization": bearer}}, 403, "Origin"},
		{"another local site", apiReq{method: "POST", path: api.PathConnect, body: connect,
			header: map[string]string{"Content-Type": "application/json", "Origin": "http://localhost:3000", "Authorization": bearer}}, 403, "Origin"},
		{"sandboxed page", apiReq{method: "POST", path: api.PathConnect, body: connect,
			header: map[string]string{"Content-Type": "application/json", "Origin": "null", "Authorization": bearer}}, 403, "Origin"},
		{"cross-site fetch metadata", apiReq{method: "POST", path: api.PathConnect, body: connect,
			header: map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site", "Authorization": bearer}}, 403, "Sec-Fetch-Site"},
		{"text/plain with the token", apiReq{method: "POST", path: api.PathConnect, body: connect,
			header: map[string]string{"Content-Type": "text/plain", "Authorization": bearer}}, 415, "Content-Type"},
		{"no Content-Type", apiReq{method: "POST", path: api.PathConnect, body: connect,
			header: map[string]string{"Authorization": bearer}}, 415, "application/json"},
		{"no token", apiReq{method: "POST", path: api.PathConnect, body: connect,
			header: map[string]string{"Content-Type": "application/json"}}, 401, "missing API token"},
		{"wrong token", apiReq{method: "POST", path: api.PathConnect, body: connect,
			header: map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + strings.Repeat("0", 64)}}, 401, "wrong API token"},
		{"basic auth", apiReq{method: "GET", path: api.PathStatus,
			header: map[string]string{"Authorization": "Basic " + tok}}, 401, "Bearer"},
		{"token in a POST query", apiReq{method: "POST", path: api.PathConnect + "?token=" + tok, body: connect,
			header: map[string]string{"Content-Type": "application/json"}}, 401, "missing API token"},
		{"status through DNS rebinding", apiReq{method: "GET", path: api.PathStatus, host: "evil.example:" + port,
			header: map[string]string{"Authorization": bearer}}, 403, "Host"},
		{"rebinding name that starts like loopback", apiReq{method: "GET", path: api.PathStatus, host: "127.0.0.1.evil.example",
			header: map[string]string{"Authorization": bearer}}, 403, "Host"},
		{"status without token", apiReq{method: "GET", path: api.PathStatus}, 401, "missing API token"},
		{"metrics without token", apiReq{method: "GET", path: api.PathMetrics}, 401, "missing API token"},
		{"unknown path without token", apiReq{method: "GET", path: "/v1/nope"}, 401, "missing API token"},
		{"preflight", apiReq{method: "OPTIONS", path: api.PathConnect,
			header: map[string]string{"Origin": evil, "Access-Control-Request-Method": "POST"}}, 403, "Origin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := tc.req.send(t, noRedirect, n.APIURL())
			var e api.Error
			if resp.StatusCode != tc.code || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, tc.says) {
				t.Fatalf("%d %s, want %d with a JSON error naming %q", resp.StatusCode, body, tc.code, tc.says)
			}
			if strings.Contains(body, tok) || strings.Contains(body, n.Host().ID().String()) {
				t.Fatalf("refusal leaks the token or the status: %s", body)
			}
			if resp.Header.Get("Access-Control-Allow-Origin") != "" {
				t.Fatalf("CORS header on a refusal: %v", resp.Header)
			}
		})
	}
	if c := n.Host().Network().Connectedness(other.Host().ID()); c == network.Connected {
		t.Fatal("a refused request dialed the peer")
	}

	// What the CLI sends, and the same from the API's own origin (a future
	// dashboard), from localhost and from [::1] as Host.
	for _, tc := range []apiReq{
		{method: "GET", path: api.PathStatus, host: "localhost:" + port, header: map[string]string{"Authorization": bearer}},
		{method: "GET", path: api.PathID, host: "[::1]:" + port, header: map[string]string{"Authorization": bearer}},
		{method: "GET", path: api.PathID, host: "LOCALHOST", header: map[string]string{"Authorization": "bearer " + tok}},
		{method: "POST", path: api.PathRefresh, body: "{}", header: map[string]string{"Authorization": bearer,
			"Content-Type": "application/json; charset=utf-8", "Origin": n.APIURL(), "Sec-Fetch-Site": "same-origin"}},
	} {
		if resp, body := tc.send(t, noRedirect, n.APIURL()); resp.StatusCode >= 300 {
			t.Errorf("%s %s Host %q: %d %s", tc.method, tc.path, tc.host, resp.StatusCode, body)
		}
	}
	resp, body := apiReq{method: "POST", path: api.PathConnect, body: connect,
		header: map[string]string{"Content-Type": "application/json", "Authorization": bearer}}.send(t, noRedirect, n.APIURL())
	if resp.StatusCode != 200 || n.Host().Network().Connectedness(other.Host().ID()) != network.Connected {
		t.Fatalf("the CLI's connect: %d %s", resp.StatusCode, body)
	}
}

// A browser opening a link with ?token= gets the token as an HttpOnly,
// SameSite=Strict cookie and a redirect that drops it from the address;
// the cookie then authorizes the API.
func TestAPITokenQuerySetsCookie(t *testing.T) {
	n := apiNode(t, nil)
	resp, body := apiReq{method: "GET", path: api.PathStatus + "?token=" + n.APIToken()}.send(t, noRedirect, n.APIURL())
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != api.PathStatus {
		t.Fatalf("%d Location %q %s, want 303 to %s", resp.StatusCode, resp.Header.Get("Location"), body, api.PathStatus)
	}
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == api.TokenCookie {
			cookie = c
		}
	}
	if cookie == nil || cookie.Value != n.APIToken() || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode {
		t.Fatalf("cookie %+v, want the token, HttpOnly, SameSite=Strict", cookie)
	}
	// The cookie alone works; a wrong ?token= is refused and sets nothing.
	resp, body = apiReq{method: "GET", path: api.PathID,
		header: map[string]string{"Cookie": cookie.Name + "=" + cookie.Value}}.send(t, noRedirect, n.APIURL())
	if resp.StatusCode != 200 || !strings.Contains(body, n.Host().ID().String()) {
		t.Fatalf("with the cookie: %d %s", resp.StatusCode, body)
	}
	resp, _ = apiReq{method: "GET", path: api.PathID + "?token=" + url.QueryEscape("x")}.send(t, noRedirect, n.APIURL())
	if resp.StatusCode != 401 || len(resp.Cookies()) != 0 {
		t.Fatalf("wrong query token: %d cookies %v", resp.StatusCode, resp.Cookies())
	}
}

// With MetricsWithoutToken, /metrics needs no token (a Prometheus scraper)
// but still a loopback Host; every other endpoint still needs the token.
func TestMetricsWithoutToken(t *testing.T) {
	n := apiNode(t, func(c *Config) { c.MetricsWithoutToken = true })
	if resp, body := (apiReq{method: "GET", path: api.PathMetrics}).send(t, noRedirect, n.APIURL()); resp.StatusCode != 200 || !strings.Contains(body, "swarm_node_") {
		t.Fatalf("open metrics: %d %.200s", resp.StatusCode, body)
	}
	if resp, _ := (apiReq{method: "GET", path: api.PathMetrics, host: "evil.example"}).send(t, noRedirect, n.APIURL()); resp.StatusCode != 403 {
		t.Fatalf("open metrics with a foreign Host: %d, want 403", resp.StatusCode)
	}
	if resp, _ := (apiReq{method: "GET", path: api.PathStatus}).send(t, noRedirect, n.APIURL()); resp.StatusCode != 401 {
		t.Fatalf("status with open metrics and no token: %d, want 401", resp.StatusCode)
	}
}

// The token file: created once with mode 0600, kept across restarts,
// refused when others may read it or when it is not a token.
func TestAPITokenFile(t *testing.T) {
	home := t.TempDir()
	path := filepath.Join(home, api.TokenFile)
	n1, err := New(homeConfig(t, home), nil)
	if err != nil {
		t.Fatal(err)
	}
	tok := n1.APIToken()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if raw, err := hex.DecodeString(strings.TrimSpace(string(b))); err != nil || len(raw) != 32 || strings.TrimSpace(string(b)) != tok {
		t.Fatalf("token file %q, node token %q: want 32 random bytes in hex", b, tok)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v, want 0600", fi.Mode().Perm())
	}
	n1.Close()
	n2, err := New(homeConfig(t, home), nil)
	if err != nil {
		t.Fatal(err)
	}
	if n2.APIToken() != tok {
		t.Fatal("token changed across restart")
	}
	n2.Close()

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(homeConfig(t, home), nil); !errors.Is(err, ErrTokenPermissions) || !strings.Contains(err.Error(), path) {
		t.Fatalf("token readable by others: %v, want ErrTokenPermissions naming %s", err, path)
	}
	for _, bad := range []string{"", "not-a-token\n", tok[:63] + "\n", tok + tok + "\n", strings.Repeat("g", 64)} {
		if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := New(homeConfig(t, home), nil)
		if !errors.Is(err, ErrCorruptFile) || !strings.Contains(err.Error(), path) || (len(bad) > 8 && strings.Contains(err.Error(), bad[:8])) {
			t.Fatalf("token file %q: %v, want ErrCorruptFile naming %s without the content", bad, err, path)
		}
	}

	// An ephemeral node makes its token in memory.
	n3 := apiNode(t, nil)
	if !validAPIToken(n3.APIToken()) || n3.APIToken() == tok {
		t.Fatalf("ephemeral token %q", n3.APIToken())
	}
}

// Over a unix socket the Go client's Host ("unix") is accepted and the
// token still applies; a client without the token gets 401.
func TestUnixSocketAPIChecks(t *testing.T) {
	home := t.TempDir()
	cfg := homeConfig(t, home)
	cfg.API = "unix:" + filepath.Join(home, "api.sock")
	n := startNode(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	withTok, err := client.FromHome(home)
	if err != nil {
		t.Fatal(err)
	}
	if err := withTok.RefreshRun(ctx); err != nil {
		t.Fatalf("refresh over the socket: %v", err)
	}
	bare, err := client.New(n.APIURL())
	if err != nil {
		t.Fatal(err)
	}
	var apiErr *client.APIError
	if _, err := bare.Status(ctx); !errors.As(err, &apiErr) || apiErr.Status != 401 {
		t.Fatalf("status over the socket without the token: %v, want 401", err)
	}
	wrong, _ := client.New(n.APIURL(), client.WithToken(strings.Repeat("ab", 32)))
	if _, err := wrong.Metrics(ctx); !errors.As(err, &apiErr) || apiErr.Status != 401 {
		t.Fatalf("metrics over the socket with a wrong token: %v, want 401", err)
	}
}
