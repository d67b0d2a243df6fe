package averaging

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/swarm-train/swarm/internal/fvec"
)

// span is a contiguous range [Start, End) of the flat vector.
type span struct{ Start, End int }

// layout is how a group cuts the vector: member i reduces Shares[i], which is
// split into parts of at most partSize values.
type layout struct {
	Shares []span
	Parts  [][]span // per member, its parts in order
}

// maxBandwidthRatio caps a member's bandwidth in partition at this multiple
// of the median bandwidth of the group's reducers: a member that declares
// MaxBandwidth (legal, if absurd) reduces at most this many typical shares,
// not the whole vector.
const maxBandwidthRatio = 8

// partition gives each member a contiguous share proportional to its
// bandwidth, capped at maxBandwidthRatio × the reducers' lower median; clients
// (which cannot accept connections) and zero-bandwidth members get none.
// Rounding leftovers go to the members with the largest fractional
// remainders, ties to the lower index.
func partition(vecLen int, members []member, partSize int) layout {
	return partitionAligned(vecLen, members, partSize, 1)
}

// partitionAligned is partition with every share starting on a multiple of
// align (the sparse codecs' blocks): each boundary moves to the nearest
// multiple, so a share grows or shrinks by less than align.
func partitionAligned(vecLen int, members []member, partSize, align int) layout {
	n := len(members)
	bw := make([]float64, n)
	var pos []float64
	for i, m := range members {
		if !m.Client && m.Bandwidth > 0 {
			bw[i] = m.Bandwidth
			pos = append(pos, m.Bandwidth)
		}
	}
	slices.Sort(pos)
	limit := math.Inf(1)
	if len(pos) > 0 { // the lower median: half the reducers cannot raise it
		limit = maxBandwidthRatio * pos[(len(pos)-1)/2]
	}
	var total float64
	for i := range bw {
		bw[i] = min(bw[i], limit)
		total += bw[i]
	}
	sizes := make([]int, n)
	if total > 0 {
		rem := make([]float64, n)
		assigned := 0
		for i := range members {
			exact := float64(vecLen) * bw[i] / total
			sizes[i] = int(exact)
			rem[i] = exact - float64(sizes[i])
			assigned += sizes[i]
		}
		for left := vecLen - assigned; left > 0; left-- {
			best := -1
			for i := range members {
				if bw[i] > 0 && (best < 0 || rem[i] > rem[best]) {
					best = i
				}
			}
			sizes[best]++
			rem[best] = -1
		}
	}
	if align > 1 {
		prev, cum := 0, 0
		for i := range sizes {
			cum += sizes[i]
			end := min(vecLen, (cum+align/2)/align*align)
			if cum == vecLen {
				end = vecLen
			}
			sizes[i] = end - prev
			prev = end
		}
	}
	l := layout{Shares: make([]span, n), Parts: make([][]span, n)}
	off := 0
	for i := range members {
		l.Shares[i] = span{off, off + sizes[i]}
		for s := off; s < off+sizes[i]; s += partSize {
			l.Parts[i] = append(l.Parts[i], span{s, min(s+partSize, off+sizes[i])})
		}
		off += sizes[i]
	}
	return l
}

// senderStatus tracks one sender at a reducer.
type senderStatus uint8

const (
	sPending senderStatus = iota // not connected yet
	sActive
	sDone
	sDropped
)

// reducer is the accounting of one member's share in an all-reduce round: who
// contributed to which part, with which weight, who was dropped and why. It
// is a pure state machine: events come in through its methods with the time,
// and finished parts come out of Ready.
//
// Semantics: part k is final when every sender that is not dropped has
// delivered it; its value is Σ w_s x_s / Σ w_s over the senders that delivered
// part k (the reducer itself always counts). A sender is dropped when it fails,
// sends something invalid, or makes no progress for senderTimeout; a sender
// dropped after delivering part k still counts for part k. At the deadline
// every sender still outstanding is dropped and every part becomes final.
//
// With robust options (reduceOpts.buffered) the reducer keeps each sender's
// values of a part until the part is final, then first rejects senders whose
// part norm is above NormK times the median norm of the part's contributors
// (the sender is dropped for the rest of the round and listed in Outliers),
// and combines the rest with the aggregator instead of the running mean.
// Buffers go back to a free list as parts become final, so the memory held is
// about n parts per part in flight, not n shares.
type reducer struct {
	self          int
	n             int
	parts         []span // absolute ranges of this member's parts
	base          int    // start of the share
	acc           []float32
	wsum          []float64
	contrib       []bitset
	weight        []float64
	status        []senderStatus
	received      []int
	lastProgress  []time.Time
	reasons       map[int]string
	stalled       []bool // dropped by Tick for making no progress while active
	senderTimeout time.Duration
	deadline      time.Time
	finalized     int
	pending       []finalPart

	// Buffered (robust) rounds only.
	opts     reduceOpts
	aggr     *aggregator
	own      []float32     // this member's share, read until each part is final
	bufs     [][][]float32 // per part, per sender: the values received
	free     [][]float32
	outliers map[int]string // senders rejected for their norm, and the evidence
	xs       [][]float32
	ws       []float64
	norms    []float64
	partSq   [][]float64 // with NormK: per part, per sender, Σ x² of its values (taken as they arrive)
}

// reduceOpts is how a reducer combines a part.
type reduceOpts struct {
	Agg   Aggregation
	Tau   float64 // CenteredClip τ, relative to the median distance (0: default)
	Iters int     // CenteredClip iterations (0: default)
	NormK float64 // reject senders whose part norm exceeds NormK × the median (0: off)
	// Keep holds every contributor's values of every part until release,
	// for auditors to re-compute any part (audit.go); own must then stay
	// unchanged too.
	Keep bool
	// Pool supplies the accumulator and part buffers, and takes them back
	// at release (nil: allocate).
	Pool *vecPool
}

// buffered reports whether parts are kept until final (anything but the
// plain streamed mean).
func (o reduceOpts) buffered() bool { return o.Agg != AggregateMean || o.NormK > 0 || o.Keep }

// finalPart is an averaged part ready to be returned to its contributors.
type finalPart struct {
	Index        int
	Span         span
	Avg          []float32 // view into the reducer's buffer
	Contributors bitset
}

// newReducer starts a round: own is this member's values for its share (its
// own contribution), weight its weight, senders the group indices expected to
// send (normally everyone else).
//
// In a buffered round own is read (not copied) until each part is final.
func newReducer(self, n int, parts []span, own []float32, weight float64, now time.Time, senderTimeout time.Duration, deadline time.Time, opts reduceOpts) *reducer {
	r := &reducer{self: self, n: n, parts: parts, senderTimeout: senderTimeout, deadline: deadline,
		weight: make([]float64, n), status: make([]senderStatus, n), received: make([]int, n),
		lastProgress: make([]time.Time, n), reasons: map[int]string{}, stalled: make([]bool, n), opts: opts}
	if len(parts) > 0 {
		r.base = parts[0].Start
	}
	r.acc = opts.Pool.get(len(own))
	if opts.buffered() {
		r.own = own
		r.weight[self] = weight
		r.aggr = newAggregator(opts.Agg, opts.Tau, opts.Iters)
		r.bufs = make([][][]float32, len(parts))
		r.outliers = map[int]string{}
	} else {
		for i, v := range own {
			r.acc[i] = float32(weight) * v
		}
	}
	r.wsum = make([]float64, len(parts))
	r.contrib = make([]bitset, len(parts))
	for k := range parts {
		r.wsum[k] = weight
		r.contrib[k] = newBitset(n)
		r.contrib[k].set(self)
	}
	for s := range r.status {
		r.lastProgress[s] = now
	}
	r.status[self] = sDone
	r.received[self] = len(parts)
	r.advance()
	return r
}

// Header records that sender s connected with weight w.
func (r *reducer) Header(s int, w float64, now time.Time) error {
	if s < 0 || s >= r.n || s == r.self {
		return fmt.Errorf("sender index %d out of range", s)
	}
	if r.status[s] != sPending {
		return fmt.Errorf("sender %d connected twice", s)
	}
	if !validWeight(w) {
		r.Drop(s, fmt.Sprintf("invalid weight %v", w))
		return fmt.Errorf("sender %d: invalid weight %v", s, w)
	}
	r.status[s] = sActive
	r.weight[s] = w
	r.lastProgress[s] = now
	return nil
}

// Part adds sender s's values for part k, which must be its next part.
// vals must already be validated finite.
func (r *reducer) Part(s, k int, vals []float32, now time.Time) error {
	return r.part(s, k, vals, false, -1, now)
}

// buffer returns an empty buffer for one sender's values of a part, to be
// filled and handed to PartInto; nil for a streamed reducer (use Part).
func (r *reducer) buffer() []float32 {
	if !r.opts.buffered() {
		return nil
	}
	return r.take()
}

// PartInto is Part for vals in a buffer from buffer(), which the reducer
// then owns: the values are not copied again. sq is Σ vals² when the
// reader took it (readPart, for a norm-checking reducer), negative if not.
func (r *reducer) PartInto(s, k int, vals []float32, sq float64, now time.Time) error {
	return r.part(s, k, vals, true, sq, now)
}

func (r *reducer) part(s, k int, vals []float32, owned bool, knownSq float64, now time.Time) error {
	if s < 0 || s >= r.n || r.status[s] != sActive {
		return fmt.Errorf("part from sender %d that is not active", s)
	}
	if k != r.received[s] || k >= len(r.parts) {
		r.Drop(s, fmt.Sprintf("part %d out of order (want %d of %d)", k, r.received[s], len(r.parts)))
		return fmt.Errorf("sender %d: part %d out of order", s, k)
	}
	sp := r.parts[k]
	if len(vals) != sp.End-sp.Start {
		r.Drop(s, fmt.Sprintf("part %d has %d values, want %d", k, len(vals), sp.End-sp.Start))
		return fmt.Errorf("sender %d: wrong part length", s)
	}
	if r.opts.buffered() {
		if r.bufs[k] == nil {
			r.bufs[k] = make([][]float32, r.n)
		}
		buf := vals
		var sq float64
		switch {
		case owned && r.opts.NormK > 0 && knownSq >= 0:
			sq = knownSq
		case owned && r.opts.NormK > 0:
			sq = fvec.SumSquares(vals)
		case owned:
		case r.opts.NormK > 0:
			// The norm is taken in the same pass as the copy: one pass less
			// over every sender's values when the part is combined.
			buf = r.take()[:len(vals)]
			sq = copySquares(buf, vals)
		default:
			buf = append(r.take(), vals...)
		}
		if r.opts.NormK > 0 {
			if r.partSq == nil {
				r.partSq = make([][]float64, len(r.parts))
			}
			if r.partSq[k] == nil {
				r.partSq[k] = make([]float64, r.n)
			}
			r.partSq[k][s] = sq
		}
		r.bufs[k][s] = buf
	} else {
		w := float32(r.weight[s])
		acc := r.acc[sp.Start-r.base : sp.End-r.base]
		for i, v := range vals {
			acc[i] += w * v
		}
	}
	r.wsum[k] += r.weight[s]
	r.contrib[k].set(s)
	r.received[s]++
	r.lastProgress[s] = now
	if r.received[s] == len(r.parts) {
		r.status[s] = sDone
	}
	r.advance()
	return nil
}

// Drop excludes sender s from the parts it has not delivered yet.
func (r *reducer) Drop(s int, reason string) {
	if s < 0 || s >= r.n || s == r.self || r.status[s] == sDone || r.status[s] == sDropped {
		return
	}
	r.status[s] = sDropped
	r.reasons[s] = reason
	r.advance()
}

// Tick drops senders that made no progress for senderTimeout and, at the
// deadline, everyone still outstanding.
func (r *reducer) Tick(now time.Time) {
	for s, st := range r.status {
		if st != sPending && st != sActive {
			continue
		}
		switch {
		case !now.Before(r.deadline):
			r.Drop(s, "round deadline")
		case now.Sub(r.lastProgress[s]) >= r.senderTimeout:
			if st == sPending {
				r.Drop(s, "never connected")
			} else {
				r.Drop(s, fmt.Sprintf("stalled after %d of %d parts", r.received[s], len(r.parts)))
				r.stalled[s] = true
			}
		}
	}
}

func (r *reducer) advance() {
	for r.finalized < len(r.parts) {
		k := r.finalized
		for s, st := range r.status {
			if (st == sPending || st == sActive) && r.received[s] <= k {
				return
			}
		}
		sp := r.parts[k]
		acc := r.acc[sp.Start-r.base : sp.End-r.base]
		if r.opts.buffered() {
			r.combine(k)
		} else {
			inv := float32(1 / r.wsum[k])
			for i := range acc {
				acc[i] *= inv
			}
		}
		r.pending = append(r.pending, finalPart{Index: k, Span: sp, Avg: acc, Contributors: r.contrib[k]})
		r.finalized++
	}
}

// Ready returns the parts finalised since the last call.
func (r *reducer) Ready() []finalPart {
	p := r.pending
	r.pending = nil
	return p
}

// Done reports whether every part is final.
func (r *reducer) Done() bool { return r.finalized == len(r.parts) }

// Stalled reports whether sender s was dropped for making no progress after
// it connected.
func (r *reducer) Stalled(s int) bool { return s >= 0 && s < r.n && r.stalled[s] }

// Dropped returns the reasons senders were dropped, by group index.
func (r *reducer) Dropped() map[int]string { return r.reasons }

// normWeightFloor: a contributor whose weight is at most this fraction of
// the part's largest weight does not count towards the median norm that
// outliers are measured against (it is still measured against it).
const normWeightFloor = 1e-3

// combine finalises buffered part k: it rejects senders whose norm is out of
// line, aggregates the rest into acc and frees the part's buffers.
//
// The line is NormK × the median norm of the contributors that carry
// something: a part of zeros, or one of a member that brings (almost) no
// weight (a holder that had no samples in the epoch, which the trainer
// sends with weight 1e-3), moves the average by nothing and says nothing of
// what a gradient's norm is. Counted, it pulled the median down: in a group
// of three with one such member the median was the smaller of the two
// others' norms, and an honest holder whose gradient was 12× its mate's
// (late in a run, when a few misclassified samples dominate a gradient) was
// rejected in three epochs and banned by its mate (the grad-flip red-team
// run, whose banned liar kept joining its shard's rounds with no samples).
func (r *reducer) combine(k int) {
	sp := r.parts[k]
	if r.opts.NormK > 0 {
		r.norms = slices.Grow(r.norms[:0], r.n)[:r.n]
		var wmax float64
		for s := range r.n {
			if r.contrib[k].has(s) {
				if s == r.self {
					r.norms[s] = l2(r.values(k, s))
				} else {
					r.norms[s] = math.Sqrt(r.partSq[k][s])
				}
				wmax = max(wmax, r.weight[s])
			}
		}
		var ns []float64
		for s := range r.n {
			if r.contrib[k].has(s) && r.norms[s] > 0 && r.weight[s] > normWeightFloor*wmax {
				ns = append(ns, r.norms[s])
			}
		}
		med := medianF64(ns)
		for s := range r.n {
			if s == r.self || !r.contrib[k].has(s) || !(med > 0) {
				continue
			}
			if r.norms[s] > r.opts.NormK*med {
				r.reject(s, k, fmt.Sprintf("part %d norm %.4g is above %g × the group's median %.4g", k, r.norms[s], r.opts.NormK, med))
			}
		}
	}
	r.xs, r.ws = r.xs[:0], r.ws[:0]
	for s := range r.n {
		if r.contrib[k].has(s) {
			r.xs = append(r.xs, r.values(k, s))
			r.ws = append(r.ws, r.weight[s])
		}
	}
	r.aggr.combine(r.acc[sp.Start-r.base:sp.End-r.base], r.xs, r.ws)
	if r.opts.Keep {
		return
	}
	for s, b := range r.bufs[k] {
		if b != nil {
			r.free = append(r.free, b[:0])
			r.bufs[k][s] = nil
		}
	}
	r.bufs[k] = nil
}

// values is sender s's values of buffered part k (ours for self).
func (r *reducer) values(k, s int) []float32 {
	if s == r.self {
		sp := r.parts[k]
		return r.own[sp.Start-r.base : sp.End-r.base]
	}
	return r.bufs[k][s]
}

// reject drops sender s from part k on: its values of k and later parts are
// discarded and it is listed in Outliers with why.
func (r *reducer) reject(s, k int, why string) {
	r.status[s] = sDropped
	r.reasons[s] = "rejected: " + why
	r.outliers[s] = why
	for j := k; j < len(r.parts); j++ {
		r.contrib[j].unset(s)
		if r.bufs[j] != nil && r.bufs[j][s] != nil {
			r.free = append(r.free, r.bufs[j][s][:0])
			r.bufs[j][s] = nil
		}
	}
}

// take returns an empty buffer for a part's values.
func (r *reducer) take() []float32 {
	if n := len(r.free); n > 0 {
		b := r.free[n-1]
		r.free = r.free[:n-1]
		return b
	}
	return r.opts.Pool.get(longestPart(r.parts))[:0]
}

// giveBack returns a buffer from buffer() that was not handed to PartInto.
func (r *reducer) giveBack(b []float32) {
	if b != nil {
		r.free = append(r.free, b[:0])
	}
}

// release gives the reducer's buffers back to its pool: nothing may read
// its parts, kept values or accumulator afterwards.
func (r *reducer) release() {
	p := r.opts.Pool
	if p == nil {
		return
	}
	p.put(r.acc)
	for _, b := range r.free {
		p.put(b)
	}
	for _, bs := range r.bufs {
		for _, b := range bs {
			p.put(b)
		}
	}
	r.acc, r.free, r.bufs = nil, nil, nil
}

// kept returns what final part k was combined from (with reduceOpts.Keep):
// its contributors and their values and weights in group order, ours
// included. The values are the reducer's buffers: read only.
func (r *reducer) kept(k int) (contrib bitset, xs [][]float32, ws []float64) {
	for s := range r.n {
		if r.contrib[k].has(s) {
			xs = append(xs, r.values(k, s))
			ws = append(ws, r.weight[s])
		}
	}
	return r.contrib[k], xs, ws
}

// Outliers returns the senders rejected for their norm, with the evidence.
func (r *reducer) Outliers() map[int]string { return r.outliers }
