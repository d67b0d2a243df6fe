// Package client is the typed Go client of a swarm daemon's local control
// API. The CLI uses it; so can scripts and tests.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/swarm-train/swarm/node/api"
)

// ErrNoDaemon says that no daemon runs in a home: its API file is missing.
var ErrNoDaemon = errors.New("no swarm daemon running")

// APIError is a 4xx/5xx answer of the daemon.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return fmt.Sprintf("daemon answered %d: %s", e.Status, e.Message) }

// Client talks to one daemon.
type Client struct {
	base  string // http://host:port, or http://unix for sockets
	hc    *http.Client
	token string
}

// Option configures a Client.
type Option func(*Client)

// WithToken sets the API token sent as "Authorization: Bearer". FromHome
// reads the home's token itself; an empty token leaves that one in place.
func WithToken(token string) Option {
	return func(c *Client) {
		if t := strings.TrimSpace(token); t != "" {
			c.token = t
		}
	}
}

// New returns a client for addr: http://127.0.0.1:PORT, 127.0.0.1:PORT or
// unix:/path/to/socket (the forms a daemon writes to its API file). The
// daemon answers 401 unless WithToken gives its token.
func New(addr string, opts ...Option) (*Client, error) {
	addr = strings.TrimSpace(addr)
	tr := &http.Transport{MaxIdleConns: 2, IdleConnTimeout: 30 * time.Second}
	c := &Client{hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
	for _, o := range opts {
		o(c)
	}
	switch {
	case strings.HasPrefix(addr, "unix:"):
		path := strings.TrimPrefix(addr, "unix:")
		if path == "" {
			return nil, fmt.Errorf("API address %q: empty socket path", addr)
		}
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
		c.base = "http://unix"
	case strings.HasPrefix(addr, "http://"):
		c.base = strings.TrimRight(addr, "/")
	default:
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("API address %q: want http://HOST:PORT, HOST:PORT or unix:/path", addr)
		}
		c.base = "http://" + addr
	}
	return c, nil
}

// FromHome returns a client for the daemon using home, found through the
// API address file the daemon writes once its API is serving, with the
// token in the home's token file (opts may override it).
func FromHome(home string, opts ...Option) (*Client, error) {
	path := filepath.Join(home, api.AddressFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s (no %s; start one with 'swarm node --home %s')", ErrNoDaemon, home, path, home)
	}
	if err != nil {
		return nil, fmt.Errorf("read API address: %w", err)
	}
	c, err := New(string(data), opts...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if c.token == "" {
		tokPath := filepath.Join(home, api.TokenFile)
		tok, err := os.ReadFile(tokPath)
		if err != nil {
			return nil, fmt.Errorf("read API token: %w", err)
		}
		c.token = strings.TrimSpace(string(tok))
	}
	return c, nil
}

// Status is GET /v1/status.
func (c *Client) Status(ctx context.Context) (*api.Status, error) {
	var st api.Status
	return &st, c.do(ctx, http.MethodGet, api.PathStatus, nil, &st)
}

// ID is GET /v1/id.
func (c *Client) ID(ctx context.Context) (*api.ID, error) {
	var id api.ID
	return &id, c.do(ctx, http.MethodGet, api.PathID, nil, &id)
}

// Peers lists connected peers, or only the run's peers when run is true.
func (c *Client) Peers(ctx context.Context, run bool) ([]api.Peer, error) {
	var ps []api.Peer
	path := api.PathPeers
	if run {
		path += "?run=true"
	}
	return ps, c.do(ctx, http.MethodGet, path, nil, &ps)
}

// Connect asks the daemon to dial addr (/ip4/.../tcp/.../p2p/ID).
func (c *Client) Connect(ctx context.Context, addr string) (*api.Peer, error) {
	var p api.Peer
	return &p, c.do(ctx, http.MethodPost, api.PathConnect, api.ConnectRequest{Addr: addr}, &p)
}

// RefreshRun asks for a DHT query for run peers now.
func (c *Client) RefreshRun(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, api.PathRefresh, struct{}{}, nil)
}

// Metrics returns the Prometheus text exposition.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+api.PathMetrics, nil)
	if err != nil {
		return "", err
	}
	c.authorize(req)
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", &APIError{Status: resp.StatusCode, Message: strings.TrimSpace(string(b))}
	}
	return string(b), nil
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	c.authorize(req)
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 400 {
		var e api.Error
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return &APIError{Status: resp.StatusCode, Message: e.Error}
		}
		return &APIError{Status: resp.StatusCode, Message: strings.TrimSpace(string(b))}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: bad answer: %w", method, path, err)
	}
	return nil
}

func (c *Client) authorize(req *http.Request) {
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
}
