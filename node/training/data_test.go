package training

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/swarm-train/swarm/internal/testutil"
	"github.com/swarm-train/swarm/node"
	"github.com/swarm-train/swarm/node/nodetest"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/dataset"
)

// TestDataServiceFullDiskThenFetch: an operator's node seeds a custom
// data set put in its home with dataset.Add (swarm data add); a volunteer
// whose data cache is on a full disk says so in status, naming the path,
// keeps running, and fetches the data once space is freed.
func TestDataServiceFullDiskThenFetch(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: starts three nodes")
	}
	src := t.TempDir()
	var paths []string
	for i, n := range []int{5*dataset.MinChunkSize + 17, 2 * dataset.MinChunkSize} {
		p := filepath.Join(src, "part"+string(rune('a'+i)))
		b := bytes.Repeat([]byte{byte(i + 1), byte(3 * i)}, n/2+1)[:n]
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	seedHome := t.TempDir()
	r, err := dataset.Add(filepath.Join(seedHome, "data"), paths, dataset.MinChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	m := run.NewMLPMNIST(1)
	m.Dataset.Root = r.CID().String()
	id, err := m.ID()
	if err != nil {
		t.Fatal(err)
	}

	bcfg := nodetest.Config("", "")
	bcfg.Role, bcfg.DHTMode = node.RoleBootstrap, node.DHTServer
	boot := nodetest.Start(t, bcfg)
	bootAddr := boot.Addrs()[0].String()

	start := func(home string, d *Data) {
		cfg := nodetest.Config(home, "", bootAddr)
		cfg.RunID, cfg.RunName = id, m.Name
		cfg.Services = []node.Service{d}
		nodetest.Start(t, cfg)
	}
	seed := &Data{Manifest: m}
	start(seedHome, seed)
	if st := seed.Status(); st.State != dataReady || st.Source != dataset.SourceCache {
		t.Fatalf("seed's data: %+v, want ready from its cache", st)
	}

	home := t.TempDir()
	disk := testutil.SmallDisk(t, 128<<10)
	if err := os.Symlink(disk, filepath.Join(home, "data")); err != nil {
		t.Fatal(err)
	}
	filler := testutil.FillDisk(t, disk)
	v := &Data{Manifest: m, RetryEvery: 100 * time.Millisecond}
	start(home, v)
	testutil.Eventually(t, 30*time.Second, func() string { return "volunteer's data: " + v.Status().State + " " + v.Status().Error }, func() bool {
		st := v.Status()
		return strings.Contains(st.Error, "disk is full") && strings.Contains(st.Error, filepath.Join(home, "data", m.Dataset.Root))
	})
	t.Logf("full disk: %s", v.Status().Error)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := v.Wait(ctx); err != nil {
		t.Fatalf("no data after space was freed: %v (%+v)", err, v.Status())
	}
	st := v.Status()
	if st.Source != dataset.SourceSwarm || st.Bytes != r.Size() {
		t.Fatalf("volunteer's data: %+v", st)
	}
	for _, p := range paths {
		a, _ := os.ReadFile(p)
		b, _ := os.ReadFile(filepath.Join(v.Dir(), filepath.Base(p)))
		if !bytes.Equal(a, b) {
			t.Fatalf("%s differs after the fetch", filepath.Base(p))
		}
	}
}
