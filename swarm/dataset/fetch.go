package dataset

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/guard"
)

// FetchConfig is what Fetch needs. Host, Store and Donors are required.
type FetchConfig struct {
	// Host opens the streams: the node's run host, so that donors are
	// admitted run peers.
	Host  host.Host
	Store *Store
	// Donors lists the peers that may hold the data (the run's peers, the
	// DHT providers of the root CID). It is asked again every Poll while
	// the fetch lasts, so donors that appear later join in.
	Donors func(ctx context.Context) []peer.ID
	// Refusals bans a donor caught lying (a chunk or root object that
	// fails its CID: guard.BanFor, reason "data-chunk" or "data-root"),
	// counts malformed answers, and says who is banned (nil: silently,
	// and a liar is only dropped from this fetch).
	Refusals *guard.Refusals
	// Timeout bounds each request to a donor (0: 10 s): one that stalls
	// is dropped and its chunk goes to another.
	Timeout time.Duration
	// Poll is how often the donors are listed again (0: 1 s); a donor
	// that failed is tried again after RetryAfter (0: 5 s).
	Poll       time.Duration
	RetryAfter time.Duration
	// MinDonors: the fetch waits up to Gather for this many donors before
	// it starts, so that the load spreads (0: 3; 2 s).
	MinDonors int
	Gather    time.Duration
	// Progress, when set, is called after every verified chunk, one call
	// at a time.
	Progress func(chunks, total int, bytes, size int64)
	Metrics  *Metrics
	Logger   *slog.Logger
}

func (c *FetchConfig) defaults() error {
	if c.Host == nil || c.Store == nil || c.Donors == nil {
		return errors.New("dataset: Fetch needs Host, Store and Donors")
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Poll <= 0 {
		c.Poll = time.Second
	}
	if c.RetryAfter <= 0 {
		c.RetryAfter = 5 * time.Second
	}
	if c.MinDonors <= 0 {
		c.MinDonors = 3
	}
	if c.Gather <= 0 {
		c.Gather = 2 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Report is what a fetch did.
type Report struct {
	// Chunks and Bytes fetched and verified.
	Chunks int
	Bytes  int64
	// Donors maps each donor to the verified chunks it served.
	Donors map[peer.ID]int
	// Banned donors served a chunk or root that failed its CID.
	Banned []peer.ID
	Took   time.Duration
}

// DonorList is Donors as "peer:chunks" pairs, most chunks first.
func (r *Report) DonorList() []string {
	ids := make([]peer.ID, 0, len(r.Donors))
	for p := range r.Donors {
		ids = append(ids, p)
	}
	sort.Slice(ids, func(i, j int) bool {
		return r.Donors[ids[i]] > r.Donors[ids[j]] || r.Donors[ids[i]] == r.Donors[ids[j]] && ids[i] < ids[j]
	})
	out := make([]string, len(ids))
	for i, p := range ids {
		out[i] = fmt.Sprintf("%s:%d", p, r.Donors[p])
	}
	return out
}

// Fetch gets the chunks the store lacks (and its root object, if it does
// not know it) from donors in parallel, one stream each, until the store
// is complete, ctx ends, or the store cannot keep a chunk (a full disk:
// the error names the path). Every chunk is checked against its CID before
// it is kept; a donor whose chunk fails is banned and the chunk is asked
// of another. A donor that stalls, resets or lacks the chunks is dropped
// and tried again later, since peers that are fetching too gain chunks.
func Fetch(ctx context.Context, cfg FetchConfig) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	f := &fetcher{cfg: cfg, s: cfg.Store, rep: &Report{Donors: map[peer.ID]int{}},
		active: map[peer.ID]bool{}, retry: map[peer.ID]time.Time{}, wake: make(chan struct{}, 1),
		rng: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
	start := time.Now()
	defer func() { f.rep.Took = time.Since(start) }()
	if f.s.Complete() {
		return f.rep, nil
	}
	if err := f.gather(ctx, start.Add(cfg.Gather)); err != nil {
		return f.rep, err
	}
	err := f.run(ctx)
	return f.rep, err
}

type fetcher struct {
	cfg FetchConfig
	s   *Store

	mu       sync.Mutex
	rep      *Report
	active   map[peer.ID]bool      // donors with a worker now
	retry    map[peer.ID]time.Time // donors not to ask before then
	inflight map[int]bool          // chunks being fetched
	fatal    error
	rng      *rand.Rand
	wake     chan struct{}
	progMu   sync.Mutex
}

// candidates are the donors to start a worker for now.
func (f *fetcher) candidates(ctx context.Context) []peer.ID {
	all := f.cfg.Donors(ctx)
	self := f.cfg.Host.ID()
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []peer.ID
	seen := map[peer.ID]bool{}
	for _, p := range all {
		if p == self || seen[p] || f.active[p] || now.Before(f.retry[p]) || f.cfg.Refusals.Banned(p) {
			continue
		}
		seen[p] = true
		out = append(out, p)
	}
	return out
}

// gather waits until MinDonors donors are known or the deadline passes.
func (f *fetcher) gather(ctx context.Context, deadline time.Time) error {
	t := time.NewTicker(f.cfg.Poll / 5)
	defer t.Stop()
	for len(f.candidates(ctx)) < f.cfg.MinDonors && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

func (f *fetcher) run(ctx context.Context) error {
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	tick := time.NewTicker(f.cfg.Poll)
	defer tick.Stop()
	lastWait := time.Time{}
	for !f.s.Complete() {
		f.mu.Lock()
		fatal, working := f.fatal, len(f.active)
		f.mu.Unlock()
		if fatal != nil {
			return fatal
		}
		cands := f.candidates(wctx)
		for _, p := range cands {
			f.mu.Lock()
			f.active[p] = true
			f.mu.Unlock()
			wg.Add(1)
			go func(p peer.ID) {
				defer wg.Done()
				f.work(wctx, p)
			}(p)
		}
		if working == 0 && len(cands) == 0 && time.Since(lastWait) > 10*time.Second {
			have, total, _, _ := f.s.Progress()
			f.cfg.Logger.Info("data: waiting for run peers that hold the data set", "root", f.s.ID(), "chunks", have, "of", total)
			lastWait = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-f.s.Done():
		case <-tick.C:
		case <-f.wake:
		}
	}
	return nil
}

// end marks p's worker over; it may be tried again after wait (0: never).
func (f *fetcher) end(p peer.ID, wait time.Duration) {
	f.mu.Lock()
	delete(f.active, p)
	if wait > 0 {
		f.retry[p] = time.Now().Add(wait)
	} else {
		f.retry[p] = time.Now().Add(24 * time.Hour)
	}
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

func (f *fetcher) fail(err error) {
	f.mu.Lock()
	if f.fatal == nil {
		f.fatal = err
	}
	f.mu.Unlock()
}

// ban bans p for a lie shown by err and keeps it out of this fetch.
func (f *fetcher) ban(p peer.ID, reason string, err error) {
	f.cfg.Refusals.BanFor(p, reason, err)
	f.mu.Lock()
	f.rep.Banned = append(f.rep.Banned, p)
	f.mu.Unlock()
}

// malformed counts a refusal of p's answer when err says it broke the
// protocol's form (a bitmap of the wrong size, an oversized error text).
func (f *fetcher) malformed(p peer.ID, err error) {
	if !errors.Is(err, errMalformed) || errors.Is(err, errLie) {
		return
	}
	why := whyAnswer
	if errors.Is(err, errBadBitmap) {
		why = whyBitmap
	}
	f.cfg.Refusals.Refuse(p, protoData, why, err)
}

// work fetches from donor p until it has nothing more this store lacks.
func (f *fetcher) work(ctx context.Context, p peer.ID) {
	wait := f.cfg.RetryAfter
	defer func() { f.end(p, wait) }()
	sctx, cancel := context.WithTimeout(ctx, f.cfg.Timeout)
	st, err := f.cfg.Host.NewStream(sctx, p, Protocol)
	cancel()
	if err != nil {
		f.cfg.Logger.Debug("data: donor unreachable", "peer", p, "err", err)
		return
	}
	stop := context.AfterFunc(ctx, func() { st.Reset() }) // a finished fetch ends every request
	defer stop()
	ok := false
	defer func() {
		if ok {
			st.Close()
		} else {
			st.Reset()
		}
	}()
	c := &donorConn{st: st, root: f.s.sum, timeout: f.cfg.Timeout}
	if f.s.Root() == nil {
		enc, err := c.askRoot()
		if err != nil {
			if errors.Is(err, errLie) {
				f.ban(p, whyRootLie, fmt.Errorf("data set %s: %w", f.s.ID(), err))
				wait = 0
			}
			f.malformed(p, err)
			return
		}
		if err := f.s.SetRoot(enc); err != nil {
			f.fail(fmt.Errorf("data set root %s: %w", f.s.ID(), err))
			return
		}
	}
	chunks := f.s.Root().Chunks()
	bm, err := c.askHave(len(chunks))
	if err != nil {
		f.malformed(p, err)
		return
	}
	for ctx.Err() == nil {
		i, found := f.pick(bm)
		if !found {
			ok, wait = true, f.cfg.Poll // it may gain chunks, or be asked for a straggler
			return
		}
		b, err := c.askChunk(chunks[i])
		if err == nil {
			err = f.s.PutChunk(i, b) // before unpick: no other worker asks for it meanwhile
			f.unpick(i)
			if err != nil {
				f.fail(err)
				return
			}
		} else {
			f.unpick(i)
		}
		switch {
		case err == nil:
			f.cfg.Metrics.addBytes("in", len(b))
			f.cfg.Metrics.chunk("ok")
			f.mu.Lock()
			f.rep.Chunks++
			f.rep.Bytes += int64(len(b))
			f.rep.Donors[p]++
			f.mu.Unlock()
			f.progress()
		case errors.Is(err, errNotHeld):
			f.cfg.Metrics.chunk("missing")
			bm[i/8] &^= 1 << (i % 8)
		case errors.Is(err, errLie):
			f.cfg.Metrics.chunk("corrupt")
			f.ban(p, whyChunkLie, fmt.Errorf("data set %s: %w", f.s.ID(), err))
			wait = 0
			return
		default:
			f.malformed(p, err)
			if ctx.Err() == nil {
				f.cfg.Metrics.chunk("failed")
				f.cfg.Logger.Debug("data: donor failed", "peer", p, "chunk", i, "err", err)
			}
			return
		}
	}
}

// pick reserves a chunk the store lacks that bitmap bm holds and no other
// worker is fetching, starting at a random place so that donors spread
// over the data set.
func (f *fetcher) pick(bm []byte) (int, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inflight == nil {
		f.inflight = map[int]bool{}
	}
	n := min(len(bm)*8, len(f.s.Root().Chunks()))
	if n == 0 {
		return 0, false
	}
	start := f.rng.IntN(n)
	for k := range n {
		c := (start + k) % n
		if bm[c/8]&(1<<(c%8)) != 0 && !f.inflight[c] && !f.s.Have(c) {
			f.inflight[c] = true
			return c, true
		}
	}
	return 0, false
}

func (f *fetcher) unpick(c int) {
	f.mu.Lock()
	delete(f.inflight, c)
	f.mu.Unlock()
}

func (f *fetcher) progress() {
	if f.cfg.Progress == nil {
		return
	}
	f.progMu.Lock()
	defer f.progMu.Unlock()
	f.cfg.Progress(f.s.Progress())
}
