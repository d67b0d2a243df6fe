package averaging

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// Pure tests of the aggregators: no network, no clock.

// honestSet draws nh honest vectors around a common mean (spread sigma per
// coordinate) and weights in [1, 5].
func honestSet(rng *rand.Rand, nh, d int, sigma float64) ([][]float32, []float64) {
	mu := make([]float64, d)
	for j := range mu {
		mu[j] = rng.NormFloat64()
	}
	xs := make([][]float32, nh)
	ws := make([]float64, nh)
	for i := range xs {
		xs[i] = make([]float32, d)
		for j := range xs[i] {
			xs[i][j] = float32(mu[j] + sigma*rng.NormFloat64())
		}
		ws[i] = float64(1 + rng.IntN(5))
	}
	return xs, ws
}

// weightedMean is Σ w x / Σ w in float64.
func weightedMean(xs [][]float32, ws []float64) []float64 {
	m := make([]float64, len(xs[0]))
	var W float64
	for i, x := range xs {
		W += ws[i]
		for j, v := range x {
			m[j] += ws[i] * float64(v)
		}
	}
	for j := range m {
		m[j] /= W
	}
	return m
}

func dist(a []float32, b []float64) float64 {
	var s float64
	for j := range a {
		d := float64(a[j]) - b[j]
		s += d * d
	}
	return math.Sqrt(s)
}

// honestRadius is the median distance of the honest vectors from their mean:
// how far a typical honest peer's vector is from what averaging should give.
func honestRadius(xs [][]float32, m []float64) float64 {
	ds := make([]float64, len(xs))
	for i, x := range xs {
		ds[i] = dist(x, m)
	}
	return medianF64(ds)
}

// attacks build the Byzantine inputs from the honest ones.
var attacks = []struct {
	name string
	make func(rng *rand.Rand, honest [][]float32, f int) [][]float32
}{
	{"sign-flip x100", func(_ *rand.Rand, h [][]float32, f int) [][]float32 {
		out := make([][]float32, f)
		for b := range out {
			out[b] = make([]float32, len(h[0]))
			for j, v := range h[b%len(h)] {
				out[b][j] = -100 * v
			}
		}
		return out
	}},
	{"huge norm", func(rng *rand.Rand, h [][]float32, f int) [][]float32 {
		out := make([][]float32, f)
		for b := range out {
			out[b] = make([]float32, len(h[0]))
			for j := range out[b] {
				out[b][j] = float32(1e30 * rng.NormFloat64())
			}
		}
		return out
	}},
	{"constant garbage", func(_ *rand.Rand, h [][]float32, f int) [][]float32 {
		out := make([][]float32, f)
		for b := range out {
			out[b] = make([]float32, len(h[0]))
			for j := range out[b] {
				out[b][j] = 1e6
			}
		}
		return out
	}},
	{"colluding identical", func(rng *rand.Rand, h [][]float32, f int) [][]float32 {
		// All liars send one vector: the honest mean shifted 20 honest
		// spreads along a random direction, so together they look like a
		// tight cluster.
		d := len(h[0])
		shift := make([]float32, d)
		for j := range shift {
			shift[j] = float32(20 * rng.NormFloat64())
		}
		v := make([]float32, d)
		for j := range v {
			v[j] = h[0][j] + shift[j]
		}
		out := make([][]float32, f)
		for b := range out {
			out[b] = v
		}
		return out
	}},
}

// TestAggregatorsUnderAttack: with up to 1 in 4 inputs Byzantine (each
// declaring the largest weight of the group, 5), the aggregate stays near the
// honest mean m, in units of the honest radius r (the median distance of an
// honest vector from m, the noise of one honest peer): CenteredClip within
// 1.25 r at the default τ = 2 and within 0.75 r at τ = 1, the trimmed mean
// within r. The plain mean, for contrast, is moved more than 5 r.
func TestAggregatorsUnderAttack(t *testing.T) {
	const d = 2000
	for _, n := range []int{4, 5, 8, 12, 16} {
		f := n / 4
		for _, atk := range attacks {
			t.Run(fmt.Sprintf("n=%d/%s", n, atk.name), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(uint64(n), uint64(len(atk.name))))
				hx, hw := honestSet(rng, n-f, d, 0.1)
				m := weightedMean(hx, hw)
				r := honestRadius(hx, m)
				xs := append(atk.make(rng, hx, f), hx...)
				ws := append([]float64{}, hw...)
				for range f {
					ws = append([]float64{5}, ws...)
				}
				out := make([]float32, d)
				for _, c := range []struct {
					kind  Aggregation
					tau   float64
					bound float64
				}{{AggregateCenteredClip, 0, 1.25}, {AggregateCenteredClip, 1, 0.75}, {AggregateTrimmedMean, 0, 1}} {
					st := newAggregator(c.kind, c.tau, 0).combine(out, xs, ws)
					if e := dist(out, m); !(e <= c.bound*r) {
						t.Errorf("%s τ=%g: ‖aggregate − honest mean‖ = %.4g > %g × honest radius %.4g (%+v)", c.kind, c.tau, e, c.bound, r, st)
					}
				}
				newAggregator(AggregateMean, 0, 0).combine(out, xs, ws)
				if e := dist(out, m); !(e > 5*r) {
					t.Errorf("mean: error %.4g not far beyond the honest radius %.4g: the attack is too weak to test anything", e, r)
				}
			})
		}
	}
}

// TestCenteredClipIsMeanWithoutAttack: honest inputs only and τ large:
// CenteredClip returns the weighted mean (weights capped at their median) to
// float32 precision, at its first fixed point. With the default τ it stays
// within 5% of the honest radius of it from 3 inputs on.
func TestCenteredClipIsMeanWithoutAttack(t *testing.T) {
	for _, n := range []int{2, 3, 4, 8, 17} {
		rng := rand.New(rand.NewPCG(uint64(n), 7))
		xs, ws := honestSet(rng, n, 5000, 0.5)
		capped := make([]float64, n)
		med := medianF64(append([]float64{}, ws...))
		for i, w := range ws {
			capped[i] = min(w, med)
		}
		m := weightedMean(xs, capped)
		out := make([]float32, len(m))
		st := newAggregator(AggregateCenteredClip, 100, 0).combine(out, xs, ws)
		for j, v := range out {
			if math.Abs(float64(v)-m[j]) > 1e-6*math.Max(1, math.Abs(m[j])) {
				t.Fatalf("n=%d: coordinate %d: %v, weighted mean %v (%+v)", n, j, v, m[j], st)
			}
		}
		if st.Iters != 0 {
			t.Errorf("n=%d: %d iterations without an attacker (want the mean's fast path)", n, st.Iters)
		}
		if n == 2 {
			continue // no majority: the two sit at equal distances from their median, τ between them
		}
		st = newAggregator(AggregateCenteredClip, 0, 0).combine(out, xs, ws)
		if e, r := dist(out, m), honestRadius(xs, m); e > 0.05*r {
			t.Errorf("n=%d default τ: %.4g from the mean, over 5%% of the honest radius %.4g (%+v)", n, e, r, st)
		}
	}
}

func TestTrimCountAndMedian(t *testing.T) {
	for n, want := range map[int]int{1: 0, 2: 0, 3: 1, 4: 1, 5: 1, 7: 1, 8: 2, 12: 3, 256: 64} {
		if got := trimCount(n); got != want {
			t.Errorf("trimCount(%d) = %d, want %d", n, got, want)
		}
	}
	if m := medianF32([]float32{3, 1, 2}); m != 2 {
		t.Errorf("median of 3,1,2 = %v", m)
	}
	if m := medianF32([]float32{4, 1, 2, 3}); m != 2.5 {
		t.Errorf("median of 4,1,2,3 = %v", m)
	}
	big := make([]float32, 41)
	for i := range big {
		big[i] = float32(40 - i)
	}
	if m := medianF32(big); m != 20 {
		t.Errorf("median of 0..40 = %v", m)
	}
}

// FuzzAggregate: any finite inputs (extremes included) give a finite
// aggregate inside every coordinate's input range, for every aggregation.
func FuzzAggregate(f *testing.F) {
	f.Add([]byte{3, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
	seed := []byte{5, 3}
	for _, v := range []float32{math.MaxFloat32, -math.MaxFloat32, 1e-45, 0, -0, 1, 3e38, -3e38, 1e-38, 7} {
		seed = binary.LittleEndian.AppendUint32(seed, math.Float32bits(v))
	}
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 2 {
			return
		}
		n, d := 1+int(b[0])%12, 1+int(b[1])%9
		b = b[2:]
		next := func() float32 {
			if len(b) < 4 {
				return 0
			}
			v := math.Float32frombits(binary.LittleEndian.Uint32(b))
			b = b[4:]
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return math.MaxFloat32 // upstream refuses these; use the extreme instead
			}
			return v
		}
		xs := make([][]float32, n)
		ws := make([]float64, n)
		for i := range xs {
			xs[i] = make([]float32, d)
			for j := range xs[i] {
				xs[i][j] = next()
			}
			ws[i] = 1 + float64(i%3)*1e9
		}
		out := make([]float32, d)
		for _, kind := range []Aggregation{AggregateMean, AggregateCenteredClip, AggregateTrimmedMean} {
			for _, tau := range []float64{0.01, DefaultClipTau, maxClipTau} {
				newAggregator(kind, tau, MaxClipIters).combine(out, xs, ws)
				for j, v := range out {
					lo, hi := float32(math.Inf(1)), float32(math.Inf(-1))
					for _, x := range xs {
						lo, hi = min(lo, x[j]), max(hi, x[j])
					}
					if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) || v < lo || v > hi {
						t.Fatalf("%s τ=%g: coordinate %d = %v outside [%v, %v] of inputs %v", kind, tau, j, v, lo, hi, xs)
					}
				}
			}
		}
	})
}

// BenchmarkAggregate: one part of 128 Ki values from 8 senders, no attacker
// (what an honest round pays per part).
func BenchmarkAggregate(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	xs, ws := honestSet(rng, 8, 128<<10, 0.1)
	out := make([]float32, len(xs[0]))
	for _, kind := range []Aggregation{AggregateMean, AggregateCenteredClip, AggregateTrimmedMean} {
		b.Run(kind.String(), func(b *testing.B) {
			g := newAggregator(kind, 0, 0)
			b.SetBytes(int64(8 * 4 * len(out)))
			for b.Loop() {
				g.combine(out, xs, ws)
			}
		})
	}
}

// BenchmarkAggregateAttacked: the same part with 2 of 8 senders sign-flipped
// ×100: what a liar makes each reducer pay (CenteredClip's iterations).
func BenchmarkAggregateAttacked(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	xs, ws := honestSet(rng, 8, 128<<10, 0.1)
	for _, x := range xs[:2] {
		for j := range x {
			x[j] *= -100
		}
	}
	out := make([]float32, len(xs[0]))
	for _, kind := range []Aggregation{AggregateCenteredClip, AggregateTrimmedMean} {
		b.Run(kind.String(), func(b *testing.B) {
			g := newAggregator(kind, 0, 0)
			b.SetBytes(int64(8 * 4 * len(out)))
			for b.Loop() {
				g.combine(out, xs, ws)
			}
		})
	}
}

// TestIdenticalInputs: inputs that all agree (every peer already holds the
// average) take the fast path and come back unchanged.
func TestIdenticalInputs(t *testing.T) {
	x := []float32{1, -2, 3.5, 0}
	xs := [][]float32{x, x, x, x, x}
	ws := []float64{1, 2, 3, 4, 5}
	out := make([]float32, len(x))
	for _, kind := range []Aggregation{AggregateMean, AggregateCenteredClip, AggregateTrimmedMean} {
		st := newAggregator(kind, 0, 0).combine(out, xs, ws)
		if !slices.Equal(out, x) || st.Iters != 0 {
			t.Fatalf("%s: %v (%+v), want %v", kind, out, st, x)
		}
	}
}

// The τ sample taken inside the mean's pass is the separate sample, bit for
// bit, and taking it changes neither the mean nor the distances: auditors
// re-compute parts and compare digests.
func TestFusedTauSample(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 9))
	for _, n := range []int{2, 3, 5, 8, 11} {
		for _, d := range []int{1, 100, 513, 2*tauSample + 3, 131072 + 17} {
			xs := make([][]float32, n)
			ws := make([]float64, n)
			for i := range xs {
				xs[i] = make([]float32, d)
				for j := range xs[i] {
					xs[i][j] = float32(rng.NormFloat64() * float64(i+1))
				}
				ws[i] = float64(1 + i%3)
			}
			ref := newAggregator(AggregateCenteredClip, 0, 0)
			ref.capWeights(ws)
			ref.d2, ref.dist = make([]float64, n), make([]float64, n)
			want := ref.sampledMedianDist(xs)
			wantOut := make([]float32, d)
			ref.meanSqDist(wantOut, xs, 7, false)
			wantD2 := slices.Clone(ref.d2)

			g := newAggregator(AggregateCenteredClip, 0, 0)
			g.capWeights(ws)
			g.d2, g.dist = make([]float64, n), make([]float64, n)
			out := make([]float32, d)
			g.meanSqDist(out, xs, 7, true)
			if got := g.sampledDist(); math.Float64bits(got) != math.Float64bits(want) {
				t.Fatalf("n=%d d=%d: fused sample %v, separate %v", n, d, got, want)
			}
			if !slices.Equal(out, wantOut) || !slices.Equal(g.d2, wantD2) {
				t.Fatalf("n=%d d=%d: the sample changed the mean or the distances", n, d)
			}
		}
	}
}
