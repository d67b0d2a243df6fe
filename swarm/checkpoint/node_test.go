package checkpoint

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/swarm-train/swarm/spec/run"
)

func nodeState(runID, layout string, shard, nP int, epoch uint64) *State {
	return &State{RunID: runID, Layout: layout, Step: int64(epoch), Epoch: epoch,
		Shards: []ShardState{{Index: shard, Params: make([]float32, nP), OptState: make([]float32, 2*nP)}}}
}

// TestLatestFittingRefusesOthers: a node's folder with checkpoints of
// another run, layout and shard and a damaged one: the newest that fits is
// loaded, each other one is reported with the field that differs (or as
// corrupt) and left where it is.
func TestLatestFittingRefusesOthers(t *testing.T) {
	m := run.NewMLPMNIST(2)
	layout, err := LayoutHash(m, 1)
	if err != nil {
		t.Fatal(err)
	}
	if other, _ := LayoutHash(m, 0); other == layout {
		t.Fatal("shards 0 and 1 have the same layout hash")
	}
	id := Identity{RunID: "bafkreirun", Layout: layout, Shard: 1, Params: 10, OptState: 20}
	d := &Dir{Path: ShardPath(t.TempDir(), "bafkreirun", 1), Keep: 10}
	for _, s := range []*State{
		nodeState("bafkreirun", layout, 1, 10, 10),     // fits
		nodeState("bafkreiother", layout, 1, 10, 20),   // another run
		nodeState("bafkreirun", "0123abcd", 1, 10, 30), // another layout
		nodeState("bafkreirun", layout, 0, 10, 40),     // another shard
		nodeState("bafkreirun", layout, 1, 11, 50),     // other sizes
		nodeState("bafkreirun", layout, 1, 10, 60),     // damaged below
	} {
		if _, err := d.Save(s); err != nil {
			t.Fatal(err)
		}
	}
	files, _ := d.List()
	b, _ := os.ReadFile(files[5].Path)
	os.WriteFile(files[5].Path, b[:len(b)-3], 0o644)
	skipped := map[int64]error{}
	d.OnSkip = func(p string, err error) {
		for _, f := range files {
			if f.Path == p {
				skipped[f.Step] = err
			}
		}
	}
	s, path, err := d.LatestFitting(func(s *State) error { return s.Fits(id) })
	if err != nil || s.Epoch != 10 || filepath.Base(path) != "ckpt-000000000010.swck" {
		t.Fatalf("LatestFitting = %v %s %v, want the checkpoint of epoch 10", s, path, err)
	}
	want := map[int64]string{20: "run_id", 30: "layout", 40: "shard", 50: "params"}
	for step, field := range want {
		var me *MismatchError
		if err := skipped[step]; !errors.As(err, &me) || me.Field != field || !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), field) {
			t.Errorf("step %d: skipped with %v, want a mismatch of %s", step, err, field)
		}
	}
	if err := skipped[60]; !errors.Is(err, ErrCorrupt) {
		t.Errorf("damaged checkpoint: skipped with %v, want ErrCorrupt", err)
	}
	for _, f := range files {
		if _, err := os.Stat(f.Path); err != nil {
			t.Errorf("%s was not left in place: %v", f.Path, err)
		}
	}
	// Sizes < 0 are not checked (a checkpoint served for a shard the node
	// no longer builds).
	loose := id
	loose.Params, loose.OptState = -1, -1
	if err := nodeState("bafkreirun", layout, 1, 11, 50).Fits(loose); err != nil {
		t.Errorf("sizes checked though not asked: %v", err)
	}
}

// TestReadMeta: the metadata of a checkpoint without its buffers, and a
// file that is not one refused.
func TestReadMeta(t *testing.T) {
	d := &Dir{Path: t.TempDir()}
	path, err := d.Save(nodeState("bafkreirun", "l", 1, 10, 42))
	if err != nil {
		t.Fatal(err)
	}
	s, err := ReadMeta(path)
	if err != nil || s.Epoch != 42 || s.RunID != "bafkreirun" || s.Layout != "l" || len(s.Shards) != 1 || s.Shards[0].Index != 1 || s.Shards[0].Params != nil {
		t.Fatalf("ReadMeta = %+v, %v", s, err)
	}
	bad := filepath.Join(d.Path, "ckpt-000000000001.swck")
	os.WriteFile(bad, []byte("SWCKPT\r\nnot really"), 0o644)
	if _, err := ReadMeta(bad); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("ReadMeta of a torn file: %v", err)
	}
}

// AssembleNodeShards takes each shard's newest fitting checkpoint from its
// own folder (shards may be at different epochs), and names the folder of a
// shard that has none.
func TestAssembleNodeShards(t *testing.T) {
	m := run.NewMLPMNIST(2)
	id, _ := m.ID()
	runs := t.TempDir()
	for i, epochs := range [][]uint64{{3, 5}, {4}} {
		layout, _ := LayoutHash(m, i)
		nP, _ := m.NumParams(i)
		d := &Dir{Path: ShardPath(runs, id.String(), i)}
		for _, e := range epochs {
			s := nodeState(id.String(), layout, i, nP, e)
			s.Shards[0].Params[0] = float32(e)
			if _, err := d.Save(s); err != nil {
				t.Fatal(err)
			}
		}
		if i == 1 { // a newer checkpoint of another layout is passed over
			if _, err := d.Save(nodeState(id.String(), "0123abcd", i, nP, 9)); err != nil {
				t.Fatal(err)
			}
		}
	}
	var skipped []string
	a, err := AssembleNodeShards([]string{runs}, m, func(p string, err error) { skipped = append(skipped, p) })
	if err != nil {
		t.Fatal(err)
	}
	if a.Params[0][0] != 5 || a.Params[1][0] != 4 || a.Epochs[0] != 5 || a.Epochs[1] != 4 || a.Step != 5 || len(skipped) != 1 {
		t.Fatalf("assembled epochs %v, step %d, first values %v %v, skipped %v", a.Epochs, a.Step, a.Params[0][0], a.Params[1][0], skipped)
	}
	m3 := run.NewMLPMNIST(3)
	id3, _ := m3.ID()
	_, err = AssembleNodeShards([]string{runs}, m3, nil)
	if !errors.Is(err, ErrNone) || !strings.Contains(err.Error(), ShardPath(runs, id3.String(), 0)) {
		t.Fatalf("a run with no checkpoints: %v", err)
	}
	// Two homes (two nodes of one swarm): each shard's latest epoch of
	// either, whichever home holds it.
	other := t.TempDir()
	layout, _ := LayoutHash(m, 0)
	nP, _ := m.NumParams(0)
	s := nodeState(id.String(), layout, 0, nP, 7)
	s.Shards[0].Params[0] = 7
	if _, err := (&Dir{Path: ShardPath(other, id.String(), 0)}).Save(s); err != nil {
		t.Fatal(err)
	}
	a, err = AssembleNodeShards([]string{runs, other}, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.Params[0][0] != 7 || a.Params[1][0] != 4 || a.Epochs[0] != 7 || a.Epochs[1] != 4 {
		t.Fatalf("assembled from two homes: epochs %v, first values %v %v", a.Epochs, a.Params[0][0], a.Params[1][0])
	}
	if _, err := AssembleNodeShards([]string{other}, m, nil); !errors.Is(err, ErrNone) || !strings.Contains(err.Error(), "shard 1 of 2") {
		t.Fatalf("a home without shard 1: %v", err)
	}
}
