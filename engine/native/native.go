// Package native is the pure-Go training engine: float32 tensors, GEMMs on
// all cores through engine/native/kernels, no cgo. It implements engine.Engine
// for the built-in models and is the reference the other engines (the
// PyTorch worker) are checked against, so the models are defined here exactly.
//
// # Parameters
//
// Every shard's parameters, gradients and optimizer state are flat float32
// buffers laid out as run.Manifest.Layout says, starting from
// run.Manifest.InitParams. Weights are [out, in] row-major (torch.nn.Linear).
//
// # mlp-mnist
//
// Unit i is Linear(l{i}.w, l{i}.b): y = x·wᵀ + b. A ReLU follows every Linear
// but the model's final one, so activations between shards are post-ReLU
// [N, hidden]. The first shard reads Batch.X, N×input float32 values already
// scaled by the data loader. The last shard's output are the logits
// [N, classes]; the loss is softmax cross-entropy averaged over the N samples.
//
// # gpt-char
//
// A GPT-2 style pre-LayerNorm decoder. The first shard embeds:
// x[n,t] = wte[tok[n,t]] + wpe[t]. Block i then computes
//
//	x = x + attn.proj(attention(ln1(x)))
//	x = x + mlp.proj(gelu(mlp.fc(ln2(x))))
//
// where attention is causal multi-head self-attention: attn.qkv produces
// [q; k; v] (each C wide) per position, head h uses columns h·hd..(h+1)·hd of
// each (hd = C/n_head), scores are q·kᵀ/√hd masked to keys at or before the
// query, softmax over keys, then the probability-weighted sum of v; the heads'
// outputs are concatenated in head order. GELU is the tanh approximation
// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). LayerNorm normalises over C with
// the biased variance and eps 1e-5. The last shard applies lnf and head.w (no
// bias) to get logits [N, T, vocab]; the loss is cross-entropy averaged over
// all N×T positions. Activations between shards are the residual stream
// [N, T, C].
//
// # llama
//
// A Llama-style decoder without biases. The first shard embeds
// x[n,t] = wte[tok[n,t]] (no position table). Block i computes
//
//	x = x + attn.o(attention(rope(q, k), v)),  q, k, v = attn.{q,k,v}(rms(x)·attn_norm.w)
//	x = x + mlp.down(silu(mlp.gate(h)) ⊙ mlp.up(h)),  h = rms(x)·mlp_norm.w
//
// where rms(x) = x/√(mean(x²) + 1e-5) over C and silu(g) = g·σ(g). The n_head
// query heads and n_kv_head key/value heads are hd = C/n_head wide; query head
// h attends with key/value head h/(n_head/n_kv_head) (grouped-query attention
// when n_kv_head < n_head), causal softmax attention as in gpt-char. rope
// rotates each head vector's pairs (i, i+hd/2), i < hd/2, at position t by
// the angle t·rope_theta^(−2i/hd): (a, b) → (a·cos − b·sin, b·cos + a·sin)
// (the convention of Hugging Face's LlamaModel), with cos and sin computed in
// float64 and rounded to float32. The last shard applies the final RMSNorm
// (norm.w) and head.w, or wte when tie_embeddings, to get logits; loss and
// activations between shards are as in gpt-char.
//
// # Optimizers
//
// Step(lr, scale) first multiplies every gradient by scale (the caller's
// clipping and averaging factor: clip by the global norm across shards with
// GradNormSq), then, with t the step count after this step:
//
//   - adamw (OptState = m then v): p ← p·(1 − lr·wd) for decayed tensors;
//     m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
//     p ← p − lr·(m/(1−β1ᵗ)) / (√(v/(1−β2ᵗ)) + eps), in float32 like
//     torch.optim.AdamW.
//   - sgd (OptState = momentum buffer b): g ← g + wd·p for decayed tensors;
//     b ← μ·b + g; p ← p − lr·b. This is torch.optim.SGD (dampening 0, no
//     Nesterov); its first step sets b = g, as b starts at zero.
//
// Weight decay applies to 2-D weight matrices only (Linear weights and
// head.w), never to biases, LayerNorm or RMSNorm weights or the embeddings
// wte, wpe (a tied head is wte, so it is not decayed either).
//
// # Determinism and threads
//
// All work is split between goroutines so that each output element is always
// computed in the same order: results are bit-identical for a given manifest
// and inputs, whatever the thread count. (Machines with AVX2/FMA and those on
// the pure-Go kernels round differently; kernels.Accelerated says which.)
// Reductions inside LayerNorm, softmax, the loss and the bias and LayerNorm
// gradients use float64.
//
// # Buffers and concurrency
//
// Forward copies its inputs into the tape and returns fresh output and
// input-gradient slices that the caller owns. Several micro-batches may be in
// flight at once: Forwards run concurrently, Backwards (which add into the
// gradient buffer) and Step are serialised. Bad input (wrong lengths, NaN or
// Inf values, ids out of range, a reused or foreign tape) returns
// engine.ErrShape, ErrNonFinite, ErrRange or ErrTape and never panics.
package native

import (
	"fmt"
	"runtime"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/spec/run"
)

// Engine builds native shards. It holds no resources; Close is a no-op.
type Engine struct {
	threads int
}

// Option configures an Engine.
type Option func(*Engine)

// WithThreads sets how many goroutines one Forward, Backward or Step uses
// (default GOMAXPROCS). Values below 1 mean 1.
func WithThreads(n int) Option {
	return func(e *Engine) { e.threads = max(n, 1) }
}

// New returns a native engine.
func New(opts ...Option) *Engine {
	e := &Engine{threads: runtime.GOMAXPROCS(0)}
	for _, o := range opts {
		o(e)
	}
	return e
}

var _ engine.Engine = (*Engine)(nil)

// Name is "native".
func (e *Engine) Name() string { return "native" }

// Threads is the number of goroutines a shard's operations use.
func (e *Engine) Threads() int { return e.threads }

// Close does nothing.
func (e *Engine) Close() error { return nil }

// NewShard builds shard index of run m with its initial parameters and zero
// gradients and optimizer state. The manifest must be valid.
func (e *Engine) NewShard(m *run.Manifest, index int) (engine.Shard, error) {
	return e.newShard(m, index)
}

func (e *Engine) newShard(m *run.Manifest, index int) (*Shard, error) {
	if m == nil {
		return nil, fmt.Errorf("native: nil manifest")
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("native: %w", err)
	}
	layout, err := m.Layout(index)
	if err != nil {
		return nil, fmt.Errorf("native: %w", err)
	}
	params, err := m.InitParams(index)
	if err != nil {
		return nil, fmt.Errorf("native: %w", err)
	}
	s := &Shard{
		threads: e.threads,
		man:     m,
		index:   index,
		first:   index == 0,
		last:    index == len(m.Shards)-1,
		layout:  layout,
		tensors: map[string][]float32{},
		grads:   make([]float32, len(params)),
		params:  params,
		opt:     m.Optimizer,
	}
	stateLen := len(params)
	if m.Optimizer.Name == "adamw" {
		stateLen *= 2
	}
	s.state = make([]float32, stateLen)
	for _, t := range layout {
		s.tensors[t.Name] = params[t.Offset : t.Offset+t.Size()]
	}
	if !s.first {
		s.inSize = m.ActivationSize(index - 1)
	}
	s.outSize = m.ActivationSize(index)
	if r := m.Training.ActivationRank; r > 0 {
		view := func(buf []float32, name string) []float32 { return layoutView(layout, buf, name) }
		sp := m.Shards[index]
		s.cut = cutProj{rank: r, rows: m.RowsPerSample()}
		if !s.first {
			s.cut.up, s.cut.dup = view(params, run.CutUpName(sp.Start)), view(s.grads, run.CutUpName(sp.Start))
			s.cut.upW = m.CutWidth(index - 1)
		}
		if !s.last {
			s.cut.down, s.cut.ddown = view(params, run.CutDownName(sp.End)), view(s.grads, run.CutDownName(sp.End))
			s.cut.downW = m.CutWidth(index)
		}
	}
	switch m.Model.Arch {
	case run.ArchMLPMNIST:
		s.model = newMLP(s)
		if s.first {
			s.inSize = m.Model.Input
		}
	case run.ArchGPTChar:
		s.model = newGPT(s)
	case run.ArchLlama:
		s.model = newLlama(s)
	default:
		return nil, fmt.Errorf("native: unknown architecture %q", m.Model.Arch)
	}
	return s, nil
}
