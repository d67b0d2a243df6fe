package checkpoint

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/swarm-train/swarm/spec/run"
)

// A swarm node keeps one folder of checkpoints per shard it held, under
// its home: HOME/runs/<run ID>/shard-<k>/ (ShardPath). Each file holds one
// shard's state (State.Shards has one entry) with the run ID, the swarm's
// epoch and the layout hash, which Fits checks before the node loads it.

// ShardPath is the folder of shard index's checkpoints of run runID under
// runsDir (HOME/runs).
func ShardPath(runsDir, runID string, index int) string {
	return filepath.Join(runsDir, runID, fmt.Sprintf("shard-%d", index))
}

// LayoutHash names shard index's layout in m: a SHA-256 over its tensors'
// names, shapes and offsets, so a checkpoint of another cut of the model
// (another engine's layout, other shard bounds) is refused.
func LayoutHash(m *run.Manifest, index int) (string, error) {
	layout, err := m.Layout(index)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "shard %d of %d\n", index, len(m.Shards))
	for _, t := range layout {
		fmt.Fprintf(h, "%s %v %d\n", t.Name, t.Shape, t.Offset)
	}
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

// ErrMismatch is a checkpoint that verifies but belongs to another run,
// layout or shard (or has other sizes): MismatchError names the field.
var ErrMismatch = errors.New("checkpoint: does not fit")

// MismatchError names the field of a checkpoint that does not fit.
type MismatchError struct {
	Field     string // run_id, layout, shard, params, opt_state
	Got, Want string
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("checkpoint of another %s: %s is %s, want %s", e.Field, e.Field, e.Got, e.Want)
}

func (e *MismatchError) Unwrap() error { return ErrMismatch }

// Identity is what a node's checkpoint of one shard must carry (sizes < 0:
// any).
type Identity struct {
	RunID    string
	Layout   string
	Shard    int
	Params   int
	OptState int
}

// Fits checks that s is a node checkpoint of id: one shard, of the same
// run, layout and shard, with the layout's sizes. The error names the first
// field that differs.
func (s *State) Fits(id Identity) error {
	mis := func(field string, got, want any) error {
		return &MismatchError{Field: field, Got: fmt.Sprint(got), Want: fmt.Sprint(want)}
	}
	switch {
	case s.RunID != id.RunID:
		return mis("run_id", s.RunID, id.RunID)
	case s.Layout != id.Layout:
		return mis("layout", s.Layout, id.Layout)
	case len(s.Shards) != 1:
		return mis("shards", len(s.Shards), 1)
	case s.Shards[0].Index != id.Shard:
		return mis("shard", s.Shards[0].Index, id.Shard)
	case id.Params >= 0 && len(s.Shards[0].Params) != id.Params:
		return mis("params", len(s.Shards[0].Params), id.Params)
	case id.OptState >= 0 && len(s.Shards[0].OptState) != id.OptState:
		return mis("opt_state", len(s.Shards[0].OptState), id.OptState)
	}
	return nil
}

// Assembled is a whole model gathered from a node home's shard folders.
type Assembled struct {
	Params [][]float32 // shard i's parameters
	Paths  []string    // the checkpoint each came from
	Epochs []uint64    // the swarm epoch of each
	Step   int64       // the largest step among them
}

// AssembleNodeShards gathers the newest checkpoint of every shard of m that
// fits it (run, layout, shard, sizes) from the runs folders given (HOME/runs
// of one or more nodes: a node keeps the shards it held there, so a model no
// single node held is assembled from several homes). Of a shard found in
// several folders, the checkpoint of the latest epoch is taken. A shard
// found in none is an error naming its folders. Checkpoints passed over are
// reported to onSkip.
func AssembleNodeShards(runsDirs []string, m *run.Manifest, onSkip func(string, error)) (*Assembled, error) {
	if len(runsDirs) == 0 {
		return nil, errors.New("checkpoint: no node home to assemble the shards from")
	}
	id, err := m.ID()
	if err != nil {
		return nil, err
	}
	a := &Assembled{}
	for i := range m.Shards {
		layout, err := LayoutHash(m, i)
		if err != nil {
			return nil, err
		}
		nP, err := m.NumParams(i)
		if err != nil {
			return nil, err
		}
		want := Identity{RunID: id.String(), Layout: layout, Shard: i, Params: nP, OptState: -1}
		var best *State
		var bestPath string
		var errs []error
		for _, runs := range runsDirs {
			d := &Dir{Path: ShardPath(runs, id.String(), i), OnSkip: onSkip}
			s, path, err := d.LatestFitting(func(s *State) error { return s.Fits(want) })
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if best == nil || s.Epoch > best.Epoch || (s.Epoch == best.Epoch && s.Step > best.Step) {
				best, bestPath = s, path
			}
		}
		if best == nil {
			return nil, fmt.Errorf("shard %d of %d: %w", i, len(m.Shards), errors.Join(errs...))
		}
		a.Params = append(a.Params, best.Shards[0].Params)
		a.Paths = append(a.Paths, bestPath)
		a.Epochs = append(a.Epochs, best.Epoch)
		a.Step = max(a.Step, best.Step)
	}
	return a, nil
}
