package native

import (
	"fmt"

	"github.com/swarm-train/swarm/engine"
)

// gpt is the shard's transformer blocks, with the embeddings on the first
// shard and lnf, head and loss on the last.
type gpt struct {
	s               *Shard
	V, T, C, NH     int
	blocks          []blockParams // parameters; gradient views in dblocks
	dblocks         []blockParams
	wte, wpe        []float32
	dwte, dwpe      []float32
	lnfW, lnfB      []float32
	dlnfW, dlnfB    []float32
	headW, dheadW   []float32
	lastShardBlocks int
}

type blockParams struct {
	ln1W, ln1B, qkvW, qkvB, projW, projB, ln2W, ln2B, fcW, fcB, fcProjW, fcProjB []float32
}

// blockActs is what one block's forward keeps; rows R = N·T.
type blockActs struct {
	x          []float32 // block input [R,C]
	ln1        []float32 // [R,C]
	ln1m, ln1r []float32 // [R]
	qkv        []float32 // [R,3C]
	att        []float32 // [N,NH,T,T]
	atty       []float32 // [R,C] attention output before proj
	res2       []float32 // [R,C] x + attn
	ln2        []float32 // [R,C]
	ln2m, ln2r []float32 // [R]
	fc         []float32 // [R,4C] before GELU
	gelu       []float32 // [R,4C]
	res3       []float32 // [R,C] block output
}

func newGPT(s *Shard) *gpt {
	md := s.man.Model
	g := &gpt{s: s, V: md.Vocab, T: md.BlockSize, C: md.NEmbd, NH: md.NHead}
	view := func(buf []float32, name string) []float32 { return layoutView(s.layout, buf, name) }
	sp := s.man.Shards[s.index]
	for i := sp.Start; i < sp.End; i++ {
		p := fmt.Sprintf("h%d.", i)
		mk := func(buf []float32) blockParams {
			return blockParams{
				ln1W: view(buf, p+"ln1.w"), ln1B: view(buf, p+"ln1.b"),
				qkvW: view(buf, p+"attn.qkv.w"), qkvB: view(buf, p+"attn.qkv.b"),
				projW: view(buf, p+"attn.proj.w"), projB: view(buf, p+"attn.proj.b"),
				ln2W: view(buf, p+"ln2.w"), ln2B: view(buf, p+"ln2.b"),
				fcW: view(buf, p+"mlp.fc.w"), fcB: view(buf, p+"mlp.fc.b"),
				fcProjW: view(buf, p+"mlp.proj.w"), fcProjB: view(buf, p+"mlp.proj.b"),
			}
		}
		g.blocks = append(g.blocks, mk(s.params))
		g.dblocks = append(g.dblocks, mk(s.grads))
	}
	if s.first {
		g.wte, g.dwte = view(s.params, "wte"), view(s.grads, "wte")
		g.wpe, g.dwpe = view(s.params, "wpe"), view(s.grads, "wpe")
	}
	if s.last {
		g.lnfW, g.dlnfW = view(s.params, "lnf.w"), view(s.grads, "lnf.w")
		g.lnfB, g.dlnfB = view(s.params, "lnf.b"), view(s.grads, "lnf.b")
		g.headW, g.dheadW = view(s.params, "head.w"), view(s.grads, "head.w")
	}
	return g
}

func (g *gpt) checkBatch(b *engine.Batch, needTargets bool) error {
	return g.s.checkTokenBatch(b, g.T, g.V, needTargets)
}

func (g *gpt) arenaSize(n int) int {
	R, C, V := n*g.T, g.C, g.V
	perBlock := R*(16*C+4) + n*g.NH*g.T*g.T
	total := R*C + len(g.blocks)*perBlock
	if g.s.last {
		total += R*(C+2) + 3*R*V // lnf, mean, rstd; logits, probs, dlogits
	}
	// Backward scratch: dres, dmid [R,C], dbig [R,4C], dqkv [R,3C], attention.
	total += R*9*C + n*g.NH*g.T*g.T
	return total
}

func (g *gpt) forward(t *tape, in []float32) ([]float32, float32) {
	th, n := g.s.threads, t.n
	T, C, NH, V := g.T, g.C, g.NH, g.V
	R := n * T
	x := t.alloc(R * C)
	if g.s.first {
		embedForward(th, x, t.tokens, g.wte, g.wpe, n, T, C)
	} else {
		copy(x, in)
	}
	t.blocks = make([]blockActs, len(g.blocks))
	for i := range g.blocks {
		p, a := &g.blocks[i], &t.blocks[i]
		a.x = x
		a.ln1, a.ln1m, a.ln1r = t.alloc(R*C), t.alloc(R), t.alloc(R)
		a.qkv, a.att, a.atty = t.alloc(R*3*C), t.alloc(n*NH*T*T), t.alloc(R*C)
		a.res2 = t.alloc(R * C)
		a.ln2, a.ln2m, a.ln2r = t.alloc(R*C), t.alloc(R), t.alloc(R)
		a.fc, a.gelu, a.res3 = t.alloc(R*4*C), t.alloc(R*4*C), t.alloc(R*C)

		layerNormForward(th, a.ln1, a.ln1m, a.ln1r, x, p.ln1W, p.ln1B, R, C)
		linearForward(th, a.qkv, a.ln1, p.qkvW, p.qkvB, R, C, 3*C)
		attentionForward(th, a.atty, a.att, a.qkv, n, T, C, NH)
		linearForward(th, a.res2, a.atty, p.projW, p.projB, R, C, C)
		addInPlace(th, a.res2, x)
		layerNormForward(th, a.ln2, a.ln2m, a.ln2r, a.res2, p.ln2W, p.ln2B, R, C)
		linearForward(th, a.fc, a.ln2, p.fcW, p.fcB, R, C, 4*C)
		geluForward(th, a.gelu, a.fc)
		linearForward(th, a.res3, a.gelu, p.fcProjW, p.fcProjB, R, 4*C, C)
		addInPlace(th, a.res3, a.res2)
		x = a.res3
	}
	t.x = x
	if !g.s.last {
		return append([]float32(nil), x...), 0
	}
	t.lnf, t.lnfm, t.lnfr = t.alloc(R*C), t.alloc(R), t.alloc(R)
	t.logits, t.probs = t.alloc(R*V), t.alloc(R*V)
	layerNormForward(th, t.lnf, t.lnfm, t.lnfr, x, g.lnfW, g.lnfB, R, C)
	linearForward(th, t.logits, t.lnf, g.headW, nil, R, C, V)
	return nil, crossEntropyForward(th, t.probs, t.logits, t.targets, R, V)
}

func (g *gpt) logits(t *tape) []float32 { return t.logits }

func (g *gpt) backward(t *tape, gradOut []float32) []float32 {
	th, n := g.s.threads, t.n
	T, C, NH, V := g.T, g.C, g.NH, g.V
	R := n * T
	dres, dmid := t.alloc(R*C), t.alloc(R*C)
	dbig, dqkv := t.alloc(R*4*C), t.alloc(R*3*C)
	scratch := t.alloc(n * NH * T * T)
	if g.s.last {
		dlogits := t.alloc(R * V)
		crossEntropyBackward(th, dlogits, t.probs, t.targets, R, V)
		linearBackward(th, dmid, g.dheadW, nil, dlogits, t.lnf, g.headW, R, C, V)
		clear(dres)
		layerNormBackward(th, dres, g.dlnfW, g.dlnfB, dmid, t.x, t.lnfm, t.lnfr, g.lnfW, R, C)
	} else {
		copy(dres, gradOut)
	}
	for i := len(g.blocks) - 1; i >= 0; i-- {
		p, dp, a := &g.blocks[i], &g.dblocks[i], &t.blocks[i]
		// dres holds d(res3); res3 = res2 + mlp(ln2(res2)).
		linearBackward(th, dbig, dp.fcProjW, dp.fcProjB, dres, a.gelu, p.fcProjW, R, 4*C, C)
		geluBackward(th, dbig, a.fc)
		linearBackward(th, dmid, dp.fcW, dp.fcB, dbig, a.ln2, p.fcW, R, C, 4*C)
		layerNormBackward(th, dres, dp.ln2W, dp.ln2B, dmid, a.res2, a.ln2m, a.ln2r, p.ln2W, R, C)
		// dres holds d(res2); res2 = x + proj(attention(ln1(x))).
		linearBackward(th, dmid, dp.projW, dp.projB, dres, a.atty, p.projW, R, C, C)
		attentionBackward(th, dqkv, scratch, dmid, a.att, a.qkv, n, T, C, NH)
		linearBackward(th, dmid, dp.qkvW, dp.qkvB, dqkv, a.ln1, p.qkvW, R, C, 3*C)
		layerNormBackward(th, dres, dp.ln1W, dp.ln1B, dmid, a.x, a.ln1m, a.ln1r, p.ln1W, R, C)
	}
	if g.s.first {
		embedBackward(th, g.dwte, g.dwpe, dres, t.tokens, n, T, C)
		return nil
	}
	return append([]float32(nil), dres...)
}

// addInPlace sets dst += src.
func addInPlace(th int, dst, src []float32) {
	forRange(th, len(dst), 1<<14, func(lo, hi int) {
		d, s := dst[lo:hi], src[lo:hi]
		for i := range d {
			d[i] += s[i]
		}
	})
}
