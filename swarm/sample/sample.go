// Package sample draws text from a trained language model (gpt-char or
// llama) with the native engine: the run's tokenizer turns a prompt into
// tokens, every shard's forward gives the next token's logits, and
// temperature and top-k shape the draw.
package sample

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/engine/native"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/data"
	"github.com/swarm-train/swarm/swarm/pipeline"
)

// Codec turns text into the run's tokens and back.
type Codec interface {
	Encode(text string) ([]int32, error)
	Decode(ids []int32) (string, error)
}

// ErrPrompt: the prompt is empty or has tokens outside the model's
// vocabulary.
var ErrPrompt = errors.New("sample: bad prompt")

type charCodec struct {
	chars []rune
	set   string
}

func (c charCodec) Encode(text string) ([]int32, error) { return data.Encode(text, c.set) }

func (c charCodec) Decode(ids []int32) (string, error) {
	out := make([]rune, len(ids))
	for i, id := range ids {
		if id < 0 || int(id) >= len(c.chars) {
			return "", fmt.Errorf("token %d is %d, outside the charset of %d", i, id, len(c.chars))
		}
		out[i] = c.chars[id]
	}
	return string(out), nil
}

// NewCodec returns the tokenizer of m's data set: its character set, or the
// subword tokenizer its token file was cut with.
func NewCodec(m *run.Manifest) (Codec, error) {
	if !m.Model.LanguageModel() {
		return nil, fmt.Errorf("sample: model.arch is %s, not a language model", m.Model.Arch)
	}
	if m.Dataset.Tokenizer != "" {
		return data.NewTokenizer(m.Dataset.Tokenizer)
	}
	return charCodec{chars: []rune(m.Dataset.Charset), set: m.Dataset.Charset}, nil
}

// Options shape the draw.
type Options struct {
	// Temperature divides the logits; 0 takes the most likely token.
	Temperature float64
	// TopK keeps only the K most likely tokens (≤ 0: all).
	TopK int
	// Seed seeds the draw: the same seed, prompt and model give the same text.
	Seed uint64
	// Threads for the native engine (≤ 0: its default).
	Threads int
}

// Model is a whole language model on the native engine.
type Model struct {
	m      *run.Manifest
	shards []engine.Shard
	vocab  int
	T      int
}

// New builds every shard of m on the native engine with params[i] as shard
// i's parameters.
func New(m *run.Manifest, params [][]float32, threads int) (*Model, error) {
	if !m.Model.LanguageModel() {
		return nil, fmt.Errorf("sample: model.arch is %s, not a language model", m.Model.Arch)
	}
	if len(params) != len(m.Shards) {
		return nil, fmt.Errorf("sample: %d parameter buffers for %d shards", len(params), len(m.Shards))
	}
	var opts []native.Option
	if threads > 0 {
		opts = append(opts, native.WithThreads(threads))
	}
	eng := native.New(opts...)
	md := &Model{m: m, vocab: m.Model.Vocab, T: m.Model.BlockSize}
	for i, p := range params {
		sh, err := eng.NewShard(m, i)
		if err != nil {
			md.Close()
			return nil, err
		}
		md.shards = append(md.shards, sh)
		if len(p) != len(sh.Params()) {
			md.Close()
			return nil, fmt.Errorf("sample: shard %d has %d parameters, the run's layout %d", i, len(p), len(sh.Params()))
		}
		copy(sh.Params(), p)
		if err := sh.Sync(); err != nil {
			md.Close()
			return nil, err
		}
	}
	return md, nil
}

// Close releases the shards.
func (md *Model) Close() {
	for _, s := range md.shards {
		s.Close()
	}
	md.shards = nil
}

// NextLogits returns the logits of the token after ctx: the model sees the
// last block_size tokens of ctx at positions 0…L−1 (the window is padded
// after them; causal attention keeps the padding out of position L−1).
func (md *Model) NextLogits(ctx []int32) ([]float32, error) {
	if len(ctx) == 0 {
		return nil, fmt.Errorf("%w: no tokens", ErrPrompt)
	}
	if len(ctx) > md.T {
		ctx = ctx[len(ctx)-md.T:]
	}
	tokens := make([]int32, md.T)
	copy(tokens, ctx)
	var in []float32
	for i, sh := range md.shards {
		b := &engine.Batch{N: 1}
		if i == 0 {
			b.Tokens = tokens
		}
		out, _, _, err := sh.Forward(b, in, false)
		if err != nil {
			return nil, fmt.Errorf("shard %d: %w", i, err)
		}
		if i < len(md.shards)-1 && md.m.Training.Activations == run.ActivationsTopK {
			// The next shard was trained on what a topk boundary sends.
			w := md.m.ActivationRow(i)
			out = append([]float32(nil), out...)
			pipeline.Received(out, w, md.m.Training.ActivationsKept(w))
		}
		in = out
	}
	L := len(ctx)
	return in[(L-1)*md.vocab : L*md.vocab], nil
}

// Generate draws n tokens after prompt; each one is handed to emit as it is
// drawn (emit may be nil). It returns the drawn tokens.
func (md *Model) Generate(prompt []int32, n int, o Options, emit func(int32) error) ([]int32, error) {
	if len(prompt) == 0 {
		return nil, fmt.Errorf("%w: no tokens", ErrPrompt)
	}
	for i, id := range prompt {
		if id < 0 || int(id) >= md.vocab {
			return nil, fmt.Errorf("%w: token %d is %d, outside the model's vocabulary of %d (model.vocab)", ErrPrompt, i, id, md.vocab)
		}
	}
	if o.Temperature < 0 || math.IsNaN(o.Temperature) || math.IsInf(o.Temperature, 0) {
		return nil, fmt.Errorf("sample: temperature %g: want a finite value ≥ 0", o.Temperature)
	}
	rng := rand.New(rand.NewPCG(o.Seed, 0x5a3b1e))
	ctx := append([]int32(nil), prompt...)
	var drawn []int32
	for range n {
		logits, err := md.NextLogits(ctx)
		if err != nil {
			return drawn, err
		}
		id := Draw(logits, o.Temperature, o.TopK, rng)
		drawn = append(drawn, id)
		ctx = append(ctx, id)
		if len(ctx) > md.T {
			ctx = ctx[len(ctx)-md.T:]
		}
		if emit != nil {
			if err := emit(id); err != nil {
				return drawn, err
			}
		}
	}
	return drawn, nil
}

// Draw picks a token from logits: the most likely at temperature 0 (the
// lowest id among equals), otherwise from softmax(logits/temperature)
// restricted to the topK most likely (all when topK ≤ 0).
func Draw(logits []float32, temperature float64, topK int, rng *rand.Rand) int32 {
	idx := make([]int, len(logits))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return logits[idx[a]] > logits[idx[b]] })
	if temperature == 0 {
		return int32(idx[0])
	}
	if topK > 0 && topK < len(idx) {
		idx = idx[:topK]
	}
	mx := float64(logits[idx[0]])
	w := make([]float64, len(idx))
	var z float64
	for i, j := range idx {
		w[i] = math.Exp((float64(logits[j]) - mx) / temperature)
		z += w[i]
	}
	u := rng.Float64() * z
	for i, j := range idx {
		u -= w[i]
		if u < 0 {
			return int32(j)
		}
	}
	return int32(idx[len(idx)-1])
}
