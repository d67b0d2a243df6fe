package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/swarm-train/swarm/node/training"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/data"
)

// dataStatus returns a node's services.data, or nil.
func (s *e2eSwarm) dataStatus(name string) *training.DataStatus {
	st, err := status(s.t, s.bin, filepath.Join(s.dir, name))
	if err != nil {
		return nil
	}
	raw, ok := st.Services["data"]
	if !ok {
		return nil
	}
	var ds training.DataStatus
	if err := json.Unmarshal(raw, &ds); err != nil {
		s.t.Fatalf("services.data does not decode: %v", err)
	}
	return &ds
}

// binaryOnlyEnv is the environment of a machine with only the swarm
// binary: no Go on PATH, an empty home (no module cache), no GOPATH,
// GOMODCACHE, GOROOT or SWARM_DATA.
func binaryOnlyEnv(t *testing.T) []string {
	home := t.TempDir()
	path := "/usr/bin:/bin"
	for _, dir := range filepath.SplitList(path) {
		if _, err := os.Stat(filepath.Join(dir, "go")); err == nil {
			t.Skipf("%s/go exists: cannot make a PATH without Go here", dir)
		}
	}
	return []string{"PATH=" + path, "HOME=" + home, "GOPATH=" + filepath.Join(home, "nowhere"),
		"GOMODCACHE=", "GOROOT=", "GOFLAGS=", data.EnvDataDir + "="}
}

// TestSwarmDataFromPeers: a volunteer with only the binary (PATH without
// Go, an empty home, no data files; the test binary is built without
// BuildMNISTDir) joins a demo swarm whose manifest pins the MNIST root. It
// fetches the 11 MB of MNIST from the run's peers, at least two of them,
// and trains within 30 s of its start. One donor serves chunks that fail
// their CID (the hidden --fault-data flag): the volunteer bans it with
// the evidence and fetches those chunks elsewhere.
func TestSwarmDataFromPeers(t *testing.T) {
	s := newE2E(t, 2, 5000)
	m, err := run.Load(s.manifest)
	if err != nil {
		t.Fatal(err)
	}
	m.Dataset.Root = data.MNISTRoot
	if err := m.Save(s.manifest); err != nil {
		t.Fatal(err)
	}
	// Donors: they hold MNIST in the Go module cache, checked against the
	// root; the liar is a holder of shard 1 that trains honestly.
	a := s.add(nil, "--shard", "0")
	b := s.add(nil, "--shard", "1")
	x := s.add(nil, "--shard", "1", "--fault-data")
	xID := s.peerID(x)
	for _, n := range []string{a, b, x} {
		s.wait(30*time.Second, n+" to hold the data set", func() bool {
			ds := s.dataStatus(n)
			return ds != nil && ds.State == "ready" && ds.Source == "local"
		})
	}

	// The volunteer runs a copy of the binary, as on a machine without Go.
	bin := filepath.Join(t.TempDir(), "swarm")
	b0, err := os.ReadFile(s.bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b0, 0o755); err != nil {
		t.Fatal(err)
	}
	s.n++
	v := "node" + string(rune('0'+s.n))
	home := filepath.Join(s.dir, v)
	start := time.Now()
	s.nodes[v] = startDaemon(t, bin, binaryOnlyEnv(t), "node", "--home", home, "--run", s.manifest, "--bootstrap", s.boot,
		"--listen", "/ip4/127.0.0.1/tcp/0", "--threads", "1", "--shard", "0")
	s.wait(30*time.Second, "the binary-only volunteer to fetch MNIST and train", func() bool {
		st := s.training(v)
		return st != nil && st.State == "online" && st.Processed > 0
	})
	took := time.Since(start)
	ds := s.dataStatus(v)
	if ds == nil || ds.State != "ready" || ds.Source != "swarm" || ds.Bytes != 11_594_722 || ds.Chunks != ds.Total {
		t.Fatalf("volunteer's data: %+v; want all 11,594,722 bytes fetched from the swarm", ds)
	}
	honest := 0
	for _, d := range ds.Donors {
		if !strings.HasPrefix(d, xID+":") {
			honest++
		}
	}
	if honest < 2 {
		t.Errorf("fetched from %v: want at least two honest donors", ds.Donors)
	}
	if len(ds.Banned) != 1 || ds.Banned[0] != xID {
		t.Errorf("banned %v: want the corrupt donor %s", ds.Banned, xID)
	}
	bans := s.bans(v)
	if len(bans) == 0 || !strings.Contains(bans[0], xID) || !strings.Contains(bans[0], "reason=data-chunk") {
		t.Errorf("the volunteer's ban lines %q: want the corrupt donor banned for reason data-chunk", bans)
	}
	for _, l := range strings.Split(s.nodes[v].output(true), "\n") {
		if strings.Contains(l, "data set fetched") || strings.Contains(l, "banning a peer") {
			t.Logf("volunteer: %s", l)
		}
	}
	if _, err := os.Stat(filepath.Join(home, "data", data.MNISTRoot, "train-images-idx3-ubyte.gz")); err != nil {
		t.Errorf("the fetched data is not in the volunteer's cache: %v", err)
	}
	t.Logf("binary-only volunteer trained %v after its start (data from %v, %.2fs)", took.Round(100*time.Millisecond), ds.Donors, ds.Seconds)
}
