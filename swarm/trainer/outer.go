package trainer

import (
	"encoding/binary"

	"lukechampine.com/blake3"

	"github.com/swarm-train/swarm/internal/fvec"
)

// The outer optimizer of local mode (averaging.mode local, DiLoCo), as pure
// functions: no engine, lock or network here; local.go averages the deltas
// with the shard's holders and applies what these return.
//
// Each holder trains its own copy for local_steps inner steps, starting from
// the anchor: the parameters that the last outer step left, the same on
// every holder. Its delta is how far it moved, anchor − parameters; the
// holders average their deltas, and the outer step treats the mean delta as
// a gradient of the anchor, with SGD and Nesterov momentum:
//
//	momentum' = μ·momentum + Δ
//	anchor'   = anchor − lr·(Δ + μ·momentum')
//
// With lr 1 and μ 0 this is plain parameter averaging: anchor' = anchor − Δ,
// the holders' mean parameters. The new parameters are the new anchor, plus
// (averaging.overlap) the progress the holder made while the deltas were
// averaged.

// outerDelta is how far params moved from anchor: anchor − params.
func outerDelta(anchor, params []float32) []float32 {
	delta := make([]float32, len(params))
	for i := range params {
		delta[i] = anchor[i] - params[i]
	}
	return delta
}

// nesterov is one outer step: from the anchor, the momentum and the
// averaged delta, the new anchor and momentum (new slices; the arguments
// are not changed).
func nesterov(anchor, momentum, delta []float32, lr, mu float32) (newAnchor, newMomentum []float32) {
	newAnchor = make([]float32, len(anchor))
	newMomentum = make([]float32, len(momentum))
	for i := range anchor {
		newMomentum[i] = mu*momentum[i] + delta[i]
		newAnchor[i] = anchor[i] - lr*(delta[i]+mu*newMomentum[i])
	}
	return newAnchor, newMomentum
}

// outerParams are a holder's parameters after an outer step: the new
// anchor, plus params − taken, the progress since the delta was taken from
// taken (nil: none carries over; the run's last round ends on the anchor).
func outerParams(anchor, params, taken []float32) []float32 {
	out := make([]float32, len(anchor))
	for i := range anchor {
		if taken != nil {
			out[i] = anchor[i] + (params[i] - taken[i])
		} else {
			out[i] = anchor[i]
		}
	}
	return out
}

// outerFingerprint is a fingerprint of the outer state (anchor, momentum),
// the same on every machine for the same values to the bit (little-endian
// float32s, hashed with their lengths), never 0 (a record's "none").
// Holders that took every outer step together hold equal states;
// progress.Record.Outer carries it so that they can tell.
func outerFingerprint(anchor, momentum []float32) uint64 {
	h := blake3.New(32, nil)
	var n [8]byte
	for _, v := range [][]float32{anchor, momentum} {
		binary.LittleEndian.PutUint64(n[:], uint64(len(v)))
		_, _ = h.Write(n[:])
		_ = fvec.WriteLE(h, v)
	}
	var d [32]byte
	h.Sum(d[:0])
	return binary.LittleEndian.Uint64(d[:8]) | 1
}
