package averaging

import (
	"cmp"
	"fmt"
	"math"
	"slices"
)

// Robust aggregation. A reducer that averages with the plain weighted mean
// hands any one sender the whole result: a part scaled by 100 moves the mean
// by 100/n times the honest values. With Aggregation set, a reducer keeps
// every contributor's values of a part until the part is final and combines
// them with an aggregator that a minority of senders cannot drag far:
//
//   - CenteredClip (Karimireddy et al. 2021, used by BTARD-SGD): iterate
//     v ← v + Σ_i c_i·(x_i − v), c_i = w_i·min(1, τ/‖x_i − v‖) / Σ_j w_j,
//     so that each sender moves v by at most its weight share times τ,
//     starting from the coordinate-wise median, which a minority cannot
//     drag, until v stops moving or after ClipIters passes. When no input
//     lies beyond τ of the median nor of the weighted mean, the mean is the
//     fixed point and the answer, found in the same single pass over the
//     inputs that computes the median: what an honest round pays.
//   - Trimmed mean: per coordinate, drop the b lowest and b highest values
//     (b = ⌊n/4⌋, at least 1 from 3 inputs on) and take the weighted mean
//     of the rest. One sort per coordinate whether or not anybody lies; it
//     throws away honest values even when nobody lies.
//
// τ is relative: ClipTau times the median distance of the inputs from the
// coordinate median. The honest spread of gradients shrinks by orders of
// magnitude over a run (and differs between layers, hence between parts), so
// any fixed τ is either so small late in training that it clips honest
// gradients toward the start (biasing the step) or so large early that it
// clips nothing; the median distance follows the spread of the majority,
// part by part, and a minority cannot inflate it. A liar moves the result by
// at most its weight share times τ, so τ trades robustness against bias and
// cost. The default ClipTau = 2 leaves honest inputs unclipped unless one is
// twice as far from the mean as the median input (a peer with a batch 4×
// smaller than most), so without attackers the result is the weighted mean
// and comes from the fast path below; with 1 in 4 liars the tests find it
// within 1.15 honest radii (the median distance of honest inputs from their
// mean) of the honest mean. ClipTau = 1 tightens that to 0.6 radii but clips
// half the honest inputs a little, which costs the iteration every round.
//
// Weights: every weight is first capped at the median weight of the part's
// contributors, so a sender that declares the run's whole target batch
// (MaxWeight, the most it may) weighs no more than a typical member. Honest
// gradients estimate the same thing, so the cap costs variance, not bias.
//
// All arithmetic on values is in float64 and every new value is a convex
// combination of finite inputs, so finite inputs give finite outputs.

// Aggregation is how a reducer combines the senders' values of a part.
type Aggregation uint8

const (
	AggregateMean         Aggregation = iota // weighted mean, streamed (no buffering)
	AggregateCenteredClip                    // CenteredClip from the coordinate median
	AggregateTrimmedMean                     // coordinate-wise trimmed weighted mean
)

// Defaults of the CenteredClip parameters.
const (
	DefaultClipTau   = 2.0
	DefaultClipIters = 5
	MaxClipIters     = 100
	maxClipTau       = 1e6
	maxNormK         = 1e12
)

func (a Aggregation) String() string {
	switch a {
	case AggregateMean:
		return "mean"
	case AggregateCenteredClip:
		return "centered-clip"
	case AggregateTrimmedMean:
		return "trimmed-mean"
	}
	return fmt.Sprintf("aggregation(%d)", uint8(a))
}

// ParseAggregation maps "mean" (or ""), "centered-clip" and "trimmed-mean"
// to an Aggregation.
func ParseAggregation(s string) (Aggregation, error) {
	switch s {
	case "", "mean":
		return AggregateMean, nil
	case "centered-clip":
		return AggregateCenteredClip, nil
	case "trimmed-mean":
		return AggregateTrimmedMean, nil
	}
	return 0, fmt.Errorf("%w: unknown aggregation %q (want mean, centered-clip or trimmed-mean)", ErrBadInput, s)
}

// AggregationNamed is ParseAggregation for a name already validated (a run
// manifest's averaging.aggregation): a name it does not know gives
// AggregateMean.
func AggregationNamed(s string) Aggregation {
	a, _ := ParseAggregation(s)
	return a
}

func (a Aggregation) valid() bool { return a <= AggregateTrimmedMean }

// aggStats reports one combination (for tests and logs).
type aggStats struct {
	Iters   int     // CenteredClip iterations run
	Clipped int     // inputs clipped in the last iteration
	Tau     float64 // the absolute τ used
}

// aggregator combines parts; it holds scratch space reused across parts.
type aggregator struct {
	kind  Aggregation
	tau   float64 // relative to the median distance
	iters int

	col   []float32
	pairs []wv
	w     []float64
	d2    []float64 // squared distances from the current value
	e2    []float64 // squared distances from the weighted mean
	dist  []float64
	c     []float64
	m     []float32   // the weighted mean of the part
	net   [][2]uint16 // sorting network for the median of n
	netN  int
}

type wv struct {
	v float32
	w float64
}

func newAggregator(kind Aggregation, tau float64, iters int) *aggregator {
	if tau <= 0 {
		tau = DefaultClipTau
	}
	if iters <= 0 {
		iters = DefaultClipIters
	}
	return &aggregator{kind: kind, tau: tau, iters: iters}
}

// combine writes into out the aggregate of xs (each of len(out), finite)
// with weights ws (finite, > 0). out must not alias any of xs.
func (g *aggregator) combine(out []float32, xs [][]float32, ws []float64) aggStats {
	n := len(xs)
	switch n {
	case 0:
		return aggStats{}
	case 1:
		copy(out, xs[0])
		return aggStats{}
	}
	if g.kind == AggregateMean {
		g.w = append(g.w[:0], ws...)
	} else {
		g.capWeights(ws)
	}
	switch g.kind {
	case AggregateCenteredClip:
		return g.centeredClip(out, xs)
	case AggregateTrimmedMean:
		g.trimmedMean(out, xs)
	default:
		g.mean(out, xs)
	}
	return aggStats{}
}

// capWeights sets g.w to ws capped at their median.
func (g *aggregator) capWeights(ws []float64) {
	g.w = append(g.w[:0], ws...)
	med := medianF64(slices.Clone(ws))
	for i := range g.w {
		g.w[i] = min(g.w[i], med)
	}
}

func (g *aggregator) mean(out []float32, xs [][]float32) {
	var W float64
	for _, w := range g.w {
		W += w
	}
	for j := range out {
		var s float64
		for i, x := range xs {
			s += g.w[i] * float64(x[j])
		}
		out[j] = float32(s / W)
	}
}

// trimCount is how many values a trimmed mean drops at each end of n.
func trimCount(n int) int {
	if n < 3 {
		return 0
	}
	return min(max(1, n/4), (n-1)/2)
}

func (g *aggregator) trimmedMean(out []float32, xs [][]float32) {
	n := len(xs)
	b := trimCount(n)
	g.pairs = slices.Grow(g.pairs[:0], n)[:n]
	p := g.pairs
	for j := range out {
		for i, x := range xs {
			p[i] = wv{x[j], g.w[i]}
		}
		if n <= 16 { // insertion sort: n is a group size
			for i := 1; i < n; i++ {
				for k := i; k > 0 && p[k].v < p[k-1].v; k-- {
					p[k], p[k-1] = p[k-1], p[k]
				}
			}
		} else {
			slices.SortFunc(p, func(a, b wv) int { return cmp.Compare(a.v, b.v) })
		}
		var s, W float64
		for _, e := range p[b : n-b] {
			s += e.w * float64(e.v)
			W += e.w
		}
		out[j] = float32(s / W)
	}
}

func (g *aggregator) centeredClip(out []float32, xs [][]float32) aggStats {
	n := len(xs)
	g.d2 = slices.Grow(g.d2[:0], n)[:n]
	g.e2 = slices.Grow(g.e2[:0], n)[:n]
	g.dist = slices.Grow(g.dist[:0], n)[:n]
	g.c = slices.Grow(g.c[:0], n)[:n]
	g.m = slices.Grow(g.m[:0], len(out))[:len(out)]
	var W float64
	for _, w := range g.w {
		W += w
	}
	// The coordinate-wise median (the start), the weighted mean, and every
	// input's distance to both: what an honest round pays.
	if n <= 8 {
		medians8(out, xs)
	} else {
		g.prepareMedian(n)
		for j := range out {
			out[j] = g.medianAt(xs, j)
		}
	}
	for j := range g.m {
		var s float64
		for i, x := range xs {
			s += g.w[i] * float64(x[j])
		}
		g.m[j] = float32(s / W)
	}
	for i, x := range xs {
		g.d2[i], g.e2[i] = sqDist2(x, out, g.m)
	}
	g.sqrtDist()
	tau := g.tau * medianF64(slices.Clone(g.dist))
	st := aggStats{Tau: tau}
	if !(tau > 0) || math.IsInf(tau, 0) {
		// Half the inputs sit on the median (or τ overflowed): keep it.
		return st
	}
	if !g.anyBeyond(tau) {
		// Nobody is clipped at the median, so the first step lands on the
		// weighted mean; if nobody is clipped there either, it is the
		// fixed point. What an honest round pays: this one pass.
		for i, e := range g.e2 {
			g.dist[i] = math.Sqrt(e)
		}
		if !g.anyBeyond(tau) {
			copy(out, g.m)
			st.Iters = 1
			return st
		}
		g.sqrtDist() // back to the distances from the median
	}
	for st.Iters < g.iters {
		st.Iters++
		clipped, keep := g.coefficients(tau, W)
		st.Clipped = clipped
		clear(g.d2)
		var moved float64
		for j := range out {
			v := float64(out[j])
			nv := keep * v
			for i, x := range xs {
				nv += g.c[i] * float64(x[j])
			}
			f := float32(nv)
			out[j] = f
			dv := float64(f) - v
			moved += dv * dv
			for i, x := range xs {
				d := float64(x[j]) - float64(f)
				g.d2[i] += d * d
			}
		}
		g.sqrtDist()
		if clipped == 0 && !g.anyBeyond(tau) {
			break // v is the weighted mean and clips nobody: a fixed point
		}
		if math.Sqrt(moved) <= 1e-6*tau {
			break
		}
	}
	return st
}

// coefficients sets g.c for the distances in g.dist and returns how many
// inputs are clipped and the weight left on the current value.
func (g *aggregator) coefficients(tau, W float64) (clipped int, keep float64) {
	var sum float64
	for i, d := range g.dist {
		f := 1.0
		if d > tau {
			f = tau / d
			clipped++
		}
		g.c[i] = g.w[i] * f / W
		sum += g.c[i]
	}
	if clipped == 0 {
		return 0, 0 // exactly the weighted mean
	}
	return clipped, max(0, 1-sum)
}

func (g *aggregator) sqrtDist() {
	for i, d := range g.d2 {
		g.dist[i] = math.Sqrt(d)
	}
}

func (g *aggregator) anyBeyond(tau float64) bool {
	for _, d := range g.dist {
		if d > tau {
			return true
		}
	}
	return false
}

// medianF32 returns the median of c (the mean of the middle two for even
// length), reordering c.
func medianF32(c []float32) float32 {
	n := len(c)
	if n <= 16 {
		for i := 1; i < n; i++ {
			for k := i; k > 0 && c[k] < c[k-1]; k-- {
				c[k], c[k-1] = c[k-1], c[k]
			}
		}
	} else {
		slices.Sort(c)
	}
	if n%2 == 1 {
		return c[n/2]
	}
	return float32((float64(c[n/2-1]) + float64(c[n/2])) / 2)
}

// medianF64 returns the median of c, reordering c.
func medianF64(c []float64) float64 {
	n := len(c)
	if n == 0 {
		return 0
	}
	slices.Sort(c)
	if n%2 == 1 {
		return c[n/2]
	}
	return (c[n/2-1] + c[n/2]) / 2
}

// l2 is the Euclidean norm of x.
func l2(x []float32) float64 {
	var s float64
	for _, v := range x {
		s += float64(v) * float64(v)
	}
	return math.Sqrt(s)
}

// prepareMedian readies medianAt for n inputs: a sorting network of
// min/max exchanges (no data-dependent branches, which is what makes a
// median of a few values per coordinate cheap) for up to 32 inputs.
func (g *aggregator) prepareMedian(n int) {
	p := 1
	for p < n {
		p *= 2
	}
	g.col = slices.Grow(g.col[:0], p)[:p]
	if g.netN == n || n > 32 {
		return
	}
	g.netN, g.net = n, oddEvenMergeSort(p)
}

// medianAt is the median of the inputs' values at coordinate j.
func (g *aggregator) medianAt(xs [][]float32, j int) float32 {
	n, c := len(xs), g.col
	for i, x := range xs {
		c[i] = x[j]
	}
	if n > 32 {
		return medianF32(c[:n])
	}
	for i := n; i < len(c); i++ {
		c[i] = float32(math.Inf(1)) // padding sorts last
	}
	for _, e := range g.net {
		a, b := c[e[0]], c[e[1]]
		c[e[0]], c[e[1]] = min(a, b), max(a, b)
	}
	if n%2 == 1 {
		return c[n/2]
	}
	return float32((float64(c[n/2-1]) + float64(c[n/2])) / 2)
}

// oddEvenMergeSort is Batcher's sorting network for p (a power of two)
// values, as compare-exchange pairs (lower index gets the minimum).
func oddEvenMergeSort(p int) [][2]uint16 {
	var net [][2]uint16
	for s := 1; s < p; s *= 2 { // merge sorted runs of length s
		for k := s; k >= 1; k /= 2 {
			for j := k % s; j+k < p; j += 2 * k {
				for i := 0; i < k && i+j+k < p; i++ {
					if (i+j)/(2*s) == (i+j+k)/(2*s) {
						net = append(net, [2]uint16{uint16(i + j), uint16(i + j + k)})
					}
				}
			}
		}
	}
	return net
}

// medians8 writes the coordinate-wise median of 2 to 8 inputs into out:
// Batcher's network for 8 values (oddEvenMergeSort(8)) unrolled on locals,
// missing inputs padded with +Inf.
func medians8(out []float32, xs [][]float32) {
	n := len(xs)
	var in [8][]float32
	inf := float32(math.Inf(1))
	pad := make([]float32, len(out))
	for i := range in {
		if i < n {
			in[i] = xs[i][:len(out)]
		} else {
			if i == n {
				for j := range pad {
					pad[j] = inf
				}
			}
			in[i] = pad
		}
	}
	for j := range out {
		a, b, c, d, e, f, g, h := in[0][j], in[1][j], in[2][j], in[3][j], in[4][j], in[5][j], in[6][j], in[7][j]
		a, b = min(a, b), max(a, b)
		c, d = min(c, d), max(c, d)
		e, f = min(e, f), max(e, f)
		g, h = min(g, h), max(g, h)
		a, c = min(a, c), max(a, c)
		b, d = min(b, d), max(b, d)
		e, g = min(e, g), max(e, g)
		f, h = min(f, h), max(f, h)
		b, c = min(b, c), max(b, c)
		f, g = min(f, g), max(f, g)
		a, e = min(a, e), max(a, e)
		b, f = min(b, f), max(b, f)
		c, g = min(c, g), max(c, g)
		d, h = min(d, h), max(d, h)
		c, e = min(c, e), max(c, e)
		d, f = min(d, f), max(d, f)
		b, c = min(b, c), max(b, c)
		d, e = min(d, e), max(d, e)
		f, g = min(f, g), max(f, g)
		var m float32
		switch n {
		case 2:
			m = float32((float64(a) + float64(b)) / 2)
		case 3:
			m = b
		case 4:
			m = float32((float64(b) + float64(c)) / 2)
		case 5:
			m = c
		case 6:
			m = float32((float64(c) + float64(d)) / 2)
		case 7:
			m = d
		default:
			m = float32((float64(d) + float64(e)) / 2)
		}
		_, _, _, _ = e, f, g, h
		out[j] = m
	}
}

// sqDist2 returns ‖x − a‖² and ‖x − b‖², in float64 with four accumulators
// each (a single running sum is bound by the latency of its additions).
func sqDist2(x, a, b []float32) (float64, float64) {
	n := len(a)
	x, b = x[:n], b[:n]
	var a0, a1, a2, a3, b0, b1, b2, b3 float64
	j := 0
	for ; j+4 <= n; j += 4 {
		x0, x1, x2, x3 := float64(x[j]), float64(x[j+1]), float64(x[j+2]), float64(x[j+3])
		d0, d1, d2, d3 := x0-float64(a[j]), x1-float64(a[j+1]), x2-float64(a[j+2]), x3-float64(a[j+3])
		e0, e1, e2, e3 := x0-float64(b[j]), x1-float64(b[j+1]), x2-float64(b[j+2]), x3-float64(b[j+3])
		a0 += d0 * d0
		a1 += d1 * d1
		a2 += d2 * d2
		a3 += d3 * d3
		b0 += e0 * e0
		b1 += e1 * e1
		b2 += e2 * e2
		b3 += e3 * e3
	}
	for ; j < n; j++ {
		d, e := float64(x[j])-float64(a[j]), float64(x[j])-float64(b[j])
		a0 += d * d
		b0 += e * e
	}
	return (a0 + a1) + (a2 + a3), (b0 + b1) + (b2 + b3)
}
