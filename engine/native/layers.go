package native

import (
	"math"

	"github.com/swarm-train/swarm/engine/native/kernels"
)

// Layers, each forward next to its backward. Tensors are row-major with one
// row per sample (mlp-mnist) or per position (gpt-char); rows is the number of
// such rows. Backward functions that produce a gradient for a residual input
// add into it; all others overwrite their outputs.

// ---- Linear: out = in·Wᵀ + b, W [outDim, inDim] ----

func linearForward(th int, out, in, w, b []float32, rows, inDim, outDim int) {
	if b != nil {
		forRange(th, rows, 64, func(lo, hi int) {
			for r := lo; r < hi; r++ {
				copy(out[r*outDim:(r+1)*outDim], b)
			}
		})
	}
	kernels.Sgemm(th, false, true, rows, outDim, inDim, in, inDim, w, inDim, out, outDim, b != nil)
}

// linearBackward sets dIn = dOut·W (skipped when dIn is nil) and adds
// dOutᵀ·in to dW and the column sums of dOut to dB (skipped when nil).
func linearBackward(th int, dIn, dW, dB, dOut, in, w []float32, rows, inDim, outDim int) {
	if dIn != nil {
		kernels.Sgemm(th, false, false, rows, inDim, outDim, dOut, outDim, w, inDim, dIn, inDim, false)
	}
	kernels.Sgemm(th, true, false, outDim, inDim, rows, dOut, outDim, in, inDim, dW, inDim, true)
	if dB != nil {
		colSums(th, dB, dOut, rows, outDim)
	}
}

// colSums adds the column sums of x [rows, cols] into dst, each column summed
// in row order.
func colSums(th int, dst, x []float32, rows, cols int) {
	forRange(th, cols, 256, func(lo, hi int) {
		acc := make([]float64, hi-lo)
		for r := 0; r < rows; r++ {
			row := x[r*cols+lo : r*cols+hi]
			for j, v := range row {
				acc[j] += float64(v)
			}
		}
		for j, v := range acc {
			dst[lo+j] += float32(v)
		}
	})
}

// ---- ReLU: out = max(0, in), in place allowed ----

func reluForward(th int, out, in []float32) {
	forRange(th, len(in), 1<<14, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			out[i] = max(in[i], 0)
		}
	})
}

// reluBackward zeroes d where the ReLU's output was not positive (in place).
func reluBackward(th int, d, out []float32) {
	forRange(th, len(d), 1<<14, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			if out[i] <= 0 {
				d[i] = 0
			}
		}
	})
}

// ---- GELU, tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) ----
//
// kernels.GELU computes it as x·σ(2u) (the same function, one exponential).
// Work is cut at multiples of 8 values so the vector and scalar parts of the
// kernel see the same elements whatever the thread count.

func geluForward(th int, out, in []float32) {
	n := len(in)
	forRange(th, (n+7)/8, 1<<10, func(lo, hi int) {
		kernels.GELU(out[lo*8:min(hi*8, n)], in[lo*8:min(hi*8, n)])
	})
}

// geluBackward turns d (gradient w.r.t. the output) into the gradient w.r.t.
// the input in place; in is the GELU's input.
func geluBackward(th int, d, in []float32) {
	n := len(in)
	forRange(th, (n+7)/8, 1<<10, func(lo, hi int) {
		kernels.GELUBackward(d[lo*8:min(hi*8, n)], in[lo*8:min(hi*8, n)])
	})
}

// expFast is e^x, relative error below 1e-8 (float32 needs 6e-8): x = k·ln2 + r
// with |r| ≤ ln2/2, e^r by a degree-8 Taylor polynomial, 2^k put straight into
// the exponent bits. k is rounded by adding and subtracting 1.5·2^52. About
// three times faster than math.Exp.
func expFast(x float64) float64 {
	const (
		log2e = 1.4426950408889634
		ln2Hi = 6.93147180369123816490e-01
		ln2Lo = 1.90821492927058770002e-10
		round = 6755399441055744.0 // 1.5·2^52
	)
	if x < -708 {
		return 0
	}
	if x > 708 {
		return math.Inf(1)
	}
	t := x*log2e + round
	k := t - round
	r := x - k*ln2Hi - k*ln2Lo
	p := 1 + r*(1+r*(1.0/2+r*(1.0/6+r*(1.0/24+r*(1.0/120+r*(1.0/720+r*(1.0/5040+r*(1.0/40320))))))))
	ki := int64(math.Float64bits(t)) - int64(math.Float64bits(round))
	return p * math.Float64frombits(uint64(ki+1023)<<52)
}

// ---- LayerNorm over the last dimension C, eps 1e-5 ----

const lnEps = 1e-5

// layerNormForward sets out = (in − mean)·rstd·w + b per row and records each
// row's mean and rstd = 1/√(var + eps) (biased variance).
func layerNormForward(th int, out, mean, rstd, in, w, b []float32, rows, C int) {
	forRange(th, rows, 16, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			x := in[r*C : (r+1)*C]
			var s float64
			for _, v := range x {
				s += float64(v)
			}
			m := s / float64(C)
			var vs float64
			for _, v := range x {
				d := float64(v) - m
				vs += d * d
			}
			rs := 1 / math.Sqrt(vs/float64(C)+lnEps)
			o := out[r*C : (r+1)*C]
			for i, v := range x {
				o[i] = float32((float64(v)-m)*rs)*w[i] + b[i]
			}
			mean[r], rstd[r] = float32(m), float32(rs)
		}
	})
}

// layerNormBackward adds the input gradient into dIn and the parameter
// gradients into dW and dB.
func layerNormBackward(th int, dIn, dW, dB, dOut, in, mean, rstd, w []float32, rows, C int) {
	forRange(th, rows, 16, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			x, d := in[r*C:(r+1)*C], dOut[r*C:(r+1)*C]
			m, rs := float64(mean[r]), float64(rstd[r])
			var dm, dnm float64 // mean of dnorm and of dnorm·norm
			for i := range x {
				norm := (float64(x[i]) - m) * rs
				dn := float64(w[i]) * float64(d[i])
				dm += dn
				dnm += dn * norm
			}
			dm /= float64(C)
			dnm /= float64(C)
			di := dIn[r*C : (r+1)*C]
			for i := range x {
				norm := (float64(x[i]) - m) * rs
				dn := float64(w[i]) * float64(d[i])
				di[i] += float32((dn - dm - norm*dnm) * rs)
			}
		}
	})
	forRange(th, C, 32, func(lo, hi int) {
		accW := make([]float64, hi-lo)
		accB := make([]float64, hi-lo)
		for r := 0; r < rows; r++ {
			m, rs := float64(mean[r]), float64(rstd[r])
			x, d := in[r*C+lo:r*C+hi], dOut[r*C+lo:r*C+hi]
			for j := range x {
				accW[j] += (float64(x[j]) - m) * rs * float64(d[j])
				accB[j] += float64(d[j])
			}
		}
		for j := range accW {
			dW[lo+j] += float32(accW[j])
			dB[lo+j] += float32(accB[j])
		}
	})
}

// ---- Token + position embedding: x[n,t] = wte[tok[n,t]] + wpe[t] ----
//
// wpe nil (llama, whose positions are rotary): x[n,t] = wte[tok[n,t]].

func embedForward(th int, out []float32, tokens []int32, wte, wpe []float32, N, T, C int) {
	forRange(th, N*T, 64, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			tok, pos := int(tokens[r]), r%T
			o, e := out[r*C:(r+1)*C], wte[tok*C:(tok+1)*C]
			if wpe == nil {
				copy(o, e)
				continue
			}
			p := wpe[pos*C : (pos+1)*C]
			for i := range o {
				o[i] = e[i] + p[i]
			}
		}
	})
}

// embedBackward adds dOut into the rows of dwte and dwpe it came from. Work is
// split by columns so each gradient element is summed in row order.
func embedBackward(th int, dwte, dwpe, dOut []float32, tokens []int32, N, T, C int) {
	forRange(th, C, 32, func(lo, hi int) {
		for r := 0; r < N*T; r++ {
			tok, pos := int(tokens[r]), r%T
			d := dOut[r*C+lo : r*C+hi]
			e := dwte[tok*C+lo : tok*C+hi]
			for i, v := range d {
				e[i] += v
			}
			if dwpe == nil {
				continue
			}
			p := dwpe[pos*C+lo : pos*C+hi]
			for i, v := range d {
				p[i] += v
			}
		}
	})
}

// ---- Causal multi-head self-attention, with grouped key/value heads ----
//
// qkv [N,T,W] holds, per position, the NH query heads, then the NKV key
// heads, then the NKV value heads, each hd wide (W = (NH+2·NKV)·hd). Query
// head h reads key/value head h/(NH/NKV): with NKV = NH this is plain
// multi-head attention (gpt-char: W = 3C), with fewer it is grouped-query
// attention. att [N,NH,T,T] keeps the softmax probabilities (zero above the
// diagonal); out [N,T,NH·hd] is the heads' outputs side by side.

// attnDims are the sizes of one attention call.
type attnDims struct{ N, T, NH, NKV, hd int }

func (d attnDims) width() int { return (d.NH + 2*d.NKV) * d.hd }

// offsets returns the columns of query head h's q, k and v within a row.
func (d attnDims) offsets(h int) (q, k, v int) {
	kv := h / (d.NH / d.NKV)
	return h * d.hd, (d.NH + kv) * d.hd, (d.NH + d.NKV + kv) * d.hd
}

// attentionForward is causal multi-head attention with NKV = NH (gpt-char).
func attentionForward(th int, out, att, qkv []float32, N, T, C, NH int) {
	attnForward(th, out, att, qkv, attnDims{N, T, NH, NH, C / NH})
}

// attentionBackward is attnBackward with NKV = NH (gpt-char).
func attentionBackward(th int, dqkv, scratch, dOut, att, qkv []float32, N, T, C, NH int) {
	attnBackward(th, dqkv, scratch, dOut, att, qkv, attnDims{N, T, NH, NH, C / NH})
}

func attnForward(th int, out, att, qkv []float32, d attnDims) {
	T, NH, hd, W, C := d.T, d.NH, d.hd, d.width(), d.NH*d.hd
	scale := float32(1 / math.Sqrt(float64(hd)))
	forRange(th, d.N*NH, 1, func(lo, hi int) {
		for task := lo; task < hi; task++ {
			n, h := task/NH, task%NH
			base := n * T * W
			qo, ko, vo := d.offsets(h)
			q, k, v := qkv[base+qo:], qkv[base+ko:], qkv[base+vo:]
			a := att[task*T*T : (task+1)*T*T]
			kernels.Sgemm(1, false, true, T, T, hd, q, W, k, W, a, T, false)
			for i := 0; i < T; i++ {
				row := a[i*T : (i+1)*T]
				mx := row[0]
				for _, v := range row[1 : i+1] {
					mx = max(mx, v)
				}
				// Keys after the query are masked: softmax over row[:i+1].
				inv := 1 / kernels.ExpShift(row[:i+1], scale, mx*scale)
				for j := range row[:i+1] {
					row[j] *= inv
				}
				clear(row[i+1:])
			}
			kernels.Sgemm(1, false, false, T, hd, T, a, T, v, W, out[n*T*C+h*hd:], C, false)
		}
	})
}

// attnBackward sets dqkv from dOut; scratch needs N·NH·T·T values. Work is
// split by (sample, key/value head): the query heads of a group add into
// their shared dK and dV one after another, in head order.
func attnBackward(th int, dqkv, scratch, dOut, att, qkv []float32, d attnDims) {
	T, NH, hd, W, C := d.T, d.NH, d.hd, d.width(), d.NH*d.hd
	group := NH / d.NKV
	scale := float32(1 / math.Sqrt(float64(hd)))
	forRange(th, d.N*d.NKV, 1, func(lo, hi int) {
		for kvTask := lo; kvTask < hi; kvTask++ {
			n, kv := kvTask/d.NKV, kvTask%d.NKV
			base := n * T * W
			for h := kv * group; h < (kv+1)*group; h++ {
				task := n*NH + h
				acc := h > kv*group // the group's first head sets dK and dV, the others add
				qo, ko, vo := d.offsets(h)
				q, k, v := qkv[base+qo:], qkv[base+ko:], qkv[base+vo:]
				dq, dk, dv := dqkv[base+qo:], dqkv[base+ko:], dqkv[base+vo:]
				a := att[task*T*T : (task+1)*T*T]
				da := scratch[task*T*T : (task+1)*T*T]
				dy := dOut[n*T*C+h*hd:]
				kernels.Sgemm(1, false, true, T, T, hd, dy, C, v, W, da, T, false) // dAtt = dY·Vᵀ
				kernels.Sgemm(1, true, false, T, hd, T, a, T, dy, C, dv, W, acc)   // dV (+)= Attᵀ·dY
				// Softmax backward, then the 1/√hd scale: dPre = Att ⊙ (dAtt − Σ Att·dAtt)·scale.
				for i := 0; i < T; i++ {
					ar, dr := a[i*T:(i+1)*T], da[i*T:(i+1)*T]
					var dot float64
					for j := 0; j <= i; j++ {
						dot += float64(ar[j]) * float64(dr[j])
					}
					for j := 0; j <= i; j++ {
						dr[j] = float32(float64(ar[j])*(float64(dr[j])-dot)) * scale
					}
					clear(dr[i+1:])
				}
				kernels.Sgemm(1, false, false, T, hd, T, da, T, k, W, dq, W, false) // dQ = dPre·K
				kernels.Sgemm(1, true, false, T, hd, T, da, T, q, W, dk, W, acc)    // dK (+)= dPreᵀ·Q
			}
		}
	})
}

// ---- RMSNorm over the last dimension C, eps 1e-5 (llama) ----

const rmsEps = 1e-5

// rmsNormForward sets out = in·rstd·w per row, rstd = 1/√(mean(in²) + eps),
// and records each row's rstd.
func rmsNormForward(th int, out, rstd, in, w []float32, rows, C int) {
	forRange(th, rows, 16, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			x := in[r*C : (r+1)*C]
			var ss float64
			for _, v := range x {
				ss += float64(v) * float64(v)
			}
			rs := 1 / math.Sqrt(ss/float64(C)+rmsEps)
			o := out[r*C : (r+1)*C]
			for i, v := range x {
				o[i] = float32(float64(v)*rs) * w[i]
			}
			rstd[r] = float32(rs)
		}
	})
}

// rmsNormBackward adds the input gradient into dIn and the weight gradient
// into dW: dx = rstd·(w⊙d) − x·rstd³·mean(w⊙d⊙x).
func rmsNormBackward(th int, dIn, dW, dOut, in, rstd, w []float32, rows, C int) {
	forRange(th, rows, 16, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			x, d := in[r*C:(r+1)*C], dOut[r*C:(r+1)*C]
			rs := float64(rstd[r])
			var dot float64
			for i := range x {
				dot += float64(w[i]) * float64(d[i]) * float64(x[i])
			}
			k := dot / float64(C) * rs * rs * rs
			di := dIn[r*C : (r+1)*C]
			for i := range x {
				di[i] += float32(float64(w[i])*float64(d[i])*rs - float64(x[i])*k)
			}
		}
	})
	forRange(th, C, 32, func(lo, hi int) {
		acc := make([]float64, hi-lo)
		for r := 0; r < rows; r++ {
			rs := float64(rstd[r])
			x, d := in[r*C+lo:r*C+hi], dOut[r*C+lo:r*C+hi]
			for j := range x {
				acc[j] += float64(x[j]) * rs * float64(d[j])
			}
		}
		for j := range acc {
			dW[lo+j] += float32(acc[j])
		}
	})
}

// ---- Rotary position embeddings (llama) ----
//
// Head vectors are rotated in pairs (i, i + hd/2), i < hd/2, by the angle
// t·θ^(−2i/hd) at position t: (a, b) → (a·cos − b·sin, b·cos + a·sin). The
// tables hold cos and sin [T, hd/2], computed in float64.

func ropeTables(T, hd int, theta float64) (cos, sin []float32) {
	half := hd / 2
	cos, sin = make([]float32, T*half), make([]float32, T*half)
	for t := 0; t < T; t++ {
		for i := 0; i < half; i++ {
			ang := float64(t) * math.Pow(theta, -2*float64(i)/float64(hd))
			cos[t*half+i], sin[t*half+i] = float32(math.Cos(ang)), float32(math.Sin(ang))
		}
	}
	return cos, sin
}

// rope rotates, in place, heads head vectors of width hd starting at column
// off of every row of x [N·T, stride] (row r is position r mod T). inverse
// rotates the other way: the backward of a rotation is its transpose.
func rope(th int, x, cos, sin []float32, rows, T, stride, off, heads, hd int, inverse bool) {
	half := hd / 2
	forRange(th, rows, 16, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			t := r % T
			c, s := cos[t*half:(t+1)*half], sin[t*half:(t+1)*half]
			for h := 0; h < heads; h++ {
				v := x[r*stride+off+h*hd : r*stride+off+(h+1)*hd]
				a, b := v[:half], v[half:]
				for i := range a {
					si := s[i]
					if inverse {
						si = -si
					}
					a[i], b[i] = a[i]*c[i]-b[i]*si, b[i]*c[i]+a[i]*si
				}
			}
		}
	})
}

// ---- SwiGLU (llama): out = silu(gate) ⊙ up, silu(g) = g·σ(g) ----
//
// gu [rows, 2F] holds gate (first F columns) and up (next F) of each row, the
// output of the fused gate and up projections; out is [rows, F].

func swigluForward(th int, out, gu []float32, rows, F int) {
	forRange(th, rows, 16, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			g, u, o := gu[r*2*F:r*2*F+F], gu[r*2*F+F:(r+1)*2*F], out[r*F:(r+1)*F]
			for i := range o {
				gv := float64(g[i])
				o[i] = float32(gv/(1+expFast(-gv))) * u[i]
			}
		}
	})
}

// swigluBackward sets dgu [rows, 2F] from d [rows, F]:
// dgate = d·up·σ(g)·(1 + g·(1 − σ(g))), dup = d·silu(g).
func swigluBackward(th int, dgu, d, gu []float32, rows, F int) {
	forRange(th, rows, 16, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			g, u, dr := gu[r*2*F:r*2*F+F], gu[r*2*F+F:(r+1)*2*F], d[r*F:(r+1)*F]
			dg, du := dgu[r*2*F:r*2*F+F], dgu[r*2*F+F:(r+1)*2*F]
			for i := range dr {
				gv := float64(g[i])
				sg := 1 / (1 + expFast(-gv))
				dg[i] = float32(float64(dr[i]) * float64(u[i]) * sg * (1 + gv*(1-sg)))
				du[i] = float32(gv*sg) * dr[i]
			}
		}
	})
}

// ---- Softmax cross-entropy over the last dimension V ----

// crossEntropyForward writes each row's softmax probabilities into probs and
// returns the mean over rows of −log p[target]. targets nil: no loss (0).
func crossEntropyForward(th int, probs, logits []float32, targets []int32, rows, V int) float32 {
	losses := make([]float64, rows)
	forRange(th, rows, 32, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			l, p := logits[r*V:(r+1)*V], probs[r*V:(r+1)*V]
			mx := math.Inf(-1)
			for _, v := range l {
				if float64(v) > mx {
					mx = float64(v)
				}
			}
			var s float64
			for i, v := range l {
				e := expFast(float64(v) - mx)
				p[i] = float32(e)
				s += e
			}
			logZ := mx + math.Log(s)
			inv := 1 / s
			for i := range p {
				p[i] = float32(float64(p[i]) * inv)
			}
			if targets != nil {
				losses[r] = logZ - float64(l[targets[r]])
			}
		}
	})
	if targets == nil {
		return 0
	}
	var sum float64
	for _, v := range losses {
		sum += v
	}
	return float32(sum / float64(rows))
}

// crossEntropyBackward sets dLogits = (probs − onehot(target)) / rows, the
// gradient of the mean loss.
func crossEntropyBackward(th int, dLogits, probs []float32, targets []int32, rows, V int) {
	inv := 1 / float32(rows)
	forRange(th, rows, 32, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			d, p := dLogits[r*V:(r+1)*V], probs[r*V:(r+1)*V]
			for i, v := range p {
				d[i] = v * inv
			}
			d[targets[r]] -= inv
		}
	})
}
