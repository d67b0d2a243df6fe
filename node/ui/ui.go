// Package ui is the node's web dashboard, served by the control API under
// /ui/ behind the API's token, Host and Origin checks (node/apiauth.go).
//
// A Dashboard samples the node's status answer every second into a
// bounded ring (the history the plots start from) and streams each sample
// to the open pages as server-sent events. The page itself (static/) is
// plain HTML, CSS and JavaScript; the plots use uPlot 1.6, vendored from
// npm with its licence (static/uPlot.LICENSE). Everything is embedded in
// the binary: nothing is fetched at run time, and the page's
// Content-Security-Policy allows only this origin.
package ui

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"sync"
	"time"

	"github.com/swarm-train/swarm/node/api"
)

// Path is where the dashboard lives on the control API; the page is at
// Path itself, its event stream at Path+"events".
const Path = "/ui/"

//go:embed static
var staticFS embed.FS

// Source is what the dashboard shows: the node's status answer.
type Source interface {
	Status() api.Status
}

// Point is one sample of the history: the figures the plots draw.
type Point struct {
	T           float64 `json:"t"`             // unix seconds
	Loss        float64 `json:"loss"`          // the run's recent training loss
	SamplesPerS float64 `json:"samples_per_s"` // the swarm's samples/s
	Throughput  float64 `json:"throughput"`    // this node's samples/s through its shard
	Epoch       uint64  `json:"epoch"`
	Paused      bool    `json:"paused"`
	// GPUs are the lent GPUs' temperature and utilisation (none without GPUs).
	GPUs []GPUPoint `json:"gpus,omitempty"`
}

// GPUPoint is one GPU's telemetry in a Point.
type GPUPoint struct {
	Index        int     `json:"index"`
	TemperatureC int     `json:"temperature_c"`
	UtilPct      int     `json:"utilization_pct"`
	MemoryUsedMB float64 `json:"memory_used_mib"`
}

// Event is the data of one server-sent event: the latest status answer and
// the history point taken from it ("tick"), or the whole ring first
// ("hello").
type Event struct {
	Status  api.Status `json:"status"`
	Point   *Point     `json:"point,omitempty"`
	History []Point    `json:"history,omitempty"`
}

// Options of a Dashboard; zero fields take the defaults.
type Options struct {
	// Every is the sampling interval while a page is open (default 1 s).
	Every time.Duration
	// IdleEvery is the sampling interval while no page is open (default 5 s):
	// a status answer hashes the shard's parameters, which is not free on a
	// large model.
	IdleEvery time.Duration
	// Keep is how many points the ring holds (default 3600: an hour at 1 s).
	Keep int
	// MaxStreams bounds the open event streams (default 16).
	MaxStreams int
	// File keeps the history across restarts (empty: in memory only):
	// read by New, written every few minutes and when Run stops.
	File string
	// OnError is told why the history file could not be read or written
	// (nil: ignored).
	OnError func(error)
}

// Dashboard is the page, its history ring and its event streams.
type Dashboard struct {
	src  Source
	opts Options
	mux  *http.ServeMux

	mu      sync.Mutex
	ring    []Point // oldest first once full: ring[next:] then ring[:next]
	next    int
	full    bool
	last    api.Status
	haveSt  bool
	subs    map[chan Event]struct{}
	streams int
}

// New returns a dashboard over src. Run samples; until it does, the page
// shows the status answer of its first request.
func New(src Source, opts Options) *Dashboard {
	if opts.Every <= 0 {
		opts.Every = time.Second
	}
	if opts.IdleEvery <= 0 {
		opts.IdleEvery = 5 * time.Second
	}
	if opts.Keep <= 0 {
		opts.Keep = 3600
	}
	if opts.MaxStreams <= 0 {
		opts.MaxStreams = 16
	}
	if opts.OnError == nil {
		opts.OnError = func(error) {}
	}
	d := &Dashboard{src: src, opts: opts, ring: make([]Point, opts.Keep), subs: map[chan Event]struct{}{}}
	if opts.File != "" {
		if err := d.load(); err != nil {
			opts.OnError(fmt.Errorf("dashboard history not restored: %w", err))
		}
	}
	d.mux = http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	d.mux.HandleFunc("GET "+Path+"{$}", d.serveFile(static, "index.html"))
	d.mux.HandleFunc("GET "+Path+"static/{file}", func(w http.ResponseWriter, r *http.Request) {
		d.serveFile(static, r.PathValue("file"))(w, r)
	})
	d.mux.HandleFunc("GET "+Path+"events", d.serveEvents)
	d.mux.HandleFunc("GET "+Path+"history", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.History())
	})
	d.mux.HandleFunc(Path, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET")
			writeError(w, http.StatusMethodNotAllowed, fmt.Errorf("%s %s: the dashboard is read with GET", r.Method, r.URL.Path))
			return
		}
		writeError(w, http.StatusNotFound, fmt.Errorf("no such dashboard page: %s", r.URL.Path))
	})
	return d
}

// ServeHTTP serves the page, its files, the event stream (events) and the
// history as JSON (history). Security headers keep the page from being
// framed (its pause button) or loading anything from elsewhere.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	d.mux.ServeHTTP(w, r)
}

func (d *Dashboard) serveFile(static fs.FS, name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		b, err := fs.ReadFile(static, name)
		if err != nil || name == "" || path.Base(name) != name {
			writeError(w, http.StatusNotFound, fmt.Errorf("no such dashboard file: %.80q", name))
			return
		}
		switch path.Ext(name) {
		case ".html":
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
		case ".js":
			w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		case ".css":
			w.Header().Set("Content-Type", "text/css; charset=utf-8")
		default:
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		}
		_, _ = w.Write(b)
	}
}

// Run samples the source every Options.Every while a page is open, and
// every Options.IdleEvery otherwise, until ctx ends.
func (d *Dashboard) Run(ctx context.Context) {
	t := time.NewTicker(d.opts.Every)
	defer t.Stop()
	var last time.Time
	saved := time.Now()
	persist := func() {
		if d.opts.File != "" {
			if err := d.save(); err != nil {
				d.opts.OnError(fmt.Errorf("dashboard history not saved: %w", err))
			}
		}
	}
	for {
		d.mu.Lock()
		watched := len(d.subs) > 0
		d.mu.Unlock()
		if now := time.Now(); watched || now.Sub(last) >= d.opts.IdleEvery {
			d.Sample(now)
			last = now
		}
		if time.Since(saved) >= saveEvery {
			persist()
			saved = time.Now()
		}
		select {
		case <-ctx.Done():
			persist()
			d.mu.Lock()
			for ch := range d.subs {
				close(ch)
				delete(d.subs, ch)
			}
			d.mu.Unlock()
			return
		case <-t.C:
		}
	}
}

// Sample takes one status answer at now into the ring and sends it to the
// open streams (a stream that has not taken the previous event skips this
// one: a slow page never holds the node up).
func (d *Dashboard) Sample(now time.Time) {
	st := d.src.Status()
	p := PointOf(now, st)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ring[d.next] = p
	d.next = (d.next + 1) % len(d.ring)
	if d.next == 0 {
		d.full = true
	}
	d.last, d.haveSt = st, true
	ev := Event{Status: st, Point: &p}
	for ch := range d.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}

// History returns the ring's points, oldest first.
func (d *Dashboard) History() []Point {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.historyLocked()
}

func (d *Dashboard) historyLocked() []Point {
	if !d.full {
		return append([]Point{}, d.ring[:d.next]...)
	}
	return append(append([]Point{}, d.ring[d.next:]...), d.ring[:d.next]...)
}

// PointOf takes the plotted figures out of a status answer.
func PointOf(now time.Time, st api.Status) Point {
	p := Point{T: float64(now.UnixMilli()) / 1000, Loss: st.Loss, SamplesPerS: st.SamplesPerS, Epoch: st.Epoch,
		Paused: st.State == "paused"}
	var tr struct {
		Peers []struct {
			PeerID     string  `json:"peer_id"`
			Throughput float64 `json:"throughput"`
		} `json:"peers"`
	}
	if raw, ok := st.Services["training"]; ok && json.Unmarshal(raw, &tr) == nil {
		for _, pr := range tr.Peers {
			if pr.PeerID == st.PeerID {
				p.Throughput = pr.Throughput
			}
		}
	}
	var g struct {
		Devices []struct {
			Index        int    `json:"index"`
			TemperatureC int    `json:"temperature_c"`
			UtilPct      int    `json:"utilization_pct"`
			MemoryUsed   uint64 `json:"memory_used_bytes"`
		} `json:"devices"`
	}
	if raw, ok := st.Services["gpu"]; ok && json.Unmarshal(raw, &g) == nil {
		for _, dv := range g.Devices {
			p.GPUs = append(p.GPUs, GPUPoint{Index: dv.Index, TemperatureC: dv.TemperatureC, UtilPct: dv.UtilPct,
				MemoryUsedMB: float64(dv.MemoryUsed) / (1 << 20)})
		}
	}
	return p
}

// errTooManyStreams is the answer when MaxStreams pages are open already.
var errTooManyStreams = errors.New("too many dashboard pages are open on this node; close one and reload")

// serveEvents streams server-sent events: "hello" with the history and the
// latest status, then "tick" every sample, until the page goes away.
func (d *Dashboard) serveEvents(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	ch := make(chan Event, 1)
	d.mu.Lock()
	if d.streams >= d.opts.MaxStreams {
		d.mu.Unlock()
		writeError(w, http.StatusServiceUnavailable, errTooManyStreams)
		return
	}
	d.streams++
	d.subs[ch] = struct{}{}
	hello := Event{History: d.historyLocked(), Status: d.last}
	have := d.haveSt
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.streams--
		delete(d.subs, ch)
		d.mu.Unlock()
	}()
	if !have {
		hello.Status = d.src.Status()
	}
	if hello.History == nil {
		hello.History = []Point{}
	}
	// The API server's write timeout is for ordinary answers; a stream
	// lives as long as its page.
	_ = rc.SetWriteDeadline(time.Time{})
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if send(w, rc, "hello", hello) != nil {
		return
	}
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case ev, ok := <-ch:
			if !ok {
				return
			}
			if send(w, rc, "tick", ev) != nil {
				return
			}
		case <-keepalive.C:
			if _, err := fmt.Fprint(w, ": keepalive\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		}
	}
}

func send(w http.ResponseWriter, rc *http.ResponseController, name string, ev Event) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", name, b); err != nil {
		return err
	}
	return rc.Flush()
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, api.Error{Error: err.Error()})
}
