package averaging

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// TestMeanDistKernel: the assembly kernel gives meanSqDist's loops' bits
// (the mean and every distance) for 2 to 8 inputs, blocks of every length
// mod 4, offsets, weights, signed zeros and magnitudes from subnormal to
// overflowing differences, and so do whole parts through combine, which
// takes the fast path or not by them.
func TestMeanDistKernel(t *testing.T) {
	if !hasMeanDistAVX2 {
		t.Skip("no assembly kernel on this machine")
	}
	rng := rand.New(rand.NewPCG(5, 6))
	scales := []float64{1e-42, 1e-20, 1, 1e3, 1e19, 3e38}
	negZero := float32(math.Copysign(0, -1))
	for trial := range 600 {
		n := rng.IntN(600)
		off := rng.IntN(9)
		xs := make([][]float32, 2+trial%7)
		for i := range xs {
			xs[i] = make([]float32, off+n+rng.IntN(3))
			sc := scales[rng.IntN(len(scales))]
			for j := range xs[i] {
				xs[i][j] = float32(max(-math.MaxFloat32, min(math.MaxFloat32, sc*rng.NormFloat64()))) // finite, as inputs are
				if rng.IntN(50) == 0 {
					xs[i][j] = float32(math.Copysign(math.MaxFloat32, rng.NormFloat64()))
				}
			}
		}
		for j := range off + n { // coordinates where every input is a zero of one sign
			if rng.IntN(20) == 0 {
				z := []float32{0, negZero}[rng.IntN(2)]
				for _, x := range xs {
					x[j] = z
				}
			}
		}
		w := make([]float64, len(xs))
		var W float64
		for i := range w {
			w[i] = 1 + 4*rng.Float64()
			if trial%3 == 0 {
				w[i] = float64(1 + rng.IntN(5))
			}
			W += w[i]
		}
		run := func(asm bool) ([]float32, []float64) {
			defer func(v bool) { hasMeanDistAVX2 = v }(hasMeanDistAVX2)
			hasMeanDistAVX2 = asm
			g := &aggregator{w: w, d2: make([]float64, len(xs))}
			m := make([]float32, n)
			g.meanDistBlock(m, xs, off, W)
			return m, g.d2
		}
		ma, da := run(true)
		mg, dg := run(false)
		for j := range ma {
			if math.Float32bits(ma[j]) != math.Float32bits(mg[j]) {
				t.Fatalf("trial %d (n %d, offset %d): mean[%d] = %v by the kernel, %v by the loop", trial, n, off, j, ma[j], mg[j])
			}
		}
		for i := range da {
			if math.Float64bits(da[i]) != math.Float64bits(dg[i]) {
				t.Fatalf("trial %d (n %d, offset %d): distance² of input %d = %v by the kernel, %v by the loop", trial, n, off, i, da[i], dg[i])
			}
		}
	}
	// Whole parts: blocks, the τ sample and the fast-path decision.
	for trial := range 28 {
		xs, ws := honestSet(rng, 2+trial%7, 1000+rng.IntN(5000), 0.1)
		if trial%2 == 1 {
			for j := range xs[0] {
				xs[0][j] *= -100 // a liar: the slow path after the same first pass
			}
		}
		comb := func(asm bool) ([]float32, aggStats) {
			defer func(v bool) { hasMeanDistAVX2 = v }(hasMeanDistAVX2)
			hasMeanDistAVX2 = asm
			out := make([]float32, len(xs[0]))
			st := newAggregator(AggregateCenteredClip, 0, 0).combine(out, xs, ws)
			return out, st
		}
		oa, sa := comb(true)
		og, sg := comb(false)
		if sa != sg {
			t.Fatalf("part %d: %+v by the kernel, %+v by the loops", trial, sa, sg)
		}
		for j := range oa {
			if math.Float32bits(oa[j]) != math.Float32bits(og[j]) {
				t.Fatalf("part %d: value %d = %v by the kernel, %v by the loops", trial, j, oa[j], og[j])
			}
		}
	}
}

// BenchmarkMeanDist: the first pass of CenteredClip over one part of 8
// inputs (128 Ki values each), by the kernel and by the loops.
func BenchmarkMeanDist(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, d := range []int{512, 128 << 10} {
		xs, ws := honestSet(rng, 8, d, 0.1)
		var W float64
		for _, w := range ws {
			W += w
		}
		for _, asm := range []bool{true, false} {
			name := fmt.Sprintf("%d/loops", d)
			if asm {
				if !hasMeanDistAVX2 {
					continue
				}
				name = fmt.Sprintf("%d/kernel", d)
			}
			b.Run(name, func(b *testing.B) {
				defer func(v bool) { hasMeanDistAVX2 = v }(hasMeanDistAVX2)
				hasMeanDistAVX2 = asm
				g := &aggregator{w: ws, d2: make([]float64, 8)}
				out := make([]float32, d)
				b.SetBytes(int64(8 * 4 * d))
				for b.Loop() {
					g.meanSqDist(out, xs, W, false)
				}
			})
		}
	}
}

// TestSampleAt8: the unrolled median of 8 inputs adds what sortedAt's
// network gives, on values with ties, signed zeros and every order.
func TestSampleAt8(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	pool := []float32{-3, -1, float32(math.Copysign(0, -1)), 0, 0.5, 1, 2, 7, -math.MaxFloat32, math.MaxFloat32}
	xs := make([][]float32, 8)
	for i := range xs {
		xs[i] = make([]float32, 5000)
		for j := range xs[i] {
			if j%2 == 0 {
				xs[i][j] = pool[rng.IntN(len(pool))]
			} else {
				xs[i][j] = float32(rng.NormFloat64())
			}
		}
	}
	fast, slow := &aggregator{}, &aggregator{}
	for _, g := range []*aggregator{fast, slow} {
		g.startSample(xs)
	}
	lo, hi := medianRanks(8)
	for j := range xs[0] {
		fast.sampleAt8(xs, j)
		c := slow.sortedAt(xs, j)
		m := (float64(c[lo]) + float64(c[hi-1])) / 2
		for i, x := range xs {
			e := float64(x[j]) - m
			slow.sd2[i] += float64(e * e)
		}
		for i := range fast.sd2 {
			if math.Float64bits(fast.sd2[i]) != math.Float64bits(slow.sd2[i]) {
				t.Fatalf("coordinate %d, input %d: %v unrolled, %v by the network", j, i, fast.sd2[i], slow.sd2[i])
			}
		}
	}
}
