package epochs

import (
	"fmt"
	"testing"

	"github.com/swarm-train/swarm/swarm/progress"
)

// The step of epoch 5 on shard 0 takes shard 1's norms of epoch 4 (the
// round before's, published an epoch ago) and does not wait for epoch 5's;
// without epoch 4's it takes epoch 5's; with neither it waits while a
// holder of shard 1 is online no further than lag past 5, and not for a
// holder further on, one joining, one of its own shard or of no shard.
func TestClipReports(t *testing.T) {
	norms := func(r progress.Record, at map[uint64]float64) progress.Record {
		for e, v := range at {
			r.Norms = append(r.Norms, progress.EpochNorm{Epoch: e, NormSq: v})
		}
		return r
	}
	b0, b1 := online("b0", 1, 5), online("b1", 1, 5)
	joining := online("b2", 1, 5)
	joining.State = progress.StateJoining
	for _, c := range []struct {
		name    string
		recs    []progress.Record
		epoch   uint64
		lag     uint64
		known   string
		waiting bool
	}{
		{"stale and fresh", []progress.Record{norms(b0, map[uint64]float64{4: 2, 5: 3}), norms(b1, map[uint64]float64{4: 2})}, 5, 0, "map[1:[2 2]]", false},
		{"stale only", []progress.Record{norms(b0, map[uint64]float64{4: 2}), b1}, 5, 0, "map[1:[2]]", false},
		{"fresh only", []progress.Record{norms(b0, map[uint64]float64{5: 3}), b1}, 5, 0, "map[1:[3]]", false},
		{"epoch 0: fresh", []progress.Record{norms(online("b0", 1, 0), map[uint64]float64{0: 7})}, 0, 0, "map[1:[7]]", false},
		{"epoch 0: none yet", []progress.Record{online("b0", 1, 0)}, 0, 0, "map[]", true},
		{"none: wait", []progress.Record{norms(b0, map[uint64]float64{2: 1}), b1}, 5, 0, "map[]", true},
		{"none, holder past the lag", []progress.Record{online("b0", 1, 6)}, 5, 0, "map[]", false},
		{"none, holder within the lag", []progress.Record{online("b0", 1, 6)}, 5, 1, "map[]", true},
		{"none, holder joining", []progress.Record{joining}, 5, 0, "map[]", false},
		{"own shard and no shard ignored", []progress.Record{norms(online("a1", 0, 5), map[uint64]float64{4: 9}), online("x", -1, 5)}, 5, 0, "map[]", false},
	} {
		known, waiting := ClipReports(c.recs, 0, 2, c.epoch, c.lag)
		if got := fmt.Sprint(known); got != c.known || waiting != c.waiting {
			t.Errorf("%s: known %s waiting %v, want %s waiting %v", c.name, got, waiting, c.known, c.waiting)
		}
	}
}
