package averaging

import (
	"fmt"
	"math"
	"slices"

	"github.com/swarm-train/swarm/internal/fvec"
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
//   - Trimmed mean (Yin et al. 2018): per coordinate, drop the b lowest and
//     b highest values (b = ⌊n/4⌋, at least 1 from 3 inputs on) and average
//     the rest, unweighted. One sort per coordinate whether or not anybody
//     lies (about twice the mean's cost); it throws away honest values and
//     their weights even when nobody lies.
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
//
// The result is a function of the inputs, their order and weights, bit for
// bit, on every platform: an auditor re-computes a reducer's part and
// compares hashes (audit.go). Go may fuse x*y + z into one FMA instruction
// (arm64, amd64 with GOAMD64=v3), which rounds once instead of twice; every
// product that is then added is therefore written float64(x*y), an explicit
// conversion, which the language defines to round and so forbids the fusion.

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

	col     []float32
	w       []float64
	d2      []float64 // squared distances from the current value
	sd2     []float64 // sampledMedianDist's sums, and their stride
	sStride int
	dist    []float64
	c       []float64
	m       []float32   // the weighted mean of the part
	net     [][2]uint16 // sorting network for the median of n
	netN    int
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
			s += float64(g.w[i] * float64(x[j]))
		}
		out[j] = float32(s / W)
	}
}

// meanSqDist writes the weighted mean of xs (total weight W) into out, as
// mean does, and sets g.d2[i] to the squared distance of xs[i] from it,
// differences taken in float32 (a difference whose square overflows gives
// +Inf, which puts that input beyond any τ), for the fast path of
// CenteredClip. It goes over the inputs once, in blocks small enough that
// the distances re-read each block's values from the L1 cache.
//
// With sample it also takes, in the same pass, the sums of
// sampledMedianDist (into g.sd2, in the same order: the same bits), so
// that the inputs are read from memory once, not twice; sampledDist
// finishes them.
func (g *aggregator) meanSqDist(out []float32, xs [][]float32, W float64, sample bool) {
	const block = 512
	clear(g.d2)
	stride, next := 0, 0
	var lo, hi int
	if sample {
		stride, lo, hi = g.startSample(xs)
	}
	for b := 0; b < len(out); b += block {
		e := min(b+block, len(out))
		m := out[b:e]
		if len(xs) <= 8 {
			g.meanDistBlock(m, xs, b, W)
		} else {
			g.meanBlock(m, xs, b, W)
			for i, x := range xs {
				g.d2[i] += sqDist32(x[b:e], m)
			}
		}
		// The sample last: the block's values are in the cache now, and
		// the sums are taken in the same order of coordinates either way.
		for ; sample && next < e; next += stride {
			g.sampleAt(xs, next, lo, hi)
		}
	}
}

// meanBlock writes into m the weighted mean of the inputs' values from
// offset b (mean8's sums for 8 inputs, a loop from zero for others).
func (g *aggregator) meanBlock(m []float32, xs [][]float32, b int, W float64) {
	if len(xs) == 8 {
		mean8(m, xs, g.w, b, W)
		return
	}
	for j := range m {
		var s float64
		for i, x := range xs {
			s += float64(g.w[i] * float64(x[b+j]))
		}
		m[j] = float32(s / W)
	}
}

// meanDistBlock is one block of meanSqDist for up to 8 inputs: meanBlock,
// and each input's sqDist32 from the mean added to g.d2. The assembly
// kernel (meandist_amd64.s, where the CPU has AVX2) does four coordinates
// at a time with the same operations in the same order, each of sqDist32's
// four sums one lane, so the bits are the loops' (TestMeanDistKernel):
// auditors on other machines must get them too.
func (g *aggregator) meanDistBlock(m []float32, xs [][]float32, b int, W float64) {
	var acc [8][4]float64
	k := meanDistAsm(m, xs, g.w, b, W, &acc)
	g.meanBlock(m[k:], xs, b+k, W) // all of it, or the last len(m) mod 4 values
	for i, x := range xs {
		if k == 0 {
			g.d2[i] += sqDist32(x[b:b+len(m)], m)
			continue
		}
		s := acc[i]
		for j := k; j < len(m); j++ {
			d := x[b+j] - m[j]
			s[0] += float64(d * d)
		}
		g.d2[i] += (s[0] + s[1]) + (s[2] + s[3])
	}
}

// mean8 writes into m the weighted mean of 8 inputs' values from offset b:
// the same sums, in the same order, as the loop of meanSqDist.
func mean8(m []float32, xs [][]float32, w []float64, b int, W float64) {
	n := len(m)
	x0, x1, x2, x3 := xs[0][b:b+n], xs[1][b:b+n], xs[2][b:b+n], xs[3][b:b+n]
	x4, x5, x6, x7 := xs[4][b:b+n], xs[5][b:b+n], xs[6][b:b+n], xs[7][b:b+n]
	w = w[:8]
	for j := range m {
		s := float64(w[0] * float64(x0[j]))
		s += float64(w[1] * float64(x1[j]))
		s += float64(w[2] * float64(x2[j]))
		s += float64(w[3] * float64(x3[j]))
		s += float64(w[4] * float64(x4[j]))
		s += float64(w[5] * float64(x5[j]))
		s += float64(w[6] * float64(x6[j]))
		s += float64(w[7] * float64(x7[j]))
		m[j] = float32(s / W)
	}
}

// sqDist32 is ‖x − a‖² with the differences taken in float32 and summed in
// float64 with four accumulators.
func sqDist32(x, a []float32) float64 {
	n := len(a)
	x = x[:n]
	var s0, s1, s2, s3 float64
	j := 0
	for ; j+4 <= n; j += 4 {
		d0, d1, d2, d3 := x[j]-a[j], x[j+1]-a[j+1], x[j+2]-a[j+2], x[j+3]-a[j+3]
		s0 += float64(d0 * d0)
		s1 += float64(d1 * d1)
		s2 += float64(d2 * d2)
		s3 += float64(d3 * d3)
	}
	for ; j < n; j++ {
		d := x[j] - a[j]
		s0 += float64(d * d)
	}
	return (s0 + s1) + (s2 + s3)
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
	g.sortedMean(out, xs, b, n-b)
}

func (g *aggregator) centeredClip(out []float32, xs [][]float32) aggStats {
	n := len(xs)
	g.d2 = slices.Grow(g.d2[:0], n)[:n]
	g.dist = slices.Grow(g.dist[:0], n)[:n]
	g.c = slices.Grow(g.c[:0], n)[:n]
	var W float64
	for _, w := range g.w {
		W += w
	}
	// The weighted mean, and τ from the inputs' distances to the coordinate
	// median estimated on a sample of coordinates (the median of n
	// estimates, like τ itself, is set by the majority). When no input lies
	// beyond τ of the mean, the mean is a fixed point of the iteration with
	// that τ and the answer: what an honest round pays, one pass over the
	// inputs for the mean and their distances to it, and a sample.
	g.meanSqDist(out, xs, W, true)
	tau := g.tau * g.sampledDist()
	if !math.IsInf(tau, 0) { // τ = 0: the mean only if every input equals it
		g.sqrtDist()
		// A sample overestimates distances concentrated on the sampled
		// coordinates (sparse honest differences): never use more than τ
		// measured from the mean itself.
		tau = min(tau, g.tau*medianF64(slices.Clone(g.dist)))
		if !g.anyBeyond(tau) {
			return aggStats{Tau: tau}
		}
	}
	// Otherwise start from the coordinate-wise median, which a minority
	// cannot drag, with τ from the exact distances to it.
	lo, hi := medianRanks(n)
	g.sortedMean(out, xs, lo, hi)
	for i, x := range xs {
		g.d2[i] = sqDist(x, out)
	}
	g.sqrtDist()
	tau = g.tau * medianF64(slices.Clone(g.dist))
	st := aggStats{Tau: tau}
	if !(tau > 0) || math.IsInf(tau, 0) {
		// Half the inputs sit on the median (or τ overflowed): keep it.
		return st
	}
	for st.Iters < g.iters {
		st.Iters++
		clipped, keep := g.coefficients(tau, W)
		st.Clipped = clipped
		var moved float64
		for j := range out {
			v := float64(out[j])
			nv := float64(keep * v)
			for i, x := range xs {
				nv += float64(g.c[i] * float64(x[j]))
			}
			f := float32(nv)
			out[j] = f
			dv := float64(f) - v
			moved += float64(dv * dv)
		}
		for i, x := range xs {
			g.d2[i] = sqDist(x, out)
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
func l2(x []float32) float64 { return math.Sqrt(fvec.SumSquares(x)) }

// copySquares copies src into dst and returns Σ src², summed as l2 sums.
func copySquares(dst, src []float32) float64 {
	dst = dst[:len(src)]
	var s0, s1, s2, s3 float64
	j := 0
	for ; j+4 <= len(src); j += 4 {
		a, b, c, d := src[j], src[j+1], src[j+2], src[j+3]
		dst[j], dst[j+1], dst[j+2], dst[j+3] = a, b, c, d
		fa, fb, fc, fd := float64(a), float64(b), float64(c), float64(d)
		s0 += float64(fa * fa)
		s1 += float64(fb * fb)
		s2 += float64(fc * fc)
		s3 += float64(fd * fd)
	}
	for ; j < len(src); j++ {
		dst[j] = src[j]
		f := float64(src[j])
		s0 += float64(f * f)
	}
	return (s0 + s1) + (s2 + s3)
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

// sortedAt returns the inputs' values at coordinate j, sorted (a view of
// g.col, valid until the next call).
func (g *aggregator) sortedAt(xs [][]float32, j int) []float32 {
	n, c := len(xs), g.col
	for i, x := range xs {
		c[i] = x[j]
	}
	if n > 32 {
		slices.Sort(c[:n])
		return c[:n]
	}
	for i := n; i < len(c); i++ {
		c[i] = float32(math.Inf(1)) // padding sorts last
	}
	for _, e := range g.net {
		a, b := c[e[0]], c[e[1]]
		c[e[0]], c[e[1]] = min(a, b), max(a, b)
	}
	return c[:n]
}

// sortedMean writes into out, for every coordinate, the mean of the
// inputs' sorted values from rank lo to hi-1.
func (g *aggregator) sortedMean(out []float32, xs [][]float32, lo, hi int) {
	if len(xs) <= 8 {
		sortedMean8(out, xs, lo, hi)
		return
	}
	g.prepareMedian(len(xs))
	inv := 1 / float64(hi-lo)
	for j := range out {
		var s float64
		for _, x := range g.sortedAt(xs, j)[lo:hi] {
			s += float64(x)
		}
		out[j] = float32(s * inv)
	}
}

// medianRanks are the ranks whose mean is the median of n values.
func medianRanks(n int) (lo, hi int) { return (n - 1) / 2, n/2 + 1 }

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

// sortedMean8 writes into out, for every coordinate, the mean of the
// sorted values of 1 to 8 inputs from rank lo to hi-1 (the median: the one
// or two middle ranks; a trimmed mean: all but b at each end). It sorts with
// Batcher's network for 8 values (oddEvenMergeSort(8)) unrolled on locals,
// missing inputs padded with +Inf: no data-dependent branches, which is what
// makes a sort of a few values per coordinate cheap.
func sortedMean8(out []float32, xs [][]float32, lo, hi int) {
	n := len(xs)
	var in [8][]float32
	var pad []float32
	for i := range in {
		if i < n {
			in[i] = xs[i][:len(out)]
			continue
		}
		if pad == nil {
			pad = make([]float32, len(out))
			for j := range pad {
				pad[j] = float32(math.Inf(1))
			}
		}
		in[i] = pad
	}
	inv := 1 / float64(hi-lo)
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
		v := [8]float32{a, b, c, d, e, f, g, h}
		var s float64
		for _, x := range v[lo:hi] {
			s += float64(x)
		}
		out[j] = float32(s * inv)
	}
}

// sqDist returns ‖x − a‖² in float64, with four accumulators (a single
// running sum is bound by the latency of its additions).
func sqDist(x, a []float32) float64 {
	n := len(a)
	x = x[:n]
	var s0, s1, s2, s3 float64
	j := 0
	for ; j+4 <= n; j += 4 {
		d0 := float64(x[j]) - float64(a[j])
		d1 := float64(x[j+1]) - float64(a[j+1])
		d2 := float64(x[j+2]) - float64(a[j+2])
		d3 := float64(x[j+3]) - float64(a[j+3])
		s0 += float64(d0 * d0)
		s1 += float64(d1 * d1)
		s2 += float64(d2 * d2)
		s3 += float64(d3 * d3)
	}
	for ; j < n; j++ {
		d := float64(x[j]) - float64(a[j])
		s0 += float64(d * d)
	}
	return (s0 + s1) + (s2 + s3)
}

// tauSample is about how many coordinates sampledMedianDist looks at: its
// estimate of a distance is then within about 1% of the true one for inputs
// whose differences are spread over the part.
const tauSample = 8192

// sampledMedianDist estimates the median distance of the inputs from their
// coordinate-wise median from every stride-th coordinate (all of them in
// parts of up to 2·tauSample values).
func (g *aggregator) sampledMedianDist(xs [][]float32) float64 {
	stride, lo, hi := g.startSample(xs)
	for j := 0; j < len(xs[0]); j += stride {
		g.sampleAt(xs, j, lo, hi)
	}
	return g.sampledDist()
}

// startSample readies the sums of sampledMedianDist for xs: it returns the
// stride between sampled coordinates and the median's ranks (sampleAt).
func (g *aggregator) startSample(xs [][]float32) (stride, lo, hi int) {
	stride = max(1, len(xs[0])/tauSample)
	g.prepareMedian(len(xs))
	g.sd2 = slices.Grow(g.sd2[:0], len(xs))[:len(xs)]
	clear(g.sd2)
	g.sStride = stride
	lo, hi = medianRanks(len(xs))
	return stride, lo, hi
}

// sampleAt adds coordinate j's squared distances from the coordinate
// median (ranks lo to hi-1) to g.sd2.
func (g *aggregator) sampleAt(xs [][]float32, j, lo, hi int) {
	if len(xs) == 8 {
		g.sampleAt8(xs, j)
		return
	}
	c := g.sortedAt(xs, j)
	m := float64(c[lo])
	if hi-lo == 2 {
		m = (m + float64(c[lo+1])) / 2
	}
	for i, x := range xs {
		e := float64(x[j]) - m
		g.sd2[i] += float64(e * e)
	}
}

// sampledDist is the median distance estimated from the sums in g.sd2.
func (g *aggregator) sampledDist() float64 {
	for i := range g.sd2 {
		g.dist[i] = math.Sqrt(g.sd2[i] * float64(g.sStride))
	}
	return medianF64(slices.Clone(g.dist[:len(g.sd2)]))
}

// sampleAt8 is sampleAt for 8 inputs, with sortedAt's network unrolled on
// locals (the middle two of the same sorted values: the same median). It
// repeats sortedMean8's exchanges: Go does not inline a shared sort of 8
// (too large), and the call per coordinate made the trimmed mean 1.7× slower
// (BenchmarkAggregate).
func (g *aggregator) sampleAt8(xs [][]float32, j int) {
	xs = xs[:8]
	v := [8]float32{xs[0][j], xs[1][j], xs[2][j], xs[3][j], xs[4][j], xs[5][j], xs[6][j], xs[7][j]}
	a, b, c, d, e, f, g2, h := v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
	a, b = min(a, b), max(a, b)
	c, d = min(c, d), max(c, d)
	e, f = min(e, f), max(e, f)
	g2, h = min(g2, h), max(g2, h)
	a, c = min(a, c), max(a, c)
	b, d = min(b, d), max(b, d)
	e, g2 = min(e, g2), max(e, g2)
	f, h = min(f, h), max(f, h)
	b, c = min(b, c), max(b, c)
	f, g2 = min(f, g2), max(f, g2)
	a, e = min(a, e), max(a, e)
	b, f = min(b, f), max(b, f)
	c, g2 = min(c, g2), max(c, g2)
	d, h = min(d, h), max(d, h)
	c, e = min(c, e), max(c, e)
	d, f = min(d, f), max(d, f)
	d, e = min(d, e), max(d, e)        // the network's last two exchanges (b, c and f, g) leave d and e alone
	m := (float64(d) + float64(e)) / 2 // ranks 3 and 4
	sd := g.sd2[:8]
	for i, x := range v {
		dx := float64(x) - m
		sd[i] += float64(dx * dx)
	}
}
