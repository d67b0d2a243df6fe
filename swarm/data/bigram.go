package data

import (
	"fmt"
	"math"

	"github.com/swarm-train/swarm/spec/run"
)

// Bigram is a count-based token bigram model with add-k smoothing: the
// baseline a language model must beat.
type Bigram struct {
	Vocab  int
	K      float64           // smoothing pseudo-count added to every pair
	counts []float64         // Vocab×Vocab pair counts, row = previous token (small vocabularies)
	pairs  map[int64]float64 // the same, only the pairs seen (large vocabularies)
	rows   []float64         // row sums
}

// denseBigramMax is the largest vocabulary counted in a dense table.
const denseBigramMax = 2048

// bigramGrid are the pseudo-counts FitBigram chooses from.
var bigramGrid = []float64{0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1}

// FitBigram counts the pairs of train. If k > 0 it is the pseudo-count;
// otherwise the pseudo-count is tuned: the one (from 0.001 to 1) with the
// lowest loss on the last tenth of train when fitted on the rest.
func FitBigram(train []int32, vocab int, k float64) *Bigram {
	if k <= 0 {
		head, tail := SplitTokens(train, 0.1)
		fit := countBigram(head, vocab)
		best := math.Inf(1)
		for _, g := range bigramGrid {
			fit.K = g
			if l := fit.Loss(tail); l < best {
				best, k = l, g
			}
		}
	}
	b := countBigram(train, vocab)
	b.K = k
	return b
}

func countBigram(toks []int32, vocab int) *Bigram {
	b := &Bigram{Vocab: vocab, rows: make([]float64, vocab)}
	if vocab <= denseBigramMax {
		b.counts = make([]float64, vocab*vocab)
	} else {
		b.pairs = map[int64]float64{}
	}
	for i := 0; i+1 < len(toks); i++ {
		if b.pairs != nil {
			b.pairs[int64(toks[i])*int64(vocab)+int64(toks[i+1])]++
		} else {
			b.counts[int(toks[i])*vocab+int(toks[i+1])]++
		}
		b.rows[toks[i]]++
	}
	return b
}

func (b *Bigram) count(p, q int) float64 {
	if b.pairs != nil {
		return b.pairs[int64(p)*int64(b.Vocab)+int64(q)]
	}
	return b.counts[p*b.Vocab+q]
}

// Loss is the mean negative log-likelihood (nats) of each token of toks but
// the first given the one before it.
func (b *Bigram) Loss(toks []int32) float64 {
	if len(toks) < 2 {
		return math.NaN()
	}
	var sum float64
	for i := 0; i+1 < len(toks); i++ {
		p, q := int(toks[i]), int(toks[i+1])
		sum -= math.Log((b.count(p, q) + b.K) / (b.rows[p] + b.K*float64(b.Vocab)))
	}
	return sum / float64(len(toks)-1)
}

// TextSplits reads and encodes a text run's corpus and returns its training
// and validation token streams (as NewSource splits them).
func TextSplits(m *run.Manifest) (train, val []int32, err error) {
	if m.Dataset.Name != run.DatasetText {
		return nil, nil, fmt.Errorf("dataset.name is %q, not %s", m.Dataset.Name, run.DatasetText)
	}
	text, err := LoadCorpus(m.Dataset, "")
	if err != nil {
		return nil, nil, err
	}
	toks, err := TextTokens(m.Dataset, text)
	if err != nil {
		return nil, nil, err
	}
	train, val = SplitTokens(toks, m.Dataset.ValFraction)
	return train, val, nil
}

// BigramBaseline fits a tuned bigram model on a text run's training split and
// returns its loss on exactly the targets the network is validated on (the
// non-overlapping block_size windows of the validation split), and the
// pseudo-count chosen.
func BigramBaseline(m *run.Manifest) (loss, k float64, err error) {
	train, val, err := TextSplits(m)
	if err != nil {
		return 0, 0, err
	}
	B := m.Model.BlockSize
	n := 0
	if len(val) > B {
		n = (len(val) - 1) / B
	}
	if n == 0 {
		return 0, 0, fmt.Errorf("dataset.val_fraction: validation split has no full window of block_size %d", B)
	}
	b := FitBigram(train, m.Model.Vocab, 0)
	// Windows cover val[0 : n*B+1]; each target's context in the bigram is the
	// token before it, which is inside the same window.
	return b.Loss(val[:n*B+1]), b.K, nil
}
