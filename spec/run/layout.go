package run

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
)

// Tensor is one named parameter tensor inside a shard's flat parameter buffer.
// Shapes follow the [out, in] row-major convention of a Linear layer's weight.
type Tensor struct {
	Name   string `json:"name"`
	Shape  []int  `json:"shape"`
	Offset int    `json:"offset"` // in float32 elements from the start of the flat buffer
}

// Size is the number of elements.
func (t Tensor) Size() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Layout lists the parameter tensors of shard index, in buffer order. Every
// engine lays out its flat parameter, gradient and optimizer buffers this way,
// so buffers move between engines and nodes unchanged.
//
// mlp-mnist, unit i (Linear i): l{i}.w [out,in], l{i}.b [out]; ReLU follows
// every Linear but the last.
//
// gpt-char: first shard: wte [vocab,C], wpe [block_size,C]; block i:
// h{i}.ln1.{w,b} [C], h{i}.attn.qkv.{w [3C,C], b [3C]}, h{i}.attn.proj.{w [C,C],
// b [C]}, h{i}.ln2.{w,b} [C], h{i}.mlp.fc.{w [4C,C], b [4C]},
// h{i}.mlp.proj.{w [C,4C], b [C]}; last shard: lnf.{w,b} [C], head.w [vocab,C].
//
// llama (no biases; hd = C/n_head, Q = n_head·hd = C, KV = n_kv_head·hd,
// F = ffn_hidden): first shard: wte [vocab,C]; block i: h{i}.attn_norm.w [C],
// h{i}.attn.q.w [Q,C], h{i}.attn.k.w [KV,C], h{i}.attn.v.w [KV,C],
// h{i}.attn.o.w [C,Q], h{i}.mlp_norm.w [C], h{i}.mlp.gate.w [F,C],
// h{i}.mlp.up.w [F,C], h{i}.mlp.down.w [C,F]; last shard: norm.w [C] and,
// unless tie_embeddings, head.w [vocab,C]. q, k and v are adjacent (as are
// gate and up), so an engine may treat them as one [Q+2KV, C] (or [2F, C])
// matrix.
//
// With training.activation_rank r, every shard but the first starts with
// cut{u}.up.w [w,r] (u its first unit, w the row width leaving the shard
// before: CutWidth) and every shard but the last ends with
// cut{u}.down.w [r,w] (u its end unit): the learned projection pair at
// cut u.
func (m *Manifest) Layout(index int) ([]Tensor, error) {
	if index < 0 || index >= len(m.Shards) {
		return nil, fmt.Errorf("shard %d: run has %d shards", index, len(m.Shards))
	}
	s := m.Shards[index]
	first, last := index == 0, index == len(m.Shards)-1
	var ts []Tensor
	add := func(name string, shape ...int) { ts = append(ts, Tensor{Name: name, Shape: shape}) }
	md := m.Model
	if r := m.Training.ActivationRank; r > 0 && !first {
		add(CutUpName(s.Start), m.CutWidth(index-1), r)
	}
	switch md.Arch {
	case ArchMLPMNIST:
		widths := append(append([]int{md.Input}, md.Hidden...), md.Classes)
		for i := s.Start; i < s.End; i++ {
			add(fmt.Sprintf("l%d.w", i), widths[i+1], widths[i])
			add(fmt.Sprintf("l%d.b", i), widths[i+1])
		}
	case ArchGPTChar:
		c := md.NEmbd
		if first {
			add("wte", md.Vocab, c)
			add("wpe", md.BlockSize, c)
		}
		for i := s.Start; i < s.End; i++ {
			p := fmt.Sprintf("h%d.", i)
			add(p+"ln1.w", c)
			add(p+"ln1.b", c)
			add(p+"attn.qkv.w", 3*c, c)
			add(p+"attn.qkv.b", 3*c)
			add(p+"attn.proj.w", c, c)
			add(p+"attn.proj.b", c)
			add(p+"ln2.w", c)
			add(p+"ln2.b", c)
			add(p+"mlp.fc.w", 4*c, c)
			add(p+"mlp.fc.b", 4*c)
			add(p+"mlp.proj.w", c, 4*c)
			add(p+"mlp.proj.b", c)
		}
		if last {
			add("lnf.w", c)
			add("lnf.b", c)
			add("head.w", md.Vocab, c)
		}
	case ArchLlama:
		c, kv, f := md.NEmbd, md.NKVHead*md.HeadDim(), md.FFNHidden
		if first {
			add("wte", md.Vocab, c)
		}
		for i := s.Start; i < s.End; i++ {
			p := fmt.Sprintf("h%d.", i)
			add(p+"attn_norm.w", c)
			add(p+"attn.q.w", c, c)
			add(p+"attn.k.w", kv, c)
			add(p+"attn.v.w", kv, c)
			add(p+"attn.o.w", c, c)
			add(p+"mlp_norm.w", c)
			add(p+"mlp.gate.w", f, c)
			add(p+"mlp.up.w", f, c)
			add(p+"mlp.down.w", c, f)
		}
		if last {
			add("norm.w", c)
			if !md.TieEmbeddings {
				add("head.w", md.Vocab, c)
			}
		}
	default:
		return nil, fmt.Errorf("unknown architecture %q", md.Arch)
	}
	if r := m.Training.ActivationRank; r > 0 && !last {
		add(CutDownName(s.End), r, m.CutWidth(index))
	}
	off := 0
	for i := range ts {
		ts[i].Offset = off
		off += ts[i].Size()
	}
	return ts, nil
}

// NumParams is the number of float32 parameters in shard index.
func (m *Manifest) NumParams(index int) (int, error) {
	ts, err := m.Layout(index)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, t := range ts {
		n += t.Size()
	}
	return n, nil
}

// CutUpName and CutDownName name the learned projections at the cut before
// unit u (training.activation_rank): the up-projection opens the shard
// starting at u, the down-projection closes the shard ending there.
func CutUpName(u int) string   { return fmt.Sprintf("cut%d.up.w", u) }
func CutDownName(u int) string { return fmt.Sprintf("cut%d.down.w", u) }

// CutWidth is the width of one row of shard index's output, before any
// learned projection (training.activation_rank): a language model's
// position (n_embd), or an MLP sample's last hidden layer. 0 on the last
// shard.
func (m *Manifest) CutWidth(index int) int {
	if index < 0 || index >= len(m.Shards)-1 {
		return 0
	}
	md := m.Model
	switch md.Arch {
	case ArchMLPMNIST:
		return md.Hidden[m.Shards[index].End-1]
	case ArchGPTChar, ArchLlama:
		return md.NEmbd
	}
	return 0
}

// ActivationRow is the width of one row of the activations leaving shard
// index, as they cross the cut: training.activation_rank when set, else
// CutWidth. It is the unit topk activations select within
// (training.activation_keep of each row). A language model's row is one
// position, so a position's values depend on nothing after it; another
// model's is a sample.
func (m *Manifest) ActivationRow(index int) int {
	w := m.CutWidth(index)
	if w > 0 && m.Training.ActivationRank > 0 {
		return m.Training.ActivationRank
	}
	return w
}

// RowsPerSample is how many activation rows one sample is: a language
// model's positions (block_size), else 1.
func (m *Manifest) RowsPerSample() int {
	if m.Model.LanguageModel() {
		return m.Model.BlockSize
	}
	return 1
}

// ActivationSize is the number of float32 values per sample that shard index
// sends to the next shard (and receives back as gradients). For the last
// shard it is 0: it ends in the loss.
func (m *Manifest) ActivationSize(index int) int {
	return m.RowsPerSample() * m.ActivationRow(index)
}

// MaxEvalLogits bounds the logits of one evaluation micro-batch (samples ×
// block_size × vocab for a language model): 32M float32 values, 128 MiB a
// buffer. With GPT-2's 50,257 tokens and a context of 1024 that is one sample.
const MaxEvalLogits = 1 << 25

// EvalBatch caps an evaluation micro-batch of n samples so its logits stay
// within MaxEvalLogits; it is at least 1.
func (m *Manifest) EvalBatch(n int) int {
	md := m.Model
	per := md.Classes
	if md.LanguageModel() {
		per = md.BlockSize * md.Vocab
	}
	if per > 0 && n*per > MaxEvalLogits {
		n = MaxEvalLogits / per
	}
	return max(n, 1)
}

// FLOPsPerSample estimates the floating-point operations of one training step
// (forward and backward) of shard index for one sample: 6 per weight use in
// matrix products (2 forward, 4 backward) plus attention's score and mix
// products; element-wise work is not counted.
func (m *Manifest) FLOPsPerSample(index int) (float64, error) {
	ts, err := m.Layout(index)
	if err != nil {
		return 0, err
	}
	md := m.Model
	uses := 1.0 // weight uses per sample
	if md.LanguageModel() {
		uses = float64(md.BlockSize)
	}
	var f float64
	for _, t := range ts {
		if len(t.Shape) == 2 && t.Name != "wte" && t.Name != "wpe" {
			f += 6 * uses * float64(t.Size())
		}
	}
	if md.TieEmbeddings && index == len(m.Shards)-1 {
		f += 6 * uses * float64(md.Vocab*md.NEmbd) // the head, which is wte
	}
	if md.LanguageModel() {
		s := m.Shards[index]
		// QK^T and AV: 2 products of T×T×C each, forward 2 FLOPs, backward 4 (causal half not discounted).
		T, C := float64(md.BlockSize), float64(md.NEmbd)
		f += float64(s.End-s.Start) * 2 * 6 * T * T * C / 2
	}
	return f, nil
}

// InitParams returns shard index's initial parameters. Every tensor is drawn
// from a generator seeded by the run seed and the tensor's name alone, so a
// model split any way, on any engine, starts from the same values.
func (m *Manifest) InitParams(index int) ([]float32, error) {
	ts, err := m.Layout(index)
	if err != nil {
		return nil, err
	}
	n := 0
	for _, t := range ts {
		n += t.Size()
	}
	buf := make([]float32, n)
	for _, t := range ts {
		m.initTensor(t, buf[t.Offset:t.Offset+t.Size()])
	}
	return buf, nil
}

func (m *Manifest) initTensor(t Tensor, dst []float32) {
	name := t.Name
	if u, up, ok := cutTensor(name); ok {
		m.initCut(u, up, t.Shape, dst)
		return
	}
	h := fnv.New64a()
	h.Write([]byte(t.Name))
	rng := rand.New(rand.NewPCG(m.Seed, h.Sum64()))
	isBias := len(name) >= 2 && name[len(name)-2:] == ".b"
	isLNWeight := len(t.Shape) == 1 && !isBias
	switch {
	case isBias:
		// zero
	case isLNWeight:
		for i := range dst {
			dst[i] = 1
		}
	case m.Model.Arch == ArchMLPMNIST:
		// Kaiming-uniform for ReLU layers: U(-b, b), b = sqrt(6 / fan_in).
		b := math.Sqrt(6 / float64(t.Shape[1]))
		for i := range dst {
			dst[i] = float32((rng.Float64()*2 - 1) * b)
		}
	default:
		std := 0.02
		if hasSuffix(name, "attn.proj.w") || hasSuffix(name, "mlp.proj.w") || hasSuffix(name, "attn.o.w") || hasSuffix(name, "mlp.down.w") {
			std /= math.Sqrt(2 * float64(m.Model.NLayer))
		}
		for i := range dst {
			dst[i] = float32(rng.NormFloat64() * std)
		}
	}
}

// IsCutTensor reports whether name is one of the learned projections at a
// cut (training.activation_rank).
func IsCutTensor(name string) bool {
	_, _, ok := cutTensor(name)
	return ok
}

// cutTensor parses a learned projection's name (CutUpName, CutDownName).
func cutTensor(name string) (u int, up, ok bool) {
	var kind string
	if n, err := fmt.Sscanf(name, "cut%d.%s", &u, &kind); n != 2 || err != nil || u < 0 {
		return 0, false, false
	}
	switch name {
	case CutUpName(u):
		return u, true, true
	case CutDownName(u):
		return u, false, true
	}
	return 0, false, false
}

// initCut starts the projection pair at cut u as one matrix P [r,w] with
// orthonormal rows (a random r-dimensional subspace, drawn from the run
// seed and the cut alone) and its transpose: the down-projection is P, the
// up-projection Pᵀ, so at the start a row crosses the cut as its
// orthogonal projection onto that subspace, whatever the shards' engines.
func (m *Manifest) initCut(u int, up bool, shape []int, dst []float32) {
	r, w := shape[0], shape[1]
	if up {
		w, r = r, w
	}
	h := fnv.New64a()
	h.Write([]byte(CutDownName(u)))
	rng := rand.New(rand.NewPCG(m.Seed, h.Sum64()))
	p := make([]float64, r*w)
	for i := range p {
		p[i] = rng.NormFloat64()
	}
	// Modified Gram–Schmidt over the rows (r < w, so they are
	// independent with probability one; a row that loses its norm to
	// rounding is drawn again).
	for i := 0; i < r; i++ {
		row := p[i*w : (i+1)*w]
		for {
			for j := 0; j < i; j++ {
				prev := p[j*w : (j+1)*w]
				var dot float64
				for k := range row {
					dot += row[k] * prev[k]
				}
				for k := range row {
					row[k] -= dot * prev[k]
				}
			}
			var norm float64
			for _, v := range row {
				norm += v * v
			}
			if norm = math.Sqrt(norm); norm > 1e-6 {
				for k := range row {
					row[k] /= norm
				}
				break
			}
			for k := range row {
				row[k] = rng.NormFloat64()
			}
		}
	}
	for i := 0; i < r; i++ {
		for k := 0; k < w; k++ {
			if up {
				dst[k*r+i] = float32(p[i*w+k])
			} else {
				dst[i*w+k] = float32(p[i*w+k])
			}
		}
	}
}

func hasSuffix(s, suffix string) bool {
	return len(s) >= len(suffix) && s[len(s)-len(suffix):] == suffix
}

func cosPi(t float64) float64 { return math.Cos(math.Pi * t) }

// BalancedShards splits the model of m into n contiguous shards whose
// training FLOPs per sample are as even as possible: it minimises the most
// expensive shard's cost (the pipeline's bottleneck). Unequal units — the
// MLP's 784×1024 and 1024×10 layers, the GPT's and Llama's head, counted
// with the last block — make this differ from
// EvenShards, which counts units.
func BalancedShards(m *Manifest, n int) ([]ShardSpec, error) {
	units := m.Model.Units()
	if n < 1 || n > units {
		return nil, fieldErr("shards", "%d shards for a model of %d units: want 1 to %d", n, units, units)
	}
	per := *m
	per.Shards = EvenShards(units, units)
	per.Training.ActivationRank = 0  // the cuts' projections are not the units' cost
	cost := make([]float64, units+1) // prefix sums of per-unit FLOPs
	for i := 0; i < units; i++ {
		f, err := per.FLOPsPerSample(i)
		if err != nil {
			return nil, err
		}
		cost[i+1] = cost[i] + f
	}
	// best[k][u]: the smallest bottleneck splitting units [0, u) into k shards;
	// cut[k][u]: where the last of those k shards starts.
	inf := math.Inf(1)
	best := make([][]float64, n+1)
	cut := make([][]int, n+1)
	for k := range best {
		best[k] = make([]float64, units+1)
		cut[k] = make([]int, units+1)
		for u := range best[k] {
			best[k][u] = inf
		}
	}
	best[0][0] = 0
	for k := 1; k <= n; k++ {
		for u := k; u <= units; u++ {
			for s := k - 1; s < u; s++ {
				if b := math.Max(best[k-1][s], cost[u]-cost[s]); b < best[k][u] {
					best[k][u], cut[k][u] = b, s
				}
			}
		}
	}
	shards := make([]ShardSpec, n)
	end := units
	for k := n; k >= 1; k-- {
		start := cut[k][end]
		shards[k-1] = ShardSpec{Index: k - 1, Start: start, End: end}
		end = start
	}
	return shards, nil
}

// Split replaces m's shards with n shards balanced by FLOPs (BalancedShards).
func (m *Manifest) Split(n int) error {
	s, err := BalancedShards(m, n)
	if err != nil {
		return err
	}
	m.Shards = s
	return nil
}
