package pipeline

import (
	"math"
	"slices"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"
)

// NormWatch tells whether the values one peer sent a stage (the
// activations of a request, the gradient of an answer) are far above what
// the other recent senders send: a finite but huge message (a sign-flipped
// ×100 gradient, scaled activations) passes every other check. It keeps the
// last HistoryLen scales of each sender's accepted messages and compares a
// new one with k times the lower median of the other senders' typical
// (median) scales. An outlier is not kept, so a sender cannot drag the
// reference up; a sender that is alone is not judged. Honest senders of one
// stage run the same averaged parameters on draws of the same data, so
// their scales differ by a small factor; k is the run's norm_k.
//
// Scale is the root mean square of the values, times the micro-batch's
// samples for a gradient (the loss is a mean over the micro-batch, so each
// sample's gradient carries a factor 1/N). It is safe for concurrent use and
// remembers at most MaxPeers senders (the least recent are forgotten).
type NormWatch struct {
	k float64

	mu      sync.Mutex
	tick    uint64 // one per Check
	senders map[peer.ID]*normHist
}

// HistoryLen is the number of a sender's scales a NormWatch keeps.
const HistoryLen = 8

// minHistory scales make a sender a reference for others.
const minHistory = 2

type normHist struct {
	vals []float64 // the latest accepted scales, oldest first
	used uint64    // tick of its last message
}

func (h *normHist) median() float64 {
	v := slices.Clone(h.vals)
	slices.Sort(v)
	return v[(len(v)-1)/2]
}

// NewNormWatch returns a watch that finds outliers above k × the median;
// k ≤ 0 turns it off (Check accepts everything).
func NewNormWatch(k float64) *NormWatch {
	return &NormWatch{k: k, senders: map[peer.ID]*normHist{}}
}

// Scale is the scale of a message's values as a NormWatch compares them:
// their root mean square, times samples for a gradient (samples > 0).
func Scale(v []float32, samples int) float64 {
	if len(v) == 0 {
		return 0
	}
	var ss float64
	for _, x := range v {
		ss += float64(x) * float64(x)
	}
	s := math.Sqrt(ss / float64(len(v)))
	if samples > 0 {
		s *= float64(samples)
	}
	return s
}

// Check reports whether scale, from p, is an outlier: more than k times
// ref, the lower median of the typical scales of the other senders with a
// history. An accepted scale joins p's history.
func (w *NormWatch) Check(p peer.ID, scale float64) (outlier bool, ref float64) {
	if w == nil || w.k <= 0 {
		return false, 0
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tick++
	var refs []float64
	for q, h := range w.senders {
		if q != p && len(h.vals) >= minHistory {
			refs = append(refs, h.median())
		}
	}
	if len(refs) > 0 {
		slices.Sort(refs)
		ref = refs[(len(refs)-1)/2]
		if ref > 0 && !(scale <= w.k*ref) { // NaN is an outlier too
			return true, ref
		}
	}
	h := w.senders[p]
	if h == nil {
		if len(w.senders) >= MaxPeers {
			w.forgetOldest()
		}
		h = &normHist{}
		w.senders[p] = h
	}
	h.used = w.tick
	h.vals = append(h.vals, scale)
	if len(h.vals) > HistoryLen {
		h.vals = h.vals[1:]
	}
	return false, ref
}

// forgetOldest drops the sender heard from least recently (w.mu held).
func (w *NormWatch) forgetOldest() {
	var oldest peer.ID
	var at uint64
	first := true
	for p, h := range w.senders {
		if first || h.used < at {
			oldest, at, first = p, h.used, false
		}
	}
	delete(w.senders, oldest)
}

// Len is the number of senders remembered.
func (w *NormWatch) Len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.senders)
}
