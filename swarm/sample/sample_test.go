package sample

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/engine/native"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/pipeline"
)

func tinyLlama(t *testing.T, shards int) (*run.Manifest, [][]float32) {
	t.Helper()
	m, err := run.NewLlama(run.PresetLlamaTiny, "abcdefgh \n", shards)
	if err != nil {
		t.Fatal(err)
	}
	m.Model.NLayer, m.Model.NEmbd, m.Model.FFNHidden, m.Model.BlockSize = 2, 16, 24, 8
	m.Shards = run.EvenShards(2, shards)
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var params [][]float32
	for i := range m.Shards {
		p, _ := m.InitParams(i)
		for j := range p {
			p[j] += float32(rng.NormFloat64() * 0.3)
		}
		params = append(params, p)
	}
	return m, params
}

// byHand runs window through every shard of m on a fresh engine and
// returns the last one's logits; boundary, if given, changes each shard's
// output before the next one takes it.
func byHand(t *testing.T, m *run.Manifest, params [][]float32, window []int32, boundary func([]float32)) []float32 {
	t.Helper()
	eng := native.New(native.WithThreads(1))
	var in []float32
	for i := range m.Shards {
		sh, err := eng.NewShard(m, i)
		if err != nil {
			t.Fatal(err)
		}
		copy(sh.Params(), params[i])
		b := &engine.Batch{N: 1}
		if i == 0 {
			b.Tokens = window
		}
		if in, _, _, err = sh.Forward(b, in, false); err != nil {
			t.Fatal(err)
		}
		if i < len(m.Shards)-1 && boundary != nil {
			boundary(in)
		}
	}
	return in
}

// The next token's logits depend only on the context: whatever pads the
// window after it, they equal that position's logits of a full forward.
func TestNextLogitsIgnoresPadding(t *testing.T) {
	m, params := tinyLlama(t, 2)
	md, err := New(m, params, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	ctx := []int32{3, 1, 4}
	got, err := md.NextLogits(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The same window padded with other tokens, through a fresh engine.
	in := byHand(t, m, params, []int32{3, 1, 4, 9, 9, 7, 2, 5}, nil)
	V := m.Model.Vocab
	want := in[2*V : 3*V]
	for i := range want {
		if math.Abs(float64(got[i]-want[i])) > 1e-5 {
			t.Fatalf("logit %d: %g with zero padding, %g with other tokens after the context", i, got[i], want[i])
		}
	}
	if slices.Equal(got, in[3*V:4*V]) {
		t.Fatal("positions 2 and 3 have the same logits: the check cannot tell them apart")
	}
}

// Generate is reproducible from its seed, runs past the context length and
// refuses a prompt with a token outside the vocabulary, naming model.vocab.
func TestGenerate(t *testing.T) {
	m, params := tinyLlama(t, 1)
	md, err := New(m, params, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	o := Options{Temperature: 0.8, TopK: 5, Seed: 9}
	var emitted []int32
	a, err := md.Generate([]int32{1, 2}, 20, o, func(id int32) error { emitted = append(emitted, id); return nil })
	if err != nil {
		t.Fatal(err)
	}
	b, _ := md.Generate([]int32{1, 2}, 20, o, nil)
	if len(a) != 20 || !slices.Equal(a, b) || !slices.Equal(a, emitted) {
		t.Fatalf("two draws with one seed: %v and %v (emitted %v)", a, b, emitted)
	}
	o.Seed = 10
	c, _ := md.Generate([]int32{1, 2}, 20, o, nil)
	if slices.Equal(a, c) {
		t.Fatalf("seeds 9 and 10 drew the same 20 tokens %v", a)
	}
	_, err = md.Generate([]int32{1, int32(m.Model.Vocab)}, 3, o, nil)
	if !errors.Is(err, ErrPrompt) || !strings.Contains(err.Error(), "model.vocab") {
		t.Fatalf("prompt token out of range: %v", err)
	}
	if _, err := md.Generate(nil, 3, o, nil); !errors.Is(err, ErrPrompt) {
		t.Fatalf("empty prompt: %v", err)
	}
	codec, _ := NewCodec(m)
	if _, err := codec.Encode("abz"); err == nil || !strings.Contains(err.Error(), `'z'`) {
		t.Fatalf("a character outside the charset: %v", err)
	}
}

// Draw: temperature 0 takes the most likely token, top-k keeps the k most
// likely, and the draw follows softmax(logits / temperature).
func TestDraw(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	logits := []float32{0, float32(math.Log(3)), -1, 2}
	if id := Draw(logits, 0, 0, rng); id != 3 {
		t.Fatalf("greedy drew %d", id)
	}
	counts := map[int32]int{}
	const n = 40000
	for range n {
		counts[Draw(logits, 1, 2, rng)]++
	}
	if counts[0]+counts[2] != 0 {
		t.Fatalf("top-2 drew tokens outside it: %v", counts)
	}
	// Tokens 3 and 1 in proportion e² : 3.
	want := math.Exp(2) / (math.Exp(2) + 3)
	if got := float64(counts[3]) / n; math.Abs(got-want) > 0.01 {
		t.Fatalf("token 3 drawn %.3f of the time, want %.3f", got, want)
	}
	// A high temperature flattens: all four tokens appear.
	counts = map[int32]int{}
	for range 1000 {
		counts[Draw(logits, 5, 0, rng)]++
	}
	if len(counts) != 4 {
		t.Fatalf("temperature 5 drew %v", counts)
	}
}

// A model trained with topk activations sees its boundaries as the
// pipeline sent them: each position's kept values in bf16, the rest zero.
// Positions are selected one by one, so the logits still ignore what pads
// the window.
func TestNextLogitsTopKBoundary(t *testing.T) {
	m, params := tinyLlama(t, 2)
	dense, err := New(m, params, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer dense.Close()
	topk := *m // dense keeps m
	m = &topk
	m.Training.Activations, m.Training.ActivationKeep = run.ActivationsTopK, 0.25
	md, err := New(m, params, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	ctx := []int32{3, 1, 4}
	got, err := md.NextLogits(ctx)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := dense.NextLogits(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Equal(got, plain) {
		t.Fatal("the topk boundary changed nothing")
	}
	// By hand, with other tokens padding the window.
	in := byHand(t, m, params, []int32{3, 1, 4, 9, 9, 7, 2, 5}, func(out []float32) {
		if len(out) != m.Model.BlockSize*m.Model.NEmbd {
			t.Fatalf("boundary of %d values", len(out))
		}
		pipeline.Received(out, m.Model.NEmbd, 4) // a quarter of 16
	})
	V := m.Model.Vocab
	want := in[2*V : 3*V]
	for i := range want {
		if math.Abs(float64(got[i]-want[i])) > 1e-5 {
			t.Fatalf("logit %d: %g, want %g", i, got[i], want[i])
		}
	}
}
