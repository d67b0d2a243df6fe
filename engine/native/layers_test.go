package native

import (
	"math"
	"math/rand/v2"
	"testing"
)

func randn(rng *rand.Rand, n int, scale float64) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(rng.NormFloat64() * scale)
	}
	return s
}

// dot64 is Σ a·b in float64: the scalar "loss" whose gradient w.r.t. a
// layer's output is b.
func dot64(a, b []float32) float64 {
	var s float64
	for i := range a {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

// checkGrad compares analytic[i] with the central difference
// (f(x+eps) − f(x−eps)) / 2eps, computed in float64, for a sample of indices
// of x.
func checkGrad(t *testing.T, what string, x []float32, analytic []float32, f func() float64) {
	t.Helper()
	const eps = 1e-2
	samples := 40
	if testing.Short() {
		samples = 8
	}
	step := max(1, len(x)/samples)
	for i := 0; i < len(x); i += step {
		orig := x[i]
		x[i] = orig + eps
		up := f()
		x[i] = orig - eps
		down := f()
		x[i] = orig
		// the perturbation actually applied, after float32 rounding
		h := float64(orig+eps) - float64(orig-eps)
		num := (up - down) / h
		an := float64(analytic[i])
		if math.Abs(num-an) > 2e-3+2e-2*math.Abs(num) {
			t.Errorf("%s: d/dx[%d]: analytic %.6g, finite difference %.6g", what, i, an, num)
		}
	}
}

const th = 3 // threads in tests: more than one part even on small inputs

func TestLinearGrad(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	rows, in, out := 7, 13, 9
	x, w, b := randn(rng, rows*in, 1), randn(rng, out*in, 0.3), randn(rng, out, 0.3)
	r := randn(rng, rows*out, 1)
	y := make([]float32, rows*out)
	f := func() float64 { linearForward(th, y, x, w, b, rows, in, out); return dot64(y, r) }
	dx, dw, db := make([]float32, rows*in), make([]float32, out*in), make([]float32, out)
	f()
	linearBackward(th, dx, dw, db, r, x, w, rows, in, out)
	checkGrad(t, "linear x", x, dx, f)
	checkGrad(t, "linear w", w, dw, f)
	checkGrad(t, "linear b", b, db, f)
	// Without bias, and dW accumulates.
	f2 := func() float64 { linearForward(th, y, x, w, nil, rows, in, out); return dot64(y, r) }
	dw2 := make([]float32, out*in)
	copy(dw2, dw)
	linearBackward(th, nil, dw2, nil, r, x, w, rows, in, out)
	for i := range dw2 {
		if math.Abs(float64(dw2[i]-2*dw[i])) > 1e-5 {
			t.Fatalf("dW does not accumulate: %g vs 2×%g", dw2[i], dw[i])
		}
	}
	dwNoBias := make([]float32, out*in)
	f2()
	linearBackward(th, nil, dwNoBias, nil, r, x, w, rows, in, out)
	checkGrad(t, "linear (no bias) w", w, dwNoBias, f2)
}

func TestReLUGrad(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	x := randn(rng, 100, 1)
	for i := range x { // keep clear of the kink
		if math.Abs(float64(x[i])) < 0.05 {
			x[i] = 0.5
		}
	}
	r := randn(rng, 100, 1)
	y := make([]float32, 100)
	f := func() float64 { reluForward(th, y, x); return dot64(y, r) }
	f()
	d := append([]float32(nil), r...)
	reluBackward(th, d, y)
	checkGrad(t, "relu", x, d, f)
}

func TestGELUGrad(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 3))
	x := randn(rng, 200, 2)
	x[0], x[1], x[2] = 0, 1e-3, -30 // near zero and far out
	r := randn(rng, 200, 1)
	y := make([]float32, 200)
	f := func() float64 { geluForward(th, y, x); return dot64(y, r) }
	f()
	d := append([]float32(nil), r...)
	geluBackward(th, d, x)
	checkGrad(t, "gelu", x, d, f)
	f()
	// Forward against the formula in float64.
	for i, v := range x {
		xv := float64(v)
		want := 0.5 * xv * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(xv+0.044715*xv*xv*xv)))
		if math.Abs(float64(y[i])-want) > 2e-6*(1+math.Abs(want)) {
			t.Fatalf("gelu(%g) = %g, want %g", xv, y[i], want)
		}
	}
}

func TestExpFast(t *testing.T) {
	for x := -750.0; x <= 708; x += 0.0123 {
		got, want := expFast(x), math.Exp(x)
		if want > 1e-300 && math.Abs(got-want) > 1e-8*want || want <= 1e-300 && got > 1e-300 {
			t.Fatalf("exp(%g) = %g, want %g", x, got, want)
		}
	}
}

func TestLayerNormGrad(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 4))
	rows, C := 5, 24
	x, w, b := randn(rng, rows*C, 2), randn(rng, C, 1), randn(rng, C, 1)
	for i := range x {
		x[i] += 3 // non-zero mean
	}
	r := randn(rng, rows*C, 1)
	y, mean, rstd := make([]float32, rows*C), make([]float32, rows), make([]float32, rows)
	f := func() float64 { layerNormForward(th, y, mean, rstd, x, w, b, rows, C); return dot64(y, r) }
	f()
	dx, dw, db := make([]float32, rows*C), make([]float32, C), make([]float32, C)
	layerNormBackward(th, dx, dw, db, r, x, mean, rstd, w, rows, C)
	checkGrad(t, "layernorm x", x, dx, f)
	checkGrad(t, "layernorm w", w, dw, f)
	checkGrad(t, "layernorm b", b, db, f)
	// Output rows have mean b̄-weighted 0 / unit variance before the affine part.
	layerNormForward(th, y, mean, rstd, x, ones(C), make([]float32, C), rows, C)
	var s, ss float64
	for _, v := range y[:C] {
		s += float64(v)
		ss += float64(v) * float64(v)
	}
	if math.Abs(s/float64(C)) > 1e-5 || math.Abs(ss/float64(C)-1) > 1e-3 {
		t.Fatalf("normalised row: mean %g, variance %g", s/float64(C), ss/float64(C))
	}
}

func ones(n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = 1
	}
	return s
}

func TestEmbeddingGrad(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 5))
	N, T, C, V := 3, 5, 8, 6
	wte, wpe := randn(rng, V*C, 1), randn(rng, T*C, 1)
	tokens := make([]int32, N*T)
	for i := range tokens {
		tokens[i] = int32(rng.IntN(V))
	}
	tokens[0], tokens[1] = 2, 2 // a repeated token
	r := randn(rng, N*T*C, 1)
	y := make([]float32, N*T*C)
	f := func() float64 { embedForward(th, y, tokens, wte, wpe, N, T, C); return dot64(y, r) }
	f()
	dwte, dwpe := make([]float32, V*C), make([]float32, T*C)
	embedBackward(th, dwte, dwpe, r, tokens, N, T, C)
	checkGrad(t, "embedding wte", wte, dwte, f)
	checkGrad(t, "embedding wpe", wpe, dwpe, f)
}

func TestAttentionGrad(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 6))
	N, T, C, NH := 2, 6, 12, 3
	qkv := randn(rng, N*T*3*C, 1)
	r := randn(rng, N*T*C, 1)
	y, att := make([]float32, N*T*C), make([]float32, N*NH*T*T)
	f := func() float64 { attentionForward(th, y, att, qkv, N, T, C, NH); return dot64(y, r) }
	f()
	dqkv, scratch := make([]float32, N*T*3*C), make([]float32, N*NH*T*T)
	attentionBackward(th, dqkv, scratch, r, att, qkv, N, T, C, NH)
	checkGrad(t, "attention qkv", qkv, dqkv, f)
	f()

	// Forward against a direct float64 evaluation: causal, per head.
	hd := C / NH
	for n := 0; n < N; n++ {
		for h := 0; h < NH; h++ {
			for i := 0; i < T; i++ {
				q := qkv[(n*T+i)*3*C+h*hd:]
				sc := make([]float64, i+1)
				mx := math.Inf(-1)
				for j := 0; j <= i; j++ {
					k := qkv[(n*T+j)*3*C+C+h*hd:]
					for d := 0; d < hd; d++ {
						sc[j] += float64(q[d]) * float64(k[d])
					}
					sc[j] /= math.Sqrt(float64(hd))
					mx = math.Max(mx, sc[j])
				}
				var z float64
				for j := range sc {
					sc[j] = math.Exp(sc[j] - mx)
					z += sc[j]
				}
				for d := 0; d < hd; d++ {
					var want float64
					for j := 0; j <= i; j++ {
						want += sc[j] / z * float64(qkv[(n*T+j)*3*C+2*C+h*hd+d])
					}
					if got := float64(y[(n*T+i)*C+h*hd+d]); math.Abs(got-want) > 1e-5 {
						t.Fatalf("attention out[%d,%d,%d] = %g, want %g", n, i, h*hd+d, got, want)
					}
				}
			}
		}
	}
}

func TestCrossEntropyGrad(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 7))
	rows, V := 9, 7
	logits := randn(rng, rows*V, 2)
	targets := make([]int32, rows)
	for i := range targets {
		targets[i] = int32(rng.IntN(V))
	}
	probs := make([]float32, rows*V)
	f := func() float64 { return float64(crossEntropyForward(th, probs, logits, targets, rows, V)) }
	loss := f()
	d := make([]float32, rows*V)
	crossEntropyBackward(th, d, probs, targets, rows, V)
	checkGrad(t, "cross-entropy logits", logits, d, f)
	var want float64
	for r := 0; r < rows; r++ {
		var z float64
		for _, v := range logits[r*V : (r+1)*V] {
			z += math.Exp(float64(v))
		}
		want += math.Log(z) - float64(logits[r*V+int(targets[r])])
	}
	if want /= float64(rows); math.Abs(loss-want) > 1e-5 {
		t.Fatalf("loss %g, want %g", loss, want)
	}
}

func TestRMSNormGrad(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 8))
	rows, C := 5, 24
	x, w := randn(rng, rows*C, 2), randn(rng, C, 1)
	r := randn(rng, rows*C, 1)
	y, rstd := make([]float32, rows*C), make([]float32, rows)
	f := func() float64 { rmsNormForward(th, y, rstd, x, w, rows, C); return dot64(y, r) }
	f()
	dx, dw := make([]float32, rows*C), make([]float32, C)
	rmsNormBackward(th, dx, dw, r, x, rstd, w, rows, C)
	checkGrad(t, "rmsnorm x", x, dx, f)
	checkGrad(t, "rmsnorm w", w, dw, f)
	// With unit weights every output row has mean square 1.
	rmsNormForward(th, y, rstd, x, ones(C), rows, C)
	for row := 0; row < rows; row++ {
		var ss float64
		for _, v := range y[row*C : (row+1)*C] {
			ss += float64(v) * float64(v)
		}
		if math.Abs(ss/float64(C)-1) > 1e-3 {
			t.Fatalf("row %d: mean square %g", row, ss/float64(C))
		}
	}
}

func TestRoPE(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 9))
	N, T, heads, hd, stride, off := 2, 5, 3, 8, 30, 4
	cos, sin := ropeTables(T, hd, 10000)
	x := randn(rng, N*T*stride, 1)
	orig := append([]float32(nil), x...)
	r := randn(rng, N*T*stride, 1)
	y := make([]float32, len(x))
	f := func() float64 {
		copy(y, x)
		rope(th, y, cos, sin, N*T, T, stride, off, heads, hd, false)
		return dot64(y, r)
	}
	f()
	// Against the formula: pair (i, i+hd/2) of position t turned by t·θ^(−2i/hd);
	// columns outside the heads untouched.
	for row := 0; row < N*T; row++ {
		pos := float64(row % T)
		for c := 0; c < stride; c++ {
			want := float64(x[row*stride+c])
			if h := (c - off) / hd; c >= off && h < heads {
				i := (c - off) % hd
				pair, sign := i+hd/2, -1.0
				if i >= hd/2 {
					pair, sign = i-hd/2, 1
				}
				ang := pos * math.Pow(10000, -2*float64(i%(hd/2))/float64(hd))
				want = want*math.Cos(ang) + sign*float64(x[row*stride+off+h*hd+pair])*math.Sin(ang)
			}
			if got := float64(y[row*stride+c]); math.Abs(got-want) > 1e-5 {
				t.Fatalf("row %d column %d: %g, want %g", row, c, got, want)
			}
		}
	}
	// The backward is the inverse rotation applied to the output gradient.
	d := append([]float32(nil), r...)
	rope(th, d, cos, sin, N*T, T, stride, off, heads, hd, true)
	checkGrad(t, "rope", x, d, f)
	f()
	rope(th, y, cos, sin, N*T, T, stride, off, heads, hd, true)
	for i := range y {
		if math.Abs(float64(y[i]-orig[i])) > 1e-5 {
			t.Fatalf("rotating back: %g, want %g", y[i], orig[i])
		}
	}
}

func TestSwiGLUGrad(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 10))
	rows, F := 6, 7
	gu := randn(rng, rows*2*F, 2)
	gu[0], gu[1] = -40, 40 // saturated gates
	r := randn(rng, rows*F, 1)
	y := make([]float32, rows*F)
	f := func() float64 { swigluForward(th, y, gu, rows, F); return dot64(y, r) }
	f()
	d := make([]float32, rows*2*F)
	swigluBackward(th, d, r, gu, rows, F)
	checkGrad(t, "swiglu", gu, d, f)
	f()
	for row := 0; row < rows; row++ {
		for i := 0; i < F; i++ {
			g, u := float64(gu[row*2*F+i]), float64(gu[row*2*F+F+i])
			want := g / (1 + math.Exp(-g)) * u
			if got := float64(y[row*F+i]); math.Abs(got-want) > 1e-5*(1+math.Abs(want)) {
				t.Fatalf("swiglu(%g, %g) = %g, want %g", g, u, got, want)
			}
		}
	}
}

// TestGQAGrad: grouped-query attention (4 query heads sharing 2 key/value
// heads) against finite differences, and each query head against plain
// attention over its group's keys and values.
func TestGQAGrad(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 11))
	d := attnDims{N: 2, T: 5, NH: 4, NKV: 2, hd: 3}
	W, C := d.width(), d.NH*d.hd
	qkv := randn(rng, d.N*d.T*W, 1)
	r := randn(rng, d.N*d.T*C, 1)
	y, att := make([]float32, d.N*d.T*C), make([]float32, d.N*d.NH*d.T*d.T)
	f := func() float64 { attnForward(th, y, att, qkv, d); return dot64(y, r) }
	f()
	dqkv, scratch := make([]float32, len(qkv)), make([]float32, len(att))
	for i := range dqkv {
		dqkv[i] = float32(math.NaN()) // every gradient is written
	}
	attnBackward(th, dqkv, scratch, r, att, qkv, d)
	checkGrad(t, "gqa qkv", qkv, dqkv, f)
	f()
	// Query head h with key/value head h/2, laid out as plain 1-head attention.
	for h := 0; h < d.NH; h++ {
		one := attnDims{N: d.N, T: d.T, NH: 1, NKV: 1, hd: d.hd}
		qo, ko, vo := d.offsets(h)
		if ko != (d.NH+h/2)*d.hd || vo != (d.NH+d.NKV+h/2)*d.hd {
			t.Fatalf("head %d reads k at %d, v at %d", h, ko, vo)
		}
		sub := make([]float32, d.N*d.T*3*d.hd)
		for row := 0; row < d.N*d.T; row++ {
			copy(sub[row*3*d.hd:], qkv[row*W+qo:row*W+qo+d.hd])
			copy(sub[row*3*d.hd+d.hd:], qkv[row*W+ko:row*W+ko+d.hd])
			copy(sub[row*3*d.hd+2*d.hd:], qkv[row*W+vo:row*W+vo+d.hd])
		}
		out, a := make([]float32, d.N*d.T*d.hd), make([]float32, d.N*d.T*d.T)
		attnForward(1, out, a, sub, one)
		for row := 0; row < d.N*d.T; row++ {
			for i := 0; i < d.hd; i++ {
				if got, want := y[row*C+h*d.hd+i], out[row*d.hd+i]; math.Abs(float64(got-want)) > 1e-6 {
					t.Fatalf("head %d row %d: %g, want %g", h, row, got, want)
				}
			}
		}
	}
}
