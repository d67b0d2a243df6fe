package epochs

import "github.com/swarm-train/swarm/swarm/progress"

// ClipReports gathers, for clipping the step of epoch on shard index (of
// shards), the squared gradient norms the other shards' holders published
// in their records (GlobalNormSq takes the robust value of each shard's),
// and says whether the trainer should wait for more.
//
// The norms ride on the averaging rounds: a holder publishes its shard's
// norm when its round of an epoch ends, which is about when this node's
// own round ends, so waiting for the other shards' norms of the same epoch
// costs a wait at every step. Instead a step uses each other shard's norm
// of the epoch before (one epoch stale, published a whole epoch ago), and
// that epoch's own only where the one before is unknown (epoch 0, a shard
// whose holders just joined). It waits only for a shard known by neither
// that has an online holder no more than lag epochs past epoch (delayed
// updates: a holder one epoch on may still have this epoch's round in
// flight).
func ClipReports(recs []progress.Record, index, shards int, epoch, lag uint64) (map[int][]float64, bool) {
	fresh, stale := map[int][]float64{}, map[int][]float64{}
	for _, r := range recs {
		if r.Shard < 0 || r.Shard == index || r.Shard >= shards {
			continue
		}
		if v, ok := r.NormAt(epoch); ok {
			fresh[r.Shard] = append(fresh[r.Shard], v)
		}
		if epoch > 0 {
			if v, ok := r.NormAt(epoch - 1); ok {
				stale[r.Shard] = append(stale[r.Shard], v)
			}
		}
	}
	known := stale
	for s, vs := range fresh {
		if _, ok := known[s]; !ok {
			known[s] = vs
		}
	}
	waiting := false
	for _, r := range recs {
		if r.Shard >= 0 && r.Shard != index && r.Shard < shards && r.State == progress.StateOnline && r.Epoch <= epoch+lag {
			if _, ok := known[r.Shard]; !ok {
				waiting = true
			}
		}
	}
	return known, waiting
}
