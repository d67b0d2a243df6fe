package training

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/node"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/data"
	"github.com/swarm-train/swarm/swarm/dataset"
)

// Data is the node.Service that gives a node its run's data set when the
// manifest pins one (dataset.root): it checks the local copies (--data-dir,
// the Go module cache, the corpus's path) and the home's cache
// (HOME/data/<root>/) against the root, fetches what is missing from the
// run's peers and the DHT providers of the root (swarm/dataset), serves
// what it holds to run peers on the gated run host, and announces the root
// in the DHT once it holds all of it. Attach it before the training
// Service, which waits for it (Service.Data).
//
// A fetch that fails on this node's side (a full disk) is logged, shown in
// status (services.data) and tried again every RetryEvery: training waits
// instead of the node stopping.
type Data struct {
	Manifest *run.Manifest
	// DataDir is the volunteer's --data-dir ("" = none).
	DataDir string
	// FaultCorrupt makes this node serve chunks that fail their CID: a
	// fault injection for the process tests of donor bans. Never set it
	// otherwise.
	FaultCorrupt bool
	// RetryEvery is the wait before a failed fetch is tried again (0: 30 s).
	RetryEvery time.Duration
	// Clock times the retries and the provider lookups (nil: the wall
	// clock).
	Clock clock.Clock

	ready chan struct{}

	mu        sync.Mutex
	store     *dataset.Store
	srv       *dataset.Server
	dir       string
	state     string
	err       error
	rep       *dataset.Report
	providers []peer.ID
	tmp       string // cache folder of a node without a home, removed at Close
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// Data states in status.
const (
	dataFetching = "fetching"
	dataReady    = "ready"
	dataFailed   = "failed"
)

// DataStatus is services.data in status.
type DataStatus struct {
	Root   string `json:"root"`
	State  string `json:"state"`  // fetching, ready, failed
	Source string `json:"source"` // local, cache or swarm
	Dir    string `json:"dir"`
	Chunks int    `json:"chunks"`
	Total  int    `json:"total_chunks"`
	Bytes  int64  `json:"bytes"`
	Size   int64  `json:"size"`
	// Donors are the peers this node fetched from, as "peer:chunks".
	Donors []string `json:"donors,omitempty"`
	// Banned are the donors banned for a chunk that failed its CID.
	Banned  []string `json:"banned,omitempty"`
	Seconds float64  `json:"seconds,omitempty"`
	Error   string   `json:"error,omitempty"`
}

func (d *Data) init() {
	d.mu.Lock()
	if d.ready == nil {
		d.ready = make(chan struct{})
	}
	d.mu.Unlock()
}

// Start implements node.Service.
func (d *Data) Start(ctx context.Context, n *node.Node) error {
	d.init()
	if !n.Trains() {
		return errors.New("data: a bootstrap node holds no run data")
	}
	spec := d.Manifest.Dataset
	if spec.Root == "" {
		d.dir = d.DataDir // an older manifest: the data is found locally
		close(d.ready)
		return nil
	}
	root, err := dataset.ParseCID(spec.Root)
	if err != nil {
		return fmt.Errorf("data: dataset.root: %w", err)
	}
	cache := ""
	if home := n.Config().Home; home != "" {
		cache = filepath.Join(home, "data")
	} else if d.tmp, err = os.MkdirTemp("", "swarm-data-"); err != nil {
		return fmt.Errorf("data: cache folder: %w", err)
	} else {
		cache = d.tmp
	}
	opts := dataset.Options{Cache: cache, Local: data.LocalCopies(spec, d.DataDir), Logger: n.Logger()}
	if d.DataDir != "" {
		opts.Dirs = []string{d.DataDir}
	}
	store, err := dataset.Open(root, opts)
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	m, err := dataset.NewMetrics(n.Registerer())
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	srv := dataset.NewServer(n.RunHost(), store, n.Refusals(), m)
	if d.FaultCorrupt {
		srv.CorruptChunks()
	}
	dctx, cancel := context.WithCancel(ctx)
	d.mu.Lock()
	d.store, d.srv, d.cancel = store, srv, cancel
	d.dir = store.CacheDir()
	d.mu.Unlock()
	n.AddStatus("data", func() any { return d.Status() })
	if store.Complete() {
		d.ready1(dctx, n, nil)
		return nil
	}
	n.Logger().Info("data set not on this machine: fetching it from the run's peers", "root", root, "cache", store.CacheDir())
	d.mu.Lock()
	d.state = dataFetching
	d.mu.Unlock()
	d.wg.Add(2)
	go func() {
		defer d.wg.Done()
		d.findProviders(dctx, n, root)
	}()
	go func() {
		defer d.wg.Done()
		d.fetch(dctx, n, m)
	}()
	return nil
}

// ready1 marks the data set complete: Dir is its folder, the root is
// announced in the DHT, and the training service may start.
func (d *Data) ready1(ctx context.Context, n *node.Node, rep *dataset.Report) {
	d.mu.Lock()
	d.dir, d.state, d.rep, d.err = d.store.Dir(), dataReady, rep, nil
	d.mu.Unlock()
	_, total, _, size := d.store.Progress()
	n.Logger().Info("data set ready", "root", d.store.ID(), "source", d.store.Source(), "dir", d.store.Dir(), "bytes", size, "chunks", total)
	n.AnnounceEvery(ctx, d.store.ID(), 10*time.Minute)
	close(d.ready)
}

// fetch gets the data set, trying again after a failure on this side.
func (d *Data) fetch(ctx context.Context, n *node.Node, m *dataset.Metrics) {
	retry := d.RetryEvery
	if retry <= 0 {
		retry = 30 * time.Second
	}
	logged := -1
	for {
		rep, err := dataset.Fetch(ctx, dataset.FetchConfig{
			Host: n.RunHost(), Store: d.store, Refusals: n.Refusals(), Metrics: m, Logger: n.Logger(),
			Donors: func(context.Context) []peer.ID { return d.donors(n) },
			Progress: func(chunks, total int, bytes, size int64) {
				if q := 4 * chunks / max(total, 1); q > logged && q < 4 {
					logged = q
					n.Logger().Info("data: fetching", "chunks", chunks, "of", total, "bytes", bytes, "size", size)
				}
			},
		})
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			banned := make([]string, len(rep.Banned))
			for i, p := range rep.Banned {
				banned[i] = p.String()
			}
			n.Logger().Info("data set fetched", "root", d.store.ID(), "bytes", rep.Bytes, "chunks", rep.Chunks,
				"seconds", rep.Took.Seconds(), "donors", rep.DonorList(), "banned", banned)
			d.ready1(ctx, n, rep)
			return
		}
		n.Logger().Error("data set fetch failed; training waits and the fetch is tried again", "root", d.store.ID(), "err", err, "retry_in", retry)
		d.mu.Lock()
		d.state, d.err, d.rep = dataFailed, err, rep
		d.mu.Unlock()
		if clock.Sleep(ctx, clock.Or(d.Clock), retry) != nil {
			return
		}
		d.mu.Lock()
		d.state = dataFetching
		d.mu.Unlock()
	}
}

// donors are the run's peers and the DHT providers of the root.
func (d *Data) donors(n *node.Node) []peer.ID {
	var out []peer.ID
	for _, ai := range n.RunPeers() {
		out = append(out, ai.ID)
	}
	d.mu.Lock()
	out = append(out, d.providers...)
	d.mu.Unlock()
	return out
}

// findProviders refreshes the DHT providers of root while the fetch lasts.
func (d *Data) findProviders(ctx context.Context, n *node.Node, root cid.Cid) {
	clk := clock.Or(d.Clock)
	wait := 200 * time.Millisecond
	for {
		timer := clk.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-d.store.Done():
			timer.Stop()
			return
		case <-timer.C():
		}
		wait = 5 * time.Second
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ais, err := n.FindProviders(fctx, root)
		cancel()
		if err != nil && len(ais) == 0 {
			continue
		}
		ids := make([]peer.ID, 0, len(ais))
		for _, ai := range ais {
			if len(ai.Addrs) > 0 {
				n.Host().Peerstore().AddAddrs(ai.ID, ai.Addrs, 10*time.Minute)
			}
			ids = append(ids, ai.ID)
		}
		d.mu.Lock()
		d.providers = ids
		d.mu.Unlock()
	}
}

// Dir is the folder the trainer reads the data set from: where the store
// holds (or will hold) every file, or the volunteer's --data-dir when the
// manifest pins no root. Valid after Start.
func (d *Data) Dir() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dir
}

// Wait blocks until the data set is complete (nil) or ctx ends.
func (d *Data) Wait(ctx context.Context) error {
	d.init()
	select {
	case <-d.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Status is services.data.
func (d *Data) Status() DataStatus {
	d.mu.Lock()
	store, st := d.store, DataStatus{State: d.state, Dir: d.dir}
	if d.err != nil {
		st.Error = d.err.Error()
	}
	if r := d.rep; r != nil {
		st.Donors, st.Seconds = r.DonorList(), r.Took.Seconds()
		for _, p := range r.Banned {
			st.Banned = append(st.Banned, p.String())
		}
	}
	d.mu.Unlock()
	if store == nil {
		return st
	}
	st.Root, st.Source = store.ID().String(), store.Source()
	st.Chunks, st.Total, st.Bytes, st.Size = store.Progress()
	return st
}

// Close implements node.Service.
func (d *Data) Close() error {
	d.mu.Lock()
	cancel, srv, tmp := d.cancel, d.srv, d.tmp
	d.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	d.wg.Wait()
	if srv != nil {
		srv.Close()
	}
	if tmp != "" {
		return os.RemoveAll(tmp)
	}
	return nil
}
