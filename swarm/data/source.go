// Package data feeds a run's model: MNIST and character-level text, split
// into training and held-out parts, sampled in an order that depends on the
// run seed, the node and the epoch, from a position that can be saved and
// restored.
package data

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math/rand/v2"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/spec/run"
)

// Position is where a source stands in its training stream: the data epoch
// (full passes over the training split; not the swarm's epoch, which the
// README defines under Architecture) and the number of samples already drawn
// in that data epoch. Saving it in a checkpoint and seeking back to it resumes the
// exact same sequence of batches.
type Position struct {
	Epoch  int64 `json:"epoch"`
	Offset int64 `json:"offset"`
}

// Source yields a run's training micro-batches and its held-out set. It is
// not safe for concurrent use.
type Source interface {
	// Next returns the next n training samples as a batch. Each epoch visits
	// every training sample once, in an order drawn from (run seed, node,
	// epoch); batches may span epoch boundaries.
	Next(n int) *engine.Batch
	// Position is the current place in the stream; Seek returns to one.
	Position() Position
	Seek(p Position) error
	// Len is the number of samples in the training split.
	Len() int
	// Eval is the held-out set a run reports on: the MNIST test set, or the
	// text validation split.
	Eval() *EvalSet
}

// EvalSet is a fixed held-out set read in order.
type EvalSet struct {
	// Name is "test" or "val".
	Name string
	// Len is the number of samples.
	Len int
	// Classes is the number of classes for a classification set (accuracy is
	// meaningful), 0 for a language-model set (loss only).
	Classes int
	batch   func(start, n int) *engine.Batch
}

// Batch returns samples [start, start+n) (cut at Len).
func (e *EvalSet) Batch(start, n int) *engine.Batch {
	if start+n > e.Len {
		n = e.Len - start
	}
	return e.batch(start, n)
}

// Option adjusts NewSource.
type Option func(*options)

type options struct{ dataDir string }

// WithDataDir reads MNIST from dir instead of $SWARM_DATA or the module
// cache; a text run looks there first for its corpus (by file name).
func WithDataDir(dir string) Option { return func(o *options) { o.dataDir = dir } }

// NewSource opens the run's data set for the node named node (any stable
// string, such as a peer ID; "" for a single-node run). Nodes of one run draw
// different orders from the same training split.
func NewSource(m *run.Manifest, node string, opts ...Option) (Source, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	switch m.Dataset.Name {
	case run.DatasetMNIST:
		return newMNISTSource(m, node, o)
	case run.DatasetText:
		return newTextSource(m, node, o)
	}
	return nil, fmt.Errorf("dataset.name: unknown dataset %q", m.Dataset.Name)
}

// sampler walks epoch permutations of [0, n).
type sampler struct {
	n         int
	seed      uint64
	node      uint64
	pos       Position
	perm      []int32
	permEpoch int64
}

func newSampler(n int, seed uint64, node string) *sampler {
	h := fnv.New64a()
	h.Write([]byte(node))
	return &sampler{n: n, seed: seed, node: h.Sum64(), permEpoch: -1}
}

func (s *sampler) next() int {
	if s.permEpoch != s.pos.Epoch {
		s.shuffle()
	}
	i := int(s.perm[s.pos.Offset])
	s.pos.Offset++
	if s.pos.Offset == int64(s.n) {
		s.pos = Position{Epoch: s.pos.Epoch + 1}
	}
	return i
}

func (s *sampler) shuffle() {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], s.node)
	binary.LittleEndian.PutUint64(b[8:], uint64(s.pos.Epoch))
	h := fnv.New64a()
	h.Write(b[:])
	rng := rand.New(rand.NewPCG(s.seed, h.Sum64()))
	if s.perm == nil {
		s.perm = make([]int32, s.n)
	}
	for i := range s.perm {
		s.perm[i] = int32(i)
	}
	rng.Shuffle(s.n, func(i, j int) { s.perm[i], s.perm[j] = s.perm[j], s.perm[i] })
	s.permEpoch = s.pos.Epoch
}

func (s *sampler) seek(p Position) error {
	if p.Epoch < 0 || p.Offset < 0 || p.Offset >= int64(s.n) {
		return fmt.Errorf("data position %+v: offset must be in [0, %d) and epoch non-negative", p, s.n)
	}
	s.pos = p
	return nil
}

// mnistSource serves MNIST: training split = the first (1-val_fraction) of
// the 60,000 training images, Eval = the 10,000 test images. Pixels are
// scaled to [0,1], then normalised with MNISTMean and MNISTStd.
type mnistSource struct {
	train, test *Images
	nTrain      int
	lut         [256]float32
	s           *sampler
}

func newMNISTSource(m *run.Manifest, node string, o options) (*mnistSource, error) {
	d, err := LoadMNIST(o.dataDir)
	if err != nil {
		return nil, err
	}
	if in := d.Train.Rows * d.Train.Cols; m.Model.Input != in {
		return nil, fmt.Errorf("model.input is %d but MNIST images have %d pixels", m.Model.Input, in)
	}
	if m.Model.Classes < 10 {
		return nil, fmt.Errorf("model.classes is %d but MNIST has 10", m.Model.Classes)
	}
	src := &mnistSource{train: d.Train, test: d.Test}
	src.nTrain = d.Train.N - int(float64(d.Train.N)*m.Dataset.ValFraction)
	for p := range src.lut {
		src.lut[p] = float32((float64(p)/255 - MNISTMean) / MNISTStd)
	}
	src.s = newSampler(src.nTrain, m.Seed, node)
	return src, nil
}

func (s *mnistSource) fill(set *Images, b *engine.Batch, slot, i int) {
	px := set.Rows * set.Cols
	x := b.X[slot*px : (slot+1)*px]
	for j, p := range set.Pixels[i*px : (i+1)*px] {
		x[j] = s.lut[p]
	}
	b.Targets[slot] = int32(set.Labels[i])
}

func (s *mnistSource) alloc(n int) *engine.Batch {
	return &engine.Batch{N: n, X: make([]float32, n*s.train.Rows*s.train.Cols), Targets: make([]int32, n)}
}

func (s *mnistSource) Next(n int) *engine.Batch {
	b := s.alloc(n)
	for k := 0; k < n; k++ {
		s.fill(s.train, b, k, s.s.next())
	}
	return b
}

func (s *mnistSource) Position() Position    { return s.s.pos }
func (s *mnistSource) Seek(p Position) error { return s.s.seek(p) }
func (s *mnistSource) Len() int              { return s.nTrain }

func (s *mnistSource) Eval() *EvalSet {
	return &EvalSet{Name: "test", Len: s.test.N, Classes: 10, batch: func(start, n int) *engine.Batch {
		b := s.alloc(n)
		for k := 0; k < n; k++ {
			s.fill(s.test, b, k, start+k)
		}
		return b
	}}
}

// textSource serves a character corpus: the first (1-val_fraction) of the
// text trains, the rest validates. A training sample is the block_size
// characters from any start position, with the next character at each
// position as target; validation samples are the non-overlapping windows of
// the validation split.
type textSource struct {
	train, val Tokens
	block      int
	s          *sampler
}

func newTextSource(m *run.Manifest, node string, o options) (*textSource, error) {
	toks, err := LoadTokens(m.Dataset, o.dataDir)
	if err != nil {
		return nil, err
	}
	cut := toks.Len() - int(float64(toks.Len())*m.Dataset.ValFraction)
	train, val := toks.Slice(0, cut), toks.Slice(cut, toks.Len())
	block := m.Model.BlockSize
	if train.Len() < block+1 {
		return nil, fmt.Errorf("corpus training split has %d tokens, fewer than block_size+1 = %d", train.Len(), block+1)
	}
	if m.Dataset.ValFraction > 0 && val.Len() < block+1 {
		return nil, fmt.Errorf("dataset.val_fraction: validation split has %d tokens, fewer than block_size+1 = %d", val.Len(), block+1)
	}
	src := &textSource{train: train, val: val, block: block}
	src.s = newSampler(train.Len()-block, m.Seed, node)
	return src, nil
}

// SplitTokens cuts a token stream into its training head and validation tail.
func SplitTokens(toks []int32, valFraction float64) (train, val []int32) {
	cut := len(toks) - int(float64(len(toks))*valFraction)
	return toks[:cut], toks[cut:]
}

func (s *textSource) window(b *engine.Batch, slot int, toks Tokens, start int) {
	B := s.block
	toks.Copy(b.Tokens[slot*B:(slot+1)*B], start)
	toks.Copy(b.Targets[slot*B:(slot+1)*B], start+1)
}

func (s *textSource) alloc(n int) *engine.Batch {
	return &engine.Batch{N: n, Tokens: make([]int32, n*s.block), Targets: make([]int32, n*s.block)}
}

func (s *textSource) Next(n int) *engine.Batch {
	b := s.alloc(n)
	for k := 0; k < n; k++ {
		s.window(b, k, s.train, s.s.next())
	}
	return b
}

func (s *textSource) Position() Position    { return s.s.pos }
func (s *textSource) Seek(p Position) error { return s.s.seek(p) }
func (s *textSource) Len() int              { return s.s.n }

func (s *textSource) Eval() *EvalSet {
	n := 0
	if s.val.Len() > s.block {
		n = (s.val.Len() - 1) / s.block
	}
	return &EvalSet{Name: "val", Len: n, batch: func(start, cnt int) *engine.Batch {
		b := s.alloc(cnt)
		for k := 0; k < cnt; k++ {
			s.window(b, k, s.val, (start+k)*s.block)
		}
		return b
	}}
}
