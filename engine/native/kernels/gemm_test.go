package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
)

func randSlice(rng *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(rng.NormFloat64())
	}
	return s
}

// naive computes op(A)·op(B) (+ c0) in float64.
func naive(transA, transB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, c0 []float32, ldc int) []float64 {
	out := make([]float64, m*n)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			if c0 != nil {
				s = float64(c0[i*ldc+j])
			}
			for p := 0; p < k; p++ {
				var av, bv float32
				if transA {
					av = a[p*lda+i]
				} else {
					av = a[i*lda+p]
				}
				if transB {
					bv = b[j*ldb+p]
				} else {
					bv = b[p*ldb+j]
				}
				s += float64(av) * float64(bv)
			}
			out[i*n+j] = s
		}
	}
	return out
}

func TestSgemmMatchesNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	shapes := [][3]int{{1, 1, 1}, {6, 16, 4}, {7, 17, 5}, {13, 35, 300}, {100, 3, 257}, {64, 64, 32}, {75, 1030, 20}, {200, 150, 600}}
	if testing.Short() {
		shapes = shapes[:len(shapes)-2]
	}
	for _, sh := range shapes {
		m, n, k := sh[0], sh[1], sh[2]
		for _, tr := range [][2]bool{{false, false}, {false, true}, {true, false}, {true, true}} {
			for _, accumulate := range []bool{false, true} {
				for _, threads := range []int{1, 3} {
					name := fmt.Sprintf("%dx%dx%d/tA=%v/tB=%v/acc=%v/threads=%d", m, n, k, tr[0], tr[1], accumulate, threads)
					lda, ldb, ldc := k+3, n+1, n+2
					if tr[0] {
						lda = m + 3
					}
					if tr[1] {
						ldb = k + 1
					}
					rowsA, rowsB := m, k
					if tr[0] {
						rowsA = k
					}
					if tr[1] {
						rowsB = n
					}
					a := randSlice(rng, rowsA*lda)
					b := randSlice(rng, rowsB*ldb)
					c := randSlice(rng, m*ldc)
					var c0 []float32
					if accumulate {
						c0 = append([]float32(nil), c...)
					}
					want := naive(tr[0], tr[1], m, n, k, a, lda, b, ldb, c0, ldc)
					Sgemm(threads, tr[0], tr[1], m, n, k, a, lda, b, ldb, c, ldc, accumulate)
					for i := 0; i < m; i++ {
						for j := 0; j < n; j++ {
							got, w := float64(c[i*ldc+j]), want[i*n+j]
							if math.Abs(got-w) > 1e-4*math.Sqrt(float64(k))*(1+math.Abs(w)) {
								t.Fatalf("%s: C[%d,%d] = %g, want %g", name, i, j, got, w)
							}
						}
						// Padding between rows is untouched.
						if !accumulate && ldc > n && c[i*ldc+n] != c[i*ldc+n] {
							t.Fatalf("%s: padding changed", name)
						}
					}
				}
			}
		}
	}
}

// TestSgemmThreadIndependent: the same product with 1 and 4 threads is
// bit-identical, and so is the Go micro-kernel against itself on a re-run.
func TestSgemmThreadIndependent(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	m, n, k := 150, 530, 700
	a, b := randSlice(rng, m*k), randSlice(rng, k*n)
	c1, c4 := make([]float32, m*n), make([]float32, m*n)
	Sgemm(1, false, false, m, n, k, a, k, b, n, c1, n, false)
	Sgemm(4, false, false, m, n, k, a, k, b, n, c4, n, false)
	for i := range c1 {
		if c1[i] != c4[i] {
			t.Fatalf("element %d: %g with 1 thread, %g with 4", i, c1[i], c4[i])
		}
	}
}

func TestMicroKernelGoMatchesAccelerated(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	k := 37
	a, b := randSlice(rng, k*mr), randSlice(rng, k*nr)
	c1, c2 := make([]float32, mr*nr), make([]float32, mr*nr)
	microKernel(k, a, b, c1, nr, true)
	microKernelGo(k, a, b, c2, nr, true)
	for i := range c1 {
		if d := math.Abs(float64(c1[i] - c2[i])); d > 1e-4 {
			t.Fatalf("element %d: %g vs %g", i, c1[i], c2[i])
		}
	}
}

func TestSgemmShortSlicePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic for a short slice")
		}
	}()
	Sgemm(1, false, false, 4, 4, 4, make([]float32, 15), 4, make([]float32, 16), 4, make([]float32, 16), 4, false)
}

// Shapes of the built-in models' training steps (m×n×k, transposes as used).
var benchShapes = []struct {
	name           string
	m, n, k        int
	transA, transB bool
}{
	{"mlp-fwd-64x1024x784", 64, 1024, 784, false, true},
	{"mlp-dW-1024x784x64", 1024, 784, 64, true, false},
	{"mlp-fwd-128x1024x1024", 128, 1024, 1024, false, true},
	{"gpt-fc-2048x512x128", 2048, 512, 128, false, true},
	{"gpt-proj-2048x128x512", 2048, 128, 512, false, true},
	{"square-1024", 1024, 1024, 1024, false, false},
}

func BenchmarkSgemm(b *testing.B) {
	for _, s := range benchShapes {
		rng := rand.New(rand.NewPCG(1, 1))
		ra, ca := s.m, s.k
		if s.transA {
			ra, ca = ca, ra
		}
		rb, cb := s.k, s.n
		if s.transB {
			rb, cb = cb, rb
		}
		A, B, C := randSlice(rng, ra*ca), randSlice(rng, rb*cb), make([]float32, s.m*s.n)
		flops := 2 * float64(s.m) * float64(s.n) * float64(s.k)
		b.Run("native/"+s.name, func(b *testing.B) {
			for b.Loop() {
				Sgemm(2, s.transA, s.transB, s.m, s.n, s.k, A, ca, B, cb, C, s.n, false)
			}
			b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
		b.Run("gonum/"+s.name, func(b *testing.B) {
			tA, tB := blas.NoTrans, blas.NoTrans
			if s.transA {
				tA = blas.Trans
			}
			if s.transB {
				tB = blas.Trans
			}
			ga := blas32.General{Rows: ra, Cols: ca, Stride: ca, Data: A}
			gb := blas32.General{Rows: rb, Cols: cb, Stride: cb, Data: B}
			gc := blas32.General{Rows: s.m, Cols: s.n, Stride: s.n, Data: C}
			for b.Loop() {
				blas32.Gemm(tA, tB, 1, ga, gb, 0, gc)
			}
			b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}

func TestFMAPeakPositive(t *testing.T) {
	if p := FMAPeak(1, 20*time.Millisecond); !(p > 0) {
		t.Fatalf("FMA peak %g GFLOP/s", p)
	}
}

func TestGELUKernels(t *testing.T) {
	n := 1003 // a tail past the vector part
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(i-n/2) / 50 // −10 … 10
	}
	x[0], x[1], x[2] = -200, 200, 0
	y := make([]float32, n)
	GELU(y, x)
	d := make([]float32, n)
	for i := range d {
		d[i] = 1.5
	}
	GELUBackward(d, x)
	for i, xv := range x {
		xf := float64(xv)
		u := math.Sqrt(2/math.Pi) * (xf + 0.044715*xf*xf*xf)
		want := xf / (1 + math.Exp(-2*u)) // = 0.5·x·(1 + tanh u), without tanh's rounding to ±1
		// float32 rounding of the exponent 2u costs ~1e-7·|2u| relative.
		if math.Abs(float64(y[i])-want) > 3e-7*math.Abs(want)*(1+math.Abs(2*u))+1e-30 {
			t.Fatalf("gelu(%g) = %g, want %g", xf, y[i], want)
		}
		th := math.Tanh(u)
		dwant := 1.5 * (0.5*(1+th) + 0.5*xf*(1-th*th)*math.Sqrt(2/math.Pi)*(1+3*0.044715*xf*xf))
		if math.Abs(float64(d[i])-dwant) > 1e-6*(1+math.Abs(dwant))*(1+math.Abs(2*u)) {
			t.Fatalf("gelu'(%g)·1.5 = %g, want %g", xf, d[i], dwant)
		}
	}
}

func TestAdamWKernel(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	n := 37
	p, g, m, v := randSlice(rng, n), randSlice(rng, n), randSlice(rng, n), randSlice(rng, n)
	for i := range v {
		v[i] *= v[i]
	}
	c := AdamWParams{Scale: 0.7, Beta1: 0.9, Beta2: 0.95, Decay: 0.999, StepSize: 0.01, InvSqrtBC2: 1.3, Eps: 1e-8}
	p0, g0, m0, v0 := append([]float32(nil), p...), append([]float32(nil), g...), append([]float32(nil), m...), append([]float32(nil), v...)
	AdamW(p, g, m, v, c)
	for i := range p {
		gi := float64(g0[i]) * 0.7
		mi := 0.9*float64(m0[i]) + 0.1*gi
		vi := 0.95*float64(v0[i]) + 0.05*gi*gi
		pi := float64(p0[i])*0.999 - 0.01*mi/(math.Sqrt(vi)*1.3+1e-8)
		if math.Abs(float64(m[i])-mi) > 1e-6 || math.Abs(float64(v[i])-vi) > 1e-6 || math.Abs(float64(p[i])-pi) > 1e-6 {
			t.Fatalf("element %d: p %g m %g v %g, want %g %g %g", i, p[i], m[i], v[i], pi, mi, vi)
		}
		if g[i] != g0[i] {
			t.Fatal("gradient modified")
		}
	}
}

// TestSgemmDirectMatchesPacked: reading A in place gives bit-identical
// results to packing it.
func TestSgemmDirectMatchesPacked(t *testing.T) {
	defer func(v int) { directMaxK = v }(directMaxK)
	rng := rand.New(rand.NewPCG(11, 12))
	for _, sh := range [][3]int{{64, 64, 32}, {13, 40, 64}, {100, 20, 7}} {
		m, n, k := sh[0], sh[1], sh[2]
		a, b := randSlice(rng, m*k), randSlice(rng, k*n)
		c1, c2 := make([]float32, m*n), make([]float32, m*n)
		directMaxK = 1 << 30
		Sgemm(1, false, true, m, n, k, a, k, b, k, c1, n, false)
		directMaxK = 0
		Sgemm(1, false, true, m, n, k, a, k, b, k, c2, n, false)
		for i := range c1 {
			if c1[i] != c2[i] {
				t.Fatalf("%v: element %d: %g in place, %g packed", sh, i, c1[i], c2[i])
			}
		}
	}
}

func TestExpShift(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	for _, n := range []int{0, 1, 7, 8, 23, 64} {
		x := randSlice(rng, n)
		x0 := append([]float32(nil), x...)
		scale, shift := float32(0.7), float32(1.9)
		sum := ExpShift(x, scale, shift)
		var want float64
		for i, v := range x0 {
			arg := float64(v)*0.7 - 1.9
			e := math.Exp(arg)
			// float32 rounding of the exponent costs ~1e-7·|arg| relative.
			if math.Abs(float64(x[i])-e) > 3e-7*e*(1+math.Abs(arg)) {
				t.Fatalf("n=%d: exp[%d] = %g, want %g", n, i, x[i], e)
			}
			want += e
		}
		if math.Abs(float64(sum)-want) > 1e-6*(1+want) {
			t.Fatalf("n=%d: sum %g, want %g", n, sum, want)
		}
	}
}
