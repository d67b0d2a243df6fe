package engine

import (
	"math/rand/v2"

	"github.com/swarm-train/swarm/spec/run"
)

// RandomBatch is a synthetic micro-batch of n samples shaped for m's model:
// uniform [0,1) inputs and uniform class or token ids, drawn from seed. It
// serves throughput measurements and engine comparisons, where the values
// do not matter but the shapes and ranges do.
func RandomBatch(m *run.Manifest, n int, seed uint64) *Batch {
	r := rand.New(rand.NewPCG(seed, 7))
	b := &Batch{N: n}
	md := m.Model
	if md.Arch == run.ArchMLPMNIST {
		b.X = make([]float32, n*md.Input)
		for i := range b.X {
			b.X[i] = r.Float32()
		}
		b.Targets = make([]int32, n)
		for i := range b.Targets {
			b.Targets[i] = int32(r.IntN(md.Classes))
		}
		return b
	}
	b.Tokens = make([]int32, n*md.BlockSize)
	b.Targets = make([]int32, n*md.BlockSize)
	for i := range b.Tokens {
		b.Tokens[i] = int32(r.IntN(md.Vocab))
		b.Targets[i] = int32(r.IntN(md.Vocab))
	}
	return b
}
