package trainer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/swarm/checkpoint"
	"github.com/swarm-train/swarm/swarm/epochs"
	"github.com/swarm-train/swarm/swarm/progress"
	"github.com/swarm-train/swarm/swarm/statesync"
)

// Durable runs. With Config.Checkpoints.Dir set, a node keeps its shard's
// state on disk (HOME/runs/<run ID>/shard-<k>/, swarm/checkpoint: atomic,
// hashed, the newest Keep kept): every EveryEpochs epochs or Every,
// whichever comes first, at a clean shutdown (after the loops stopped: the
// micro-batches in flight are abandoned, their gradient never applied), and
// before it moves to another shard. It serves those checkpoints to peers
// (statesync op 3), also of shards it no longer holds, and when it takes a
// shard that no live node holds it resumes from the newest state that it or
// its peers keep (epochs.Resume), from the initial weights only when nobody
// ever had the shard.

// Checkpoints is a node's checkpoint policy.
type Checkpoints struct {
	// Dir is the folder of the runs' checkpoints (HOME/runs; "": none are
	// written, read or served).
	Dir string
	// EveryEpochs and Every: a checkpoint when either has passed since the
	// last (0: the manifest's policy, run.CheckpointSpec.Policy).
	EveryEpochs int
	Every       time.Duration
	// Keep is how many checkpoints a shard's folder keeps (0: the manifest's).
	Keep int
}

// durable is the trainer's checkpoint state (its own lock, a leaf).
type durable struct {
	mu sync.Mutex
	// lastShard, lastEpoch and lastAt: the state the next periodic
	// checkpoint counts from (the last written or loaded).
	lastEpoch uint64
	lastAt    time.Time
	lastShard int
	// saved: a checkpoint of savedShard at savedEpoch is on disk.
	saved      bool
	savedShard int
	savedEpoch uint64
	writing    bool
	wg         sync.WaitGroup

	// readMu serialises checkpoint reads; cache holds, per shard, the
	// newest checkpoint read or written and its file, so that peers asking
	// for it (statesync op 3) do not have it read and verified again.
	readMu sync.Mutex
	cache  map[int]cachedCkpt
}

type cachedCkpt struct {
	path string
	s    *checkpoint.State
}

func (t *Trainer) checkpointsOn() bool { return t.cfg.Checkpoints.Dir != "" }

func (t *Trainer) ckptPolicy() (epochsN int, every time.Duration, keep int) {
	p := t.m.Checkpoint.Policy()
	epochsN, every, keep = p.EveryEpochs, time.Duration(p.EveryMinutes*float64(time.Minute)), p.Keep
	c := t.cfg.Checkpoints
	if c.EveryEpochs > 0 {
		epochsN = c.EveryEpochs
	}
	if c.Every > 0 {
		every = c.Every
	}
	if c.Keep > 0 {
		keep = c.Keep
	}
	return
}

// ckptDir is shard index's checkpoint folder.
func (t *Trainer) ckptDir(index int) *checkpoint.Dir {
	_, _, keep := t.ckptPolicy()
	return &checkpoint.Dir{Path: checkpoint.ShardPath(t.cfg.Checkpoints.Dir, t.runID, index), Keep: keep,
		OnSkip: func(p string, err error) {
			if errors.Is(err, checkpoint.ErrMismatch) {
				t.log.Warn("refusing a checkpoint that does not fit; left in place", "path", p, "err", err)
			} else {
				t.log.Warn("skipping damaged checkpoint", "path", p, "err", err)
			}
		}}
}

// identity is what a checkpoint of shard index must carry; sizes < 0 are
// not checked.
func (t *Trainer) identity(index, nP, nO int) (checkpoint.Identity, error) {
	layout, err := checkpoint.LayoutHash(t.m, index)
	if err != nil {
		return checkpoint.Identity{}, err
	}
	return checkpoint.Identity{RunID: t.runID, Layout: layout, Shard: index, Params: nP, OptState: nO}, nil
}

// ownCheckpoint is the newest checkpoint of shard index in this node's
// folder that fits the run, its layout and sizes (nil: none).
func (t *Trainer) ownCheckpoint(index, nP, nO int) *checkpoint.State {
	if !t.checkpointsOn() {
		return nil
	}
	id, err := t.identity(index, nP, nO)
	if err != nil {
		return nil
	}
	d := t.ckptDir(index)
	t.dur.readMu.Lock()
	defer t.dur.readMu.Unlock()
	if files, err := d.List(); err == nil && len(files) > 0 {
		if c, ok := t.dur.cache[index]; ok && c.path == files[len(files)-1].Path && c.s.Fits(id) == nil {
			return c.s
		}
	}
	s, path, err := d.LatestFitting(func(s *checkpoint.State) error { return s.Fits(id) })
	if err != nil {
		return nil
	}
	t.cacheCkptLocked(index, path, s)
	return s
}

func (t *Trainer) cacheCkptLocked(index int, path string, s *checkpoint.State) {
	if t.dur.cache == nil {
		t.dur.cache = map[int]cachedCkpt{}
	}
	t.dur.cache[index] = cachedCkpt{path: path, s: s}
}

// servedCheckpoint serves statesync op 3: this node's newest checkpoint of
// shard index, whether it holds the shard now or not.
func (t *Trainer) servedCheckpoint(index int) (*statesync.Snapshot, error) {
	if index < 0 || index >= len(t.m.Shards) {
		return nil, fmt.Errorf("the run has no shard %d", index)
	}
	s := t.ownCheckpoint(index, -1, -1)
	if s == nil {
		return nil, fmt.Errorf("no checkpoint of shard %d", index)
	}
	return ckptSnapshot(s), nil
}

func ckptSnapshot(s *checkpoint.State) *statesync.Snapshot {
	return &statesync.Snapshot{Shard: s.Shards[0].Index, Epoch: s.Epoch, Step: s.Step, Params: s.Shards[0].Params, Opt: s.Shards[0].OptState}
}

// ckptState copies the held shard's state for a checkpoint: in sync mode
// the parameters of the epoch heldEpoch names, in local mode the anchor of
// the open round. It returns nil when the node holds no trained or loaded
// state.
func (t *Trainer) ckptState() *checkpoint.State {
	t.stepMu.RLock()
	defer t.stepMu.RUnlock()
	t.mu.Lock()
	sh, idx, st, epoch := t.shard, t.index, t.state, t.heldEpoch
	if !t.sync() {
		epoch = t.epoch
	}
	t.mu.Unlock()
	if sh == nil || idx < 0 || st == progress.StateJoining {
		return nil
	}
	params := sh.Params()
	if !t.sync() && t.anchor != nil {
		params = t.anchor
	}
	layout, err := checkpoint.LayoutHash(t.m, idx)
	if err != nil {
		return nil
	}
	return &checkpoint.State{RunID: t.runID, Step: sh.StepCount(), Epoch: epoch, Layout: layout,
		Shards: []checkpoint.ShardState{{Index: idx, Params: append([]float32(nil), params...), OptState: append([]float32(nil), sh.OptState()...)}}}
}

// saveCheckpoint writes the held shard's state now (why: the log's reason).
// A state of the epoch already written is not written again.
func (t *Trainer) saveCheckpoint(why string) {
	if !t.checkpointsOn() {
		return
	}
	s := t.ckptState()
	if s == nil {
		return
	}
	t.dur.mu.Lock()
	same := t.dur.saved && t.dur.savedShard == s.Shards[0].Index && t.dur.savedEpoch == s.Epoch
	t.dur.mu.Unlock()
	if same {
		return
	}
	t.writeCheckpoint(s, why)
}

func (t *Trainer) writeCheckpoint(s *checkpoint.State, why string) {
	start := time.Now()
	path, err := t.ckptDir(s.Shards[0].Index).Save(s)
	if err != nil {
		t.log.Error("checkpoint failed; training goes on", "shard", s.Shards[0].Index, "epoch", s.Epoch, "err", err)
		return
	}
	t.dur.readMu.Lock()
	t.cacheCkptLocked(s.Shards[0].Index, path, s)
	t.dur.readMu.Unlock()
	t.dur.mu.Lock()
	t.dur.lastShard, t.dur.lastEpoch, t.dur.lastAt = s.Shards[0].Index, s.Epoch, t.clk.Now()
	t.dur.saved, t.dur.savedShard, t.dur.savedEpoch = true, s.Shards[0].Index, s.Epoch
	t.dur.mu.Unlock()
	t.log.Info("checkpoint saved", "why", why, "shard", s.Shards[0].Index, "epoch", s.Epoch, "path", path,
		"took", time.Since(start).Round(time.Millisecond))
}

// maybeCheckpoint writes a periodic checkpoint when one is due, in the
// background (the copy is taken now; one write at a time).
func (t *Trainer) maybeCheckpoint() {
	if !t.checkpointsOn() {
		return
	}
	n, every, _ := t.ckptPolicy()
	t.mu.Lock()
	epoch, idx := t.epoch, t.index
	t.mu.Unlock()
	t.dur.mu.Lock()
	due := !t.dur.writing && (t.dur.lastShard != idx || epoch >= t.dur.lastEpoch+uint64(n) || t.clk.Since(t.dur.lastAt) >= every)
	if due {
		t.dur.writing = true
		t.dur.wg.Add(1)
	}
	t.dur.mu.Unlock()
	if !due {
		return
	}
	s := t.ckptState()
	go func() {
		defer t.dur.wg.Done()
		if s != nil {
			t.writeCheckpoint(s, "periodic")
		}
		t.dur.mu.Lock()
		t.dur.writing = false
		t.dur.mu.Unlock()
	}()
}

// noteLoaded records that the shard's state of epoch came from a
// checkpoint (own: this node's, already on disk) or a sync: the next
// periodic checkpoint counts from it.
func (t *Trainer) noteLoaded(index int, epoch uint64, own bool) {
	t.dur.mu.Lock()
	t.dur.lastShard, t.dur.lastEpoch, t.dur.lastAt = index, epoch, t.clk.Now()
	t.dur.saved = own
	t.dur.savedShard, t.dur.savedEpoch = index, epoch
	t.dur.mu.Unlock()
}

// resumeSettle is how many times a node asks again when a lone peer offers
// a newer checkpoint than it can believe (epochs.FromWait) before it
// settles.
const resumeSettle = 10

// offersTimeout bounds one peer's answer to a request for its checkpoint's
// header: one that is slower is left out of this round of offers.
const offersTimeout = 3 * time.Second

// resumeRetry is the pause before a node asks for checkpoints again.
const resumeRetry = 500 * time.Millisecond

// checkpointPeers are the peers asked for their checkpoints of a shard:
// the run's peers and providers (the shard's DHT providers, looked up
// once), banned ones left out.
func (t *Trainer) checkpointPeers(providers []peer.ID) []peer.ID {
	seen := map[peer.ID]bool{t.h.ID(): true}
	var out []peer.ID
	for _, p := range append(t.cfg.RunPeers(), providers...) {
		if !seen[p] && len(out) < maxCheckpointPeers {
			seen[p] = true
			out = append(out, p)
		}
	}
	return t.trustedDonors(out)
}

// maxCheckpointPeers bounds the peers one node asks for checkpoints.
const maxCheckpointPeers = 64

// resumeState finds the state shard index starts from when no live node
// holds it: the node's own checkpoint, one its peers offer, or (nil) the
// initial weights. own is the node's newest fitting checkpoint (nil: none);
// fromOwn says the state returned is it.
func (t *Trainer) resumeState(ctx context.Context, sh engine.Shard, index int, own *checkpoint.State) (snap *statesync.Snapshot, why string, fromOwn bool, err error) {
	want := t.wantState(index, len(sh.Params()), len(sh.OptState()))
	want.Checkpoint = true
	want.Bad = t.badDonor
	var ownSnap *statesync.Snapshot
	var ownOffer *epochs.StateOffer
	if own != nil {
		ownSnap = ckptSnapshot(own)
		ownOffer = &epochs.StateOffer{Epoch: own.Epoch, Content: statesync.ContentOf(ownSnap)}
	}
	providers := t.donors(ctx, index)
	for attempt := 1; ; attempt++ {
		var offers []epochs.StateOffer
		for _, o := range statesync.Offers(ctx, t.h, t.checkpointPeers(providers), want, offersTimeout) {
			offers = append(offers, epochs.StateOffer{Peer: o.Peer.String(), Epoch: o.Epoch, Content: o.Content})
		}
		in := epochs.ResumeInput{Own: ownOffer, Offers: offers, Swarm: epochs.SwarmEpoch(t.tracker.Live(t.clk.Now())),
			MaxEpoch: uint64(t.totalEpochs()), Settle: attempt > resumeSettle}
		if len(t.trustedDonors(t.holders(index, false))) > 0 {
			return nil, "", false, errLiveHolder
		}
		c := epochs.Resume(in)
		switch c.From {
		case epochs.FromOwn:
			return ownSnap, "own checkpoint: " + c.Why, true, nil
		case epochs.FromInit:
			return nil, c.Why, false, nil
		case epochs.FromPeers:
			w := want
			w.Content = &c.Content
			snap, err := statesync.Fetch(ctx, t.h, decodePeers(c.Donors), w, 10*time.Second, nil)
			if err == nil {
				return snap, fmt.Sprintf("peers' checkpoint (%s)", c.Why), false, nil
			}
			t.log.Warn("fetching a peer's checkpoint failed; asking again", "shard", index, "err", err)
		case epochs.FromWait:
			t.log.Info("waiting before taking a checkpoint no other peer vouches for", "shard", index, "why", c.Why, "attempt", attempt)
		}
		if ctx.Err() != nil {
			return nil, "", false, ctx.Err()
		}
		if err := clock.Sleep(ctx, t.clk, resumeRetry); err != nil {
			return nil, "", false, err
		}
	}
}

// errLiveHolder: a live holder of the shard appeared while the node was
// looking for checkpoints; state sync from it instead.
var errLiveHolder = errors.New("a live holder of the shard appeared")

// resumeShard is the shard of this node's newest checkpoint (the highest
// epoch; -1: none) and that epoch.
func (t *Trainer) resumeShard() (int, uint64) {
	if !t.checkpointsOn() {
		return -1, 0
	}
	// The newest file's metadata of each shard's folder: a quick look
	// (join reads and verifies the one it takes, falling back past a
	// damaged one).
	best, epoch := -1, uint64(0)
	for i := range t.m.Shards {
		id, err := t.identity(i, -1, -1)
		if err != nil {
			continue
		}
		files, err := t.ckptDir(i).List()
		if err != nil || len(files) == 0 {
			continue
		}
		s, err := checkpoint.ReadMeta(files[len(files)-1].Path)
		if err != nil || s.RunID != id.RunID || s.Layout != id.Layout || len(s.Shards) != 1 || s.Shards[0].Index != i {
			continue
		}
		if best < 0 || s.Epoch > epoch {
			best, epoch = i, s.Epoch
		}
	}
	return best, epoch
}

// mayResumeOn reports whether a node with a checkpoint of shard index
// takes it rather than the claims' choice: unless the shard has live
// holders while another shard has none.
func (t *Trainer) mayResumeOn(index int) bool {
	recs := t.tracker.Live(t.clk.Now())
	un := epochs.Unheld(recs, len(t.m.Shards))
	return len(un) == 0 || slices.Contains(un, index)
}
