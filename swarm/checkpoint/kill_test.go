package checkpoint

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/swarm-train/swarm/internal/atomicfile"
	"github.com/swarm-train/swarm/internal/testutil"
)

// The helper process of TestKillMidWrite: it saves large node checkpoints
// into $SWARM_CKPT_KILL_DIR, one after another, until it is killed.
func TestKillMidWriteHelper(t *testing.T) {
	dir := os.Getenv("SWARM_CKPT_KILL_DIR")
	if dir == "" {
		t.Skip("the helper process of TestKillMidWrite")
	}
	d := &Dir{Path: dir, Keep: 2}
	s := &State{RunID: "bafkreikill", Layout: "l", Shards: []ShardState{{Index: 1, Params: make([]float32, 4<<20), OptState: make([]float32, 4<<20)}}}
	for step := int64(1); ; step++ {
		s.Step, s.Epoch = step, uint64(step)
		s.Shards[0].Params[0] = float32(step)
		if _, err := d.Save(s); err != nil {
			t.Fatal(err)
		}
	}
}

// TestKillMidWrite: a process killed (SIGKILL) while it writes a checkpoint
// leaves the previous one valid: the newest file that verifies is a whole
// checkpoint, and the half-written temporary file is never taken for one.
func TestKillMidWrite(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a helper process")
	}
	midWrite := 0
	for round := 0; round < 3; round++ {
		dir := filepath.Join(t.TempDir(), "shard-1")
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillMidWriteHelper$", "-test.count=1")
		cmd.Env = append(os.Environ(), "SWARM_CKPT_KILL_DIR="+dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		d := &Dir{Path: dir}
		// Kill it while a temporary file is being written, after at least
		// one checkpoint is whole.
		testutil.Eventually(t, 60*time.Second, testutil.Says("a checkpoint, then a write in progress"), func() bool {
			files, _ := d.List()
			return len(files) > 0 && tempIn(dir)
		})
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if tempIn(dir) {
			midWrite++
		}
		s, path, err := d.Latest()
		if err != nil {
			t.Fatalf("round %d: no valid checkpoint after the kill: %v", round, err)
		}
		if want := float32(s.Step); s.Shards[0].Params[0] != want || s.Epoch != uint64(s.Step) {
			t.Fatalf("round %d: %s holds step %d with the data of %v", round, path, s.Step, s.Shards[0].Params[0])
		}
		// Every checkpoint-named file left is whole: the kill never
		// leaves a torn file under a checkpoint's name.
		files, _ := d.List()
		for _, f := range files {
			if _, err := ReadFile(f.Path); err != nil {
				t.Fatalf("round %d: %s: %v", round, f.Path, err)
			}
		}
		t.Logf("round %d: killed at step %s; latest valid %s", round, strconv.FormatInt(s.Step, 10), filepath.Base(path))
	}
	if midWrite == 0 {
		t.Fatal("no kill landed while a temporary file was being written: the test did not test a torn write")
	}
}

func tempIn(dir string) bool {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if atomicfile.IsTemp(e.Name()) {
			return true
		}
	}
	return false
}
