package dataset

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/swarm-train/swarm/internal/atomicfile"
	"github.com/swarm-train/swarm/internal/guard"
	tu "github.com/swarm-train/swarm/internal/testutil"
)

// swarmData is a small data set: two files, 20 chunks of 4 KiB.
type swarmData struct {
	paths []string
	r     *Root
}

func newSwarmData(t *testing.T) *swarmData {
	paths := testFiles(t, 15*MinChunkSize+100, 4*MinChunkSize)
	r, err := Build(paths, MinChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	return &swarmData{paths: paths, r: r}
}

// seed starts a host that serves the whole data set from its files.
func (d *swarmData) seed(t *testing.T, corrupt bool) host.Host {
	h := tu.Host(t)
	s, err := Open(d.r.CID(), Options{Local: [][]string{d.paths}, ChunkSize: MinChunkSize})
	if err != nil || !s.Complete() {
		t.Fatalf("seed store: %v complete %v", err, s.Complete())
	}
	srv := NewServer(h, s, nil, nil)
	if corrupt {
		srv.CorruptChunks()
	}
	return h
}

// joiner is a host with an empty cache, connected to donors.
type joiner struct {
	h      host.Host
	store  *Store
	refuse *guard.Refusals
	reg    *prometheus.Registry
}

func newJoiner(t *testing.T, d *swarmData, cache string, donors ...host.Host) *joiner {
	h := tu.Host(t)
	for _, dh := range donors {
		tu.Connect(t, h, dh)
	}
	s, err := Open(d.r.CID(), Options{Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	refuse, err := guard.New(reg, nil, guard.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	return &joiner{h: h, store: s, refuse: refuse, reg: reg}
}

func (f *joiner) fetch(t *testing.T, donors ...host.Host) (*Report, error) {
	ids := make([]peer.ID, len(donors))
	for i, d := range donors {
		ids[i] = d.ID()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return Fetch(ctx, FetchConfig{Host: f.h, Store: f.store, Refusals: f.refuse, MinDonors: len(ids),
		Poll: 50 * time.Millisecond, Timeout: 5 * time.Second,
		Donors: func(context.Context) []peer.ID { return ids }})
}

// sameFiles fails unless dir holds the data set's files.
func (d *swarmData) sameFiles(t *testing.T, dir string) {
	t.Helper()
	for _, p := range d.paths {
		a, _ := os.ReadFile(p)
		b, err := os.ReadFile(filepath.Join(dir, filepath.Base(p)))
		if err != nil || !bytes.Equal(a, b) {
			t.Fatalf("%s differs in %s: %v", filepath.Base(p), dir, err)
		}
	}
}

// TestFetchFromDonors: a node with nothing learns the root object from a
// donor, fetches the chunks from both donors in parallel, checks them and
// assembles the files; then it serves them in turn to a third node.
func TestFetchFromDonors(t *testing.T) {
	d := newSwarmData(t)
	a, b := d.seed(t, false), d.seed(t, false)
	f := newJoiner(t, d, t.TempDir(), a, b)
	rep, err := f.fetch(t, a, b)
	if err != nil {
		t.Fatal(err)
	}
	if !f.store.Complete() || f.store.Source() != SourceSwarm {
		t.Fatalf("complete %v source %q", f.store.Complete(), f.store.Source())
	}
	d.sameFiles(t, f.store.Dir())
	if rep.Chunks != len(d.r.Chunks()) || rep.Bytes != d.r.Size() || len(rep.Banned) != 0 {
		t.Fatalf("report %+v: want %d chunks, %d bytes, no bans", rep, len(d.r.Chunks()), d.r.Size())
	}
	if rep.Donors[a.ID()] == 0 || rep.Donors[b.ID()] == 0 {
		t.Errorf("donors served %v: want both", rep.DonorList())
	}
	t.Logf("fetched %d chunks in %v from %v", rep.Chunks, rep.Took, rep.DonorList())

	// The fetcher serves what it fetched.
	NewServer(f.h, f.store, nil, nil)
	g := newJoiner(t, d, t.TempDir(), f.h)
	if _, err := g.fetch(t, f.h); err != nil {
		t.Fatal(err)
	}
	d.sameFiles(t, g.store.Dir())
}

// TestFetchBansCorruptDonor: a donor that serves chunks failing their CID
// is banned with the evidence, counted in swarm_security_bans_total, and
// its chunks come from the honest donors.
func TestFetchBansCorruptDonor(t *testing.T) {
	d := newSwarmData(t)
	a, b, bad := d.seed(t, false), d.seed(t, false), d.seed(t, true)
	f := newJoiner(t, d, t.TempDir(), a, b, bad)
	rep, err := f.fetch(t, a, b, bad)
	if err != nil {
		t.Fatal(err)
	}
	d.sameFiles(t, f.store.Dir())
	if len(rep.Banned) != 1 || rep.Banned[0] != bad.ID() || rep.Donors[bad.ID()] != 0 {
		t.Fatalf("banned %v, donors %v: want the corrupt donor banned, serving nothing", rep.Banned, rep.DonorList())
	}
	if !f.refuse.Banned(bad.ID()) {
		t.Fatal("the corrupt donor is not banned in the guard")
	}
	bans := testutil.ToFloat64(mustVec(t, f.reg, "swarm_security_bans_total", "reason", whyChunkLie))
	if bans != 1 {
		t.Fatalf("swarm_security_bans_total{reason=%q} = %v, want 1", whyChunkLie, bans)
	}
}

// mustVec finds the counter name{label=value} in reg.
func mustVec(t *testing.T, reg *prometheus.Registry, name, label, value string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
					c.Add(m.GetCounter().GetValue())
					return c
				}
			}
		}
	}
	t.Fatalf("no %s{%s=%q}", name, label, value)
	return nil
}

// TestFetchFromPartialDonor: a donor that holds part of the data set (it
// is fetching too) is asked only for what its bitmap shows.
func TestFetchFromPartialDonor(t *testing.T) {
	d := newSwarmData(t)
	full := d.seed(t, false)
	ph := tu.Host(t)
	part, _ := Open(d.r.CID(), Options{Cache: t.TempDir()})
	if err := part.SetRoot(d.r.Encode()); err != nil {
		t.Fatal(err)
	}
	for c := 0; c < len(d.r.Chunks()); c += 3 {
		if err := part.PutChunk(c, chunkBytes(t, d.r, d.paths, c)); err != nil {
			t.Fatal(err)
		}
	}
	NewServer(ph, part, nil, nil)
	reg := prometheus.NewRegistry()
	m, _ := NewMetrics(reg)
	f := newJoiner(t, d, t.TempDir(), full, ph)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := Fetch(ctx, FetchConfig{Host: f.h, Store: f.store, MinDonors: 2, Poll: 50 * time.Millisecond, Metrics: m,
		Donors: func(context.Context) []peer.ID { return []peer.ID{full.ID(), ph.ID()} }})
	if err != nil {
		t.Fatal(err)
	}
	d.sameFiles(t, f.store.Dir())
	if got := testutil.ToFloat64(m.chunks.WithLabelValues("missing")); got != 0 {
		t.Errorf("%v chunks asked of a donor whose bitmap lacks them", got)
	}
	t.Logf("donors %v", rep.DonorList())
}

// TestFetchDiskFull: a fetch into a cache on a full disk stops with the
// disk-full error naming the path, and leaves no partial file.
func TestFetchDiskFull(t *testing.T) {
	d := newSwarmData(t)
	a := d.seed(t, false)
	disk := tu.SmallDisk(t, 64<<10)
	f := newJoiner(t, d, disk, a)
	tu.FillDisk(t, disk)
	_, err := f.fetch(t, a)
	if !errors.Is(err, atomicfile.ErrDiskFull) || !strings.Contains(err.Error(), disk) {
		t.Fatalf("fetch onto a full disk: %v, want ErrDiskFull naming a path under %s", err, disk)
	}
	t.Logf("full disk: %v", err)
	filepath.Walk(disk, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() && filepath.Base(p) != "filler" {
			t.Errorf("file %s left on the full disk", p)
		}
		return nil
	})
}
