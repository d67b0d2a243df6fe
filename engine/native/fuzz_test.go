package native

import (
	"encoding/binary"
	"errors"
	"math"
	"testing"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/spec/run"
)

// FuzzShardInputs feeds peer-supplied buffers (activations, gradients, ids)
// of arbitrary sizes and values to every shard of the tiny models (the Llama
// with grouped-query attention, split and tied): each call
// either succeeds or fails with one of the engine's shared errors, and never
// panics.
func FuzzShardInputs(f *testing.F) {
	f.Add(uint8(2), uint8(0), []byte{1, 2, 3, 4, 5, 6, 7, 8})
	f.Add(uint8(1), uint8(1), []byte{0xff, 0xff, 0xc0, 0x7f, 0, 0, 0, 0}) // NaN
	f.Add(uint8(3), uint8(2), make([]byte, 64*4))
	f.Add(uint8(0), uint8(3), []byte{})
	f.Add(uint8(1), uint8(2), make([]byte, 8*4))   // a whole llama sequence of token 0
	f.Add(uint8(1), uint8(8), make([]byte, 8*4))   // the tied llama
	f.Add(uint8(2), uint8(5), make([]byte, 256*4)) // llama shard 1: residual and targets
	mlp := buildShardsF(f, tinyMLP(2))
	gpt := buildShardsF(f, tinyGPT(2))
	llama := append(buildShardsF(f, tinyLlama(2)), buildShardsF(f, tinyLlamaTied())...)
	f.Fuzz(func(t *testing.T, n uint8, which uint8, data []byte) {
		floats := make([]float32, len(data)/4)
		ids := make([]int32, len(data)/4)
		for i := range floats {
			u := binary.LittleEndian.Uint32(data[4*i:])
			floats[i] = math.Float32frombits(u)
			ids[i] = int32(u % 16)
		}
		b := &engine.Batch{N: int(n % 5), X: floats, Tokens: ids, Targets: ids}
		ss := [][]*Shard{mlp, gpt, llama}[which%3]
		s := ss[int(which/3)%len(ss)]
		var in []float32
		if !s.first {
			in = floats
		}
		out, _, tp, err := s.Forward(b, in, true)
		if err != nil {
			if !errors.Is(err, engine.ErrShape) && !errors.Is(err, engine.ErrNonFinite) && !errors.Is(err, engine.ErrRange) {
				t.Fatalf("unexpected error: %v", err)
			}
			return
		}
		var gradOut []float32
		if out != nil {
			gradOut = floats[:min(len(floats), len(out))]
		}
		if _, err := s.Backward(tp, gradOut); err != nil {
			if !errors.Is(err, engine.ErrShape) && !errors.Is(err, engine.ErrNonFinite) {
				t.Fatalf("unexpected backward error: %v", err)
			}
			tp.Release()
		}
		s.ZeroGrad()
	})
}

func buildShardsF(f *testing.F, man *run.Manifest) []*Shard {
	f.Helper()
	var ss []*Shard
	for i := range man.Shards {
		s, err := New().newShard(man, i)
		if err != nil {
			f.Fatal(err)
		}
		ss = append(ss, s)
	}
	return ss
}
