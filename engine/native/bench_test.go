package native

import (
	"testing"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/spec/run"
)

// BenchCharset is an 80-character set, about the size of a real text's.
const BenchCharset = "\n !\"'(),-.0123456789:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

func benchStep(b *testing.B, m *run.Manifest, n int) {
	ss := make([]*Shard, len(m.Shards))
	for i := range ss {
		s, err := New().newShard(m, i)
		if err != nil {
			b.Fatal(err)
		}
		ss[i] = s
	}
	batch := batchFor(m, n, 1)
	flops := 0.0
	for i := range ss {
		f, _ := m.FLOPsPerSample(i)
		flops += f
	}
	for b.Loop() {
		var in []float32
		tapes := make([]engine.Tape, len(ss))
		for i, s := range ss {
			out, _, tp, err := s.Forward(batch, in, true)
			if err != nil {
				b.Fatal(err)
			}
			in, tapes[i] = out, tp
		}
		var g []float32
		for i := len(ss) - 1; i >= 0; i-- {
			g, _ = ss[i].Backward(tapes[i], g)
		}
		for _, s := range ss {
			_ = s.Step(1e-4, 1)
			s.ZeroGrad()
		}
	}
	sps := float64(n*b.N) / b.Elapsed().Seconds()
	b.ReportMetric(sps, "samples/s")
	b.ReportMetric(sps*flops/1e9, "GFLOP/s")
}

func BenchmarkTrainStepMLP64(b *testing.B)  { benchStep(b, run.NewMLPMNIST(1), 64) }
func BenchmarkTrainStepMLP128(b *testing.B) { benchStep(b, run.NewMLPMNIST(1), 128) }
func BenchmarkTrainStepGPT32(b *testing.B)  { benchStep(b, run.NewGPTChar(BenchCharset, 1), 32) }
