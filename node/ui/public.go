package ui

// The public swarm page of a bootstrap node: read-only, no token, for the
// swarm's volunteers and anyone curious (the health page of the swarm).
//
// What a bootstrap can see cheaply: it is the swarm's DHT server, so it
// holds the provider records that every run node writes for its run and
// for the shard it holds (swarm/trainer's announce loop). For each run the
// operator names (its manifest: the run ID and shard IDs are its CIDs), the
// page lists the run's announced peers, each shard's holders, and which of
// them are connected to the bootstrap now. Epoch, loss and throughput live
// in the progress records that run peers push only to each other (after
// the run hello); the bootstrap is not a run peer, so it asks each announced
// peer for its summary (node.SummaryProtocol, at most maxAsked per run, a
// few at a time) and shows the median epoch and loss of the answers, the
// throughput per shard, and each volunteer's work as it reports it.

import (
	"context"
	"fmt"
	"io/fs"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/node/api"
	"github.com/swarm-train/swarm/spec/run"
)

// Finder is what the public page reads from the bootstrap node.
type Finder interface {
	Source
	// FindProviders returns the peers with provider records for c.
	FindProviders(ctx context.Context, c cid.Cid) ([]peer.AddrInfo, error)
	// FetchSummary asks peer p for its summary of run runID, checked
	// against the run's shards and epochs.
	FetchSummary(ctx context.Context, p peer.ID, runID cid.Cid, shards int, maxEpoch uint64) (api.RunSummary, error)
}

// maxAsked bounds the peers asked for their summary per run and refresh;
// askAtOnce bounds the questions in flight.
const (
	maxAsked  = 64
	askAtOnce = 8
)

// SwarmView is the public page's data (GET /swarm.json).
type SwarmView struct {
	Updated      time.Time `json:"updated"`
	PeerID       string    `json:"peer_id"`
	Version      string    `json:"version"`
	Addrs        []string  `json:"addrs"`
	Connected    int       `json:"connected_peers"`
	RoutingTable int       `json:"routing_table_size"`
	Runs         []RunView `json:"runs"`
	// Source says where the run figures come from.
	Source string `json:"source"`
}

// RunView is one run as the bootstrap sees it.
type RunView struct {
	RunID     string      `json:"run_id"`
	Name      string      `json:"name"`
	Model     string      `json:"model"`
	Epochs    int         `json:"epochs"`
	Peers     []PeerView  `json:"peers"`
	Shards    []ShardView `json:"shards"`
	Error     string      `json:"error,omitempty"`
	Connected int         `json:"connected"` // of Peers, connected to the bootstrap now
	// From the peers' summaries (Reported of them answered): the median
	// epoch and loss, and samples/s through the first shard (the sum of its
	// holders' reports).
	Reported    int     `json:"reported"`
	Epoch       uint64  `json:"epoch"`
	Loss        float64 `json:"loss"`
	SamplesPerS float64 `json:"samples_per_s"`
	// Volunteers is the leaderboard: each answering peer's work since it
	// started, most credited samples first.
	Volunteers []VolunteerView `json:"volunteers"`
}

// VolunteerView is one volunteer's summary as it reports it.
type VolunteerView struct {
	PeerID      string  `json:"peer_id"`
	Shard       int     `json:"shard"`
	State       string  `json:"state"`
	Epoch       uint64  `json:"epoch"`
	Device      string  `json:"device"`
	Engine      string  `json:"engine"`
	SamplesPerS float64 `json:"samples_per_s"`
	Processed   int64   `json:"processed"`
	Credit      int64   `json:"credit"` // samples its receipts back, as it reports
	BusySeconds float64 `json:"busy_seconds"`
}

// ShardView is one shard and its announced holders.
type ShardView struct {
	Index   int        `json:"index"`
	Units   string     `json:"units"` // model units [start, end)
	Holders []PeerView `json:"holders"`
	// SamplesPerS is the sum of the holders' reported samples/s.
	SamplesPerS float64 `json:"samples_per_s"`
}

// PeerView is a peer ID and whether the bootstrap is connected to it.
type PeerView struct {
	PeerID    string `json:"peer_id"`
	Connected bool   `json:"connected"`
}

// Public is the public swarm page and the collector behind it.
type Public struct {
	f     Finder
	runs  []*run.Manifest
	every time.Duration
	mux   *http.ServeMux

	mu   sync.Mutex
	view SwarmView

	// asked is when each run's peers were last asked for summaries: at
	// most once per askEvery (a node answers one question per second per
	// asker), the view keeps the last answers in between.
	asked map[string]time.Time
}

const askEvery = 2 * time.Second

// NewPublic returns the public page for the runs' manifests; Run refreshes
// its view every interval (default 15 s).
func NewPublic(f Finder, runs []*run.Manifest, every time.Duration) *Public {
	if every <= 0 {
		every = 15 * time.Second
	}
	p := &Public{f: f, runs: runs, every: every, mux: http.NewServeMux(), asked: make(map[string]time.Time)}
	p.view = SwarmView{Runs: []RunView{}, Source: source}
	static, _ := fs.Sub(staticFS, "static")
	files := &Dashboard{} // serveFile needs no state
	p.mux.HandleFunc("GET /{$}", files.serveFile(static, "public.html"))
	p.mux.HandleFunc("GET /static/{file}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("file")
		if name == "app.js" || name == "index.html" { // the node's own dashboard is not public
			writeError(w, http.StatusNotFound, fmt.Errorf("no such file: %.80q", name))
			return
		}
		files.serveFile(static, name)(w, r)
	})
	p.mux.HandleFunc("GET /swarm.json", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, p.View())
	})
	p.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET")
			writeError(w, http.StatusMethodNotAllowed, fmt.Errorf("%s %s: this page is read-only", r.Method, r.URL.Path))
			return
		}
		writeError(w, http.StatusNotFound, fmt.Errorf("no such page: %.80s", r.URL.Path))
	})
	return p
}

const source = "DHT provider records held by this bootstrap node (the runs' peers announce their run and their shard); " +
	"epoch, loss, throughput and work are the peers' own summaries (medians of their answers; each volunteer's work as it reports it)"

// ServeHTTP serves the page (/), its files and /swarm.json; GET only.
func (p *Public) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	p.mux.ServeHTTP(w, r)
}

// View is the latest view.
func (p *Public) View() SwarmView {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.view
}

// Run refreshes the view until ctx ends.
func (p *Public) Run(ctx context.Context) {
	for {
		p.Refresh(ctx)
		select {
		case <-ctx.Done():
			return
		case <-time.After(p.every):
		}
	}
}

// Refresh looks up every run's providers now (each lookup bounded to 5 s).
func (p *Public) Refresh(ctx context.Context) {
	st := p.f.Status()
	connected := make(map[string]bool, len(st.Peers))
	for _, pr := range st.Peers {
		connected[pr.PeerID] = true
	}
	v := SwarmView{Updated: time.Now().UTC(), PeerID: st.PeerID, Version: st.Version, Addrs: st.Addrs,
		Connected: len(st.Peers), RoutingTable: st.RoutingTableSize, Runs: []RunView{}, Source: source}
	find := func(c cid.Cid) ([]PeerView, error) {
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		ais, err := p.f.FindProviders(fctx, c)
		out := make([]PeerView, 0, len(ais))
		seen := map[string]bool{}
		for _, ai := range ais {
			id := ai.ID.String()
			if !seen[id] {
				seen[id] = true
				out = append(out, PeerView{PeerID: id, Connected: connected[id]})
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].PeerID < out[j].PeerID })
		if len(out) > 0 {
			err = nil // a lookup that ran into its deadline still found these
		}
		return out, err
	}
	for _, m := range p.runs {
		id, err := m.ID()
		if err != nil {
			continue
		}
		rv := RunView{RunID: id.String(), Name: m.Name, Model: m.Model.Arch, Epochs: m.Training.Steps, Shards: []ShardView{}}
		if rv.Peers, err = find(id); err != nil {
			rv.Error = "run peers: " + err.Error()
		}
		for _, pv := range rv.Peers {
			if pv.Connected {
				rv.Connected++
			}
		}
		for i, sp := range m.Shards {
			sv := ShardView{Index: i, Units: fmt.Sprintf("%d-%d", sp.Start, sp.End), Holders: []PeerView{}}
			if c, err := m.ShardID(i); err == nil {
				sv.Holders, _ = find(c)
			}
			rv.Shards = append(rv.Shards, sv)
		}
		if prev, ok := p.lastRun(rv.RunID); ok && time.Since(p.asked[rv.RunID]) < askEvery {
			rv.Reported, rv.Epoch, rv.Loss, rv.SamplesPerS, rv.Volunteers = prev.Reported, prev.Epoch, prev.Loss, prev.SamplesPerS, prev.Volunteers
			for i := range rv.Shards {
				if i < len(prev.Shards) {
					rv.Shards[i].SamplesPerS = prev.Shards[i].SamplesPerS
				}
			}
		} else {
			p.asked[rv.RunID] = time.Now()
			p.summarize(ctx, id, m, &rv)
		}
		v.Runs = append(v.Runs, rv)
	}
	p.mu.Lock()
	p.view = v
	p.mu.Unlock()
}

// lastRun is run id in the current view.
func (p *Public) lastRun(id string) (RunView, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.view.Runs {
		if r.RunID == id {
			return r, true
		}
	}
	return RunView{}, false
}

// summarize asks the run's peers (the first maxAsked, askAtOnce at a time)
// for their summaries and fills rv's figures and leaderboard from the
// answers. A peer that does not answer is left out.
func (p *Public) summarize(ctx context.Context, id cid.Cid, m *run.Manifest, rv *RunView) {
	rv.Volunteers = []VolunteerView{}
	asked := rv.Peers
	if len(asked) > maxAsked {
		asked = asked[:maxAsked]
	}
	answers := make([]*api.RunSummary, len(asked))
	sem := make(chan struct{}, askAtOnce)
	var wg sync.WaitGroup
	for i, pv := range asked {
		pid, err := peer.Decode(pv.PeerID)
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if s, err := p.f.FetchSummary(ctx, pid, id, len(m.Shards), uint64(m.Training.Steps)); err == nil {
				answers[i] = &s
			}
		}()
	}
	wg.Wait()
	var epochs []uint64
	var losses []float64
	for i, s := range answers {
		if s == nil {
			continue
		}
		rv.Reported++
		epochs = append(epochs, s.Epoch)
		if s.Loss > 0 {
			losses = append(losses, s.Loss)
		}
		if s.Shard >= 0 && s.Shard < len(rv.Shards) {
			rv.Shards[s.Shard].SamplesPerS += s.SamplesPerS
		}
		rv.Volunteers = append(rv.Volunteers, VolunteerView{PeerID: asked[i].PeerID, Shard: s.Shard, State: s.State,
			Epoch: s.Epoch, Device: s.Device, Engine: s.Engine, SamplesPerS: s.SamplesPerS, Processed: s.Processed,
			Credit: s.Credit, BusySeconds: s.BusySeconds})
	}
	if len(rv.Shards) > 0 {
		rv.SamplesPerS = rv.Shards[0].SamplesPerS
	}
	if len(epochs) > 0 {
		sort.Slice(epochs, func(i, j int) bool { return epochs[i] < epochs[j] })
		rv.Epoch = epochs[(len(epochs)-1)/2] // the lower median: one peer far ahead moves nothing
	}
	if len(losses) > 0 {
		sort.Float64s(losses)
		rv.Loss = losses[(len(losses)-1)/2]
	}
	sort.SliceStable(rv.Volunteers, func(i, j int) bool {
		if rv.Volunteers[i].Credit != rv.Volunteers[j].Credit {
			return rv.Volunteers[i].Credit > rv.Volunteers[j].Credit
		}
		return rv.Volunteers[i].Processed > rv.Volunteers[j].Processed
	})
}
