package native

import (
	"fmt"

	"github.com/swarm-train/swarm/engine"
)

// llama is the shard's Llama blocks, with the token embedding on the first
// shard and the final RMSNorm, head and loss on the last.
type llama struct {
	s                   *Shard
	V, T, C, NH, NKV, F int
	hd, W               int // head width; q, k and v of one position together
	cos, sin            []float32
	blocks, dblocks     []llamaBlock
	wte, dwte           []float32
	normW, dnormW       []float32
	headW, dheadW       []float32 // wte and dwte when the head is tied
}

// llamaBlock views one block's tensors. qkv is attn.q.w, attn.k.w and
// attn.v.w as one [W, C] matrix, gu is mlp.gate.w and mlp.up.w as one
// [2F, C] matrix (adjacent in the layout).
type llamaBlock struct {
	attnNorm, qkv, o, mlpNorm, gu, down []float32
}

// llamaActs is what one block's forward keeps; rows R = N·T.
type llamaActs struct {
	x      []float32 // block input [R,C]
	n1, r1 []float32 // attn_norm output [R,C], rstd [R]
	qkv    []float32 // [R,W], q and k rotated
	att    []float32 // [N,NH,T,T]
	atty   []float32 // [R,C] attention output before attn.o
	res2   []float32 // [R,C] x + attn
	n2, r2 []float32 // mlp_norm output [R,C], rstd [R]
	gu     []float32 // [R,2F] gate and up
	h      []float32 // [R,F] silu(gate)·up
	res3   []float32 // [R,C] block output
}

func newLlama(s *Shard) *llama {
	md := s.man.Model
	g := &llama{s: s, V: md.Vocab, T: md.BlockSize, C: md.NEmbd, NH: md.NHead, NKV: md.NKVHead, F: md.FFNHidden, hd: md.HeadDim()}
	g.W = (g.NH + 2*g.NKV) * g.hd
	g.cos, g.sin = ropeTables(g.T, g.hd, md.RopeTheta)
	span := func(buf []float32, first, last string) []float32 { return layoutSpan(s.layout, buf, first, last) }
	view := func(buf []float32, name string) []float32 { return span(buf, name, name) }
	sp := s.man.Shards[s.index]
	for i := sp.Start; i < sp.End; i++ {
		p := fmt.Sprintf("h%d.", i)
		mk := func(buf []float32) llamaBlock {
			return llamaBlock{
				attnNorm: view(buf, p+"attn_norm.w"),
				qkv:      span(buf, p+"attn.q.w", p+"attn.v.w"),
				o:        view(buf, p+"attn.o.w"),
				mlpNorm:  view(buf, p+"mlp_norm.w"),
				gu:       span(buf, p+"mlp.gate.w", p+"mlp.up.w"),
				down:     view(buf, p+"mlp.down.w"),
			}
		}
		g.blocks = append(g.blocks, mk(s.params))
		g.dblocks = append(g.dblocks, mk(s.grads))
	}
	if s.first {
		g.wte, g.dwte = view(s.params, "wte"), view(s.grads, "wte")
	}
	if s.last {
		g.normW, g.dnormW = view(s.params, "norm.w"), view(s.grads, "norm.w")
		if md.TieEmbeddings {
			g.headW, g.dheadW = g.wte, g.dwte
		} else {
			g.headW, g.dheadW = view(s.params, "head.w"), view(s.grads, "head.w")
		}
	}
	return g
}

func (g *llama) dims(n int) attnDims { return attnDims{N: n, T: g.T, NH: g.NH, NKV: g.NKV, hd: g.hd} }

func (g *llama) checkBatch(b *engine.Batch, needTargets bool) error {
	return g.s.checkTokenBatch(b, g.T, g.V, needTargets)
}

func (g *llama) arenaSize(n int) int {
	R, C, V, F, W := n*g.T, g.C, g.V, g.F, g.W
	att := n * g.NH * g.T * g.T
	perBlock := R*(5*C+W+3*F+2) + att
	total := R*C + len(g.blocks)*perBlock
	if g.s.last {
		total += R*(C+1) + 3*R*V // norm, rstd; logits, probs, dlogits
	}
	// Backward scratch: dres, dmid [R,C], dh [R,F], dgu [R,2F], dqkv [R,W], attention.
	total += R*(2*C+3*F+W) + att
	return total
}

func (g *llama) forward(t *tape, in []float32) ([]float32, float32) {
	th, n := g.s.threads, t.n
	T, C, F, W, V := g.T, g.C, g.F, g.W, g.V
	R := n * T
	x := t.alloc(R * C)
	if g.s.first {
		embedForward(th, x, t.tokens, g.wte, nil, n, T, C)
	} else {
		copy(x, in)
	}
	t.lblocks = make([]llamaActs, len(g.blocks))
	for i := range g.blocks {
		p, a := &g.blocks[i], &t.lblocks[i]
		a.x = x
		a.n1, a.r1 = t.alloc(R*C), t.alloc(R)
		a.qkv, a.att, a.atty = t.alloc(R*W), t.alloc(n*g.NH*T*T), t.alloc(R*C)
		a.res2 = t.alloc(R * C)
		a.n2, a.r2 = t.alloc(R*C), t.alloc(R)
		a.gu, a.h, a.res3 = t.alloc(R*2*F), t.alloc(R*F), t.alloc(R*C)

		rmsNormForward(th, a.n1, a.r1, x, p.attnNorm, R, C)
		linearForward(th, a.qkv, a.n1, p.qkv, nil, R, C, W)
		rope(th, a.qkv, g.cos, g.sin, R, T, W, 0, g.NH, g.hd, false)
		rope(th, a.qkv, g.cos, g.sin, R, T, W, g.NH*g.hd, g.NKV, g.hd, false)
		attnForward(th, a.atty, a.att, a.qkv, g.dims(n))
		linearForward(th, a.res2, a.atty, p.o, nil, R, C, C)
		addInPlace(th, a.res2, x)
		rmsNormForward(th, a.n2, a.r2, a.res2, p.mlpNorm, R, C)
		linearForward(th, a.gu, a.n2, p.gu, nil, R, C, 2*F)
		swigluForward(th, a.h, a.gu, R, F)
		linearForward(th, a.res3, a.h, p.down, nil, R, F, C)
		addInPlace(th, a.res3, a.res2)
		x = a.res3
	}
	t.x = x
	if !g.s.last {
		return append([]float32(nil), x...), 0
	}
	t.lnf, t.lnfr = t.alloc(R*C), t.alloc(R)
	t.logits, t.probs = t.alloc(R*V), t.alloc(R*V)
	rmsNormForward(th, t.lnf, t.lnfr, x, g.normW, R, C)
	linearForward(th, t.logits, t.lnf, g.headW, nil, R, C, V)
	return nil, crossEntropyForward(th, t.probs, t.logits, t.targets, R, V)
}

func (g *llama) logits(t *tape) []float32 { return t.logits }

func (g *llama) backward(t *tape, gradOut []float32) []float32 {
	th, n := g.s.threads, t.n
	T, C, F, W, V := g.T, g.C, g.F, g.W, g.V
	R := n * T
	dres, dmid := t.alloc(R*C), t.alloc(R*C)
	dh, dgu, dqkv := t.alloc(R*F), t.alloc(R*2*F), t.alloc(R*W)
	scratch := t.alloc(n * g.NH * T * T)
	if g.s.last {
		dlogits := t.alloc(R * V)
		crossEntropyBackward(th, dlogits, t.probs, t.targets, R, V)
		linearBackward(th, dmid, g.dheadW, nil, dlogits, t.lnf, g.headW, R, C, V)
		clear(dres)
		rmsNormBackward(th, dres, g.dnormW, dmid, t.x, t.lnfr, g.normW, R, C)
	} else {
		copy(dres, gradOut)
	}
	for i := len(g.blocks) - 1; i >= 0; i-- {
		p, dp, a := &g.blocks[i], &g.dblocks[i], &t.lblocks[i]
		// dres holds d(res3); res3 = res2 + down(swiglu(gu(norm2(res2)))).
		linearBackward(th, dh, dp.down, nil, dres, a.h, p.down, R, F, C)
		swigluBackward(th, dgu, dh, a.gu, R, F)
		linearBackward(th, dmid, dp.gu, nil, dgu, a.n2, p.gu, R, C, 2*F)
		rmsNormBackward(th, dres, dp.mlpNorm, dmid, a.res2, a.r2, p.mlpNorm, R, C)
		// dres holds d(res2); res2 = x + o(attention(rope(qkv(norm1(x))))).
		linearBackward(th, dmid, dp.o, nil, dres, a.atty, p.o, R, C, C)
		attnBackward(th, dqkv, scratch, dmid, a.att, a.qkv, g.dims(n))
		rope(th, dqkv, g.cos, g.sin, R, T, W, 0, g.NH, g.hd, true)
		rope(th, dqkv, g.cos, g.sin, R, T, W, g.NH*g.hd, g.NKV, g.hd, true)
		linearBackward(th, dmid, dp.qkv, nil, dqkv, a.n1, p.qkv, R, C, W)
		rmsNormBackward(th, dres, dp.attnNorm, dmid, a.x, a.r1, p.attnNorm, R, C)
	}
	if g.s.first {
		embedBackward(th, g.dwte, nil, dres, t.tokens, n, T, C)
		return nil
	}
	return append([]float32(nil), dres...)
}
