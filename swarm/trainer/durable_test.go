package trainer

import (
	"bytes"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/swarm-train/swarm/internal/testutil"
	"github.com/swarm-train/swarm/swarm/checkpoint"
	"github.com/swarm-train/swarm/swarm/progress"
)

// halt stops trainer i as a clean shutdown does (its Run ends, then Close
// writes the shutdown checkpoint); its host stays up.
func (s *swarmT) halt(i int) {
	s.stop[i]()
	err := <-s.done[i]
	s.done[i] <- err // for the cleanup
	s.tr[i].Close()
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestOrphanShardFromPeersCheckpoint: the only holder of shard 1 stops
// (its shutdown checkpoint stays in its home); the first shard's holder
// waits, its status showing shard 1 with no holder and the epoch it was
// last seen at. The stopped node comes back on shard 0 and keeps its old
// shard's checkpoint; a new node without checkpoints takes shard 1 and
// restores that checkpoint from it (state sync op 3), not the initial
// weights, and the swarm trains on from the checkpoint's epoch.
func TestOrphanShardFromPeersCheckpoint(t *testing.T) {
	m := smallMNIST(2, 32, 100000)
	s := &swarmT{t: t, m: m}
	dirB := t.TempDir()
	ck := func(c *Config) { c.Checkpoints = Checkpoints{Dir: dirB, EveryEpochs: 5} }
	a := s.add(0, nil)
	s.add(1, ck)
	testutil.Eventually(t, 2*time.Minute, testutil.Says("epoch 15"), func() bool { return a.Status().Epoch >= 15 })
	hB := s.hosts[1]
	s.halt(1)
	d := &checkpoint.Dir{Path: checkpoint.ShardPath(dirB, s.tr[1].runID, 1)}
	saved, _, err := d.Latest()
	if err != nil {
		t.Fatalf("no shutdown checkpoint: %v", err)
	}
	var held Status
	testutil.Eventually(t, 30*time.Second, testutil.Says("shard 1 shown without a holder"), func() bool {
		held = a.Status()
		sh := held.Shards[1]
		return sh.NoHolder && sh.LastSeenEpoch != nil
	})
	if last := *held.Shards[1].LastSeenEpoch; last+1 < saved.Epoch || last > saved.Epoch+1 {
		t.Errorf("shard 1 last seen at epoch %d, its holder's checkpoint is of epoch %d", last, saved.Epoch)
	}
	if held.Epoch > saved.Epoch+1 {
		t.Errorf("the first shard went on to epoch %d without a holder of shard 1 (checkpoint at %d)", held.Epoch, saved.Epoch)
	}
	t.Logf("shard 1 without a holder: last seen at epoch %d, checkpoint of epoch %d, first shard at %d", *held.Shards[1].LastSeenEpoch, saved.Epoch, held.Epoch)

	s.addOn(hB, 0, ck) // back, on the other shard: serves its checkpoint of shard 1
	var logs syncBuffer
	c := s.add(1, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	testutil.Eventually(t, time.Minute, testutil.Says("the new node online on shard 1"), func() bool {
		st := c.Status()
		return st.State == progress.StateOnline && st.Shard == 1
	})
	out := logs.String()
	if strings.Contains(out, "initial weights") || !strings.Contains(out, "restored the shard from a checkpoint") || !strings.Contains(out, "peers' checkpoint") {
		t.Fatalf("the new holder of shard 1 did not restore its peer's checkpoint:\n%s", out)
	}
	if !strings.Contains(out, "epoch="+itoa(saved.Epoch)) {
		t.Errorf("restored another epoch than the checkpoint's %d:\n%s", saved.Epoch, out)
	}
	testutil.Eventually(t, time.Minute, testutil.Says("training to go on past the checkpoint"), func() bool {
		return c.Status().Epoch >= saved.Epoch+3 && a.Status().Epoch >= saved.Epoch+3
	})
}

func itoa(e uint64) string { return strconv.FormatUint(e, 10) }
