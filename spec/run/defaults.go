package run

import (
	"fmt"
	"strings"
)

// NewMLPMNIST returns a validated-defaults manifest for the MNIST MLP
// (784-1024-1024-10) split into the given number of shards (1 to 3). The
// defaults reach about 98% test accuracy with `swarm train` in 600 steps of
// 128 samples (1.3 epochs, about 25 s on two cores).
func NewMLPMNIST(shards int) *Manifest {
	m := &Manifest{
		Version: SchemaVersion,
		Name:    "mlp-mnist",
		Seed:    1,
		Model:   ModelSpec{Arch: ArchMLPMNIST, Input: 784, Hidden: []int{1024, 1024}, Classes: 10},
		Dataset: DatasetSpec{Name: DatasetMNIST, ValFraction: 0},
		Optimizer: OptimizerSpec{
			Name: "adamw", LR: 1e-3, MinLR: 1e-5, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8,
			WeightDecay: 0, ClipNorm: 1, WarmupSteps: 20, DecaySteps: 580,
		},
		Training:  TrainingSpec{BatchSize: 64, TargetBatch: 128, Steps: 600},
		Averaging: AveragingSpec{Mode: ModeSync, GroupSize: 4, MinGroupSize: 2, Compression: CompressNone, TimeoutMS: 5000},
	}
	if m.Split(shards) != nil {
		m.Shards = EvenShards(m.Model.Units(), shards) // Validate names the problem
	}
	return m
}

// NewGPTChar returns a defaults manifest for the character-level GPT over the
// given character set, split into the given number of shards (1 to 4). The
// defaults are sized for a CPU: on the Opticks text they reach a validation
// loss near 1.86 nats per character in 600 steps of 64 windows of 32
// characters (about 70 s on two cores), against 2.45 for a bigram model.
func NewGPTChar(charset string, shards int) *Manifest {
	m := &Manifest{
		Version: SchemaVersion,
		Name:    "gpt-char",
		Seed:    1,
		Model:   ModelSpec{Arch: ArchGPTChar, Vocab: len([]rune(charset)), BlockSize: 32, NLayer: 4, NHead: 4, NEmbd: 64},
		Dataset: DatasetSpec{Name: DatasetText, Charset: charset, ValFraction: 0.1},
		Optimizer: OptimizerSpec{
			Name: "adamw", LR: 5e-3, MinLR: 5e-4, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8,
			WeightDecay: 0.1, ClipNorm: 1, WarmupSteps: 30, DecaySteps: 570,
		},
		Training:  TrainingSpec{BatchSize: 32, TargetBatch: 64, Steps: 600},
		Averaging: AveragingSpec{Mode: ModeSync, GroupSize: 4, MinGroupSize: 2, Compression: CompressNone, TimeoutMS: 5000},
	}
	if m.Split(shards) != nil {
		m.Shards = EvenShards(m.Model.Units(), shards) // Validate names the problem
	}
	return m
}

// Llama presets (LlamaPreset names them).
const (
	PresetLlamaTiny = "llama-tiny"
	PresetLlama124M = "llama-124m"
	PresetLlama350M = "llama-350m"
)

// LlamaPresets lists the preset names, smallest first.
var LlamaPresets = []string{PresetLlamaTiny, PresetLlama124M, PresetLlama350M}

// LlamaPreset returns the model of a Llama preset for a vocabulary of vocab
// tokens and whether its head is tied to the embedding (as one shard):
//
//   - llama-tiny: 4 blocks of width 64, 4 query and 2 key/value heads
//     (grouped-query attention), SwiGLU 176, context 64: about 0.2M
//     parameters plus 128 per vocabulary entry; sized for CI and a CPU.
//   - llama-124m: 12 blocks of width 768, 12 heads, SwiGLU 2048, context
//     1024, tied head: 123.6M parameters with GPT-2's 50,257 tokens.
//   - llama-350m: 24 blocks of width 1024, 16 heads, SwiGLU 2688, context
//     1024, tied head: 350.4M parameters with GPT-2's 50,257 tokens.
//
// A tied head needs a single shard; split, the larger presets get their own
// head (+38.6M and +51.5M parameters with 50,257 tokens).
func LlamaPreset(name string, vocab int) (ModelSpec, error) {
	m := ModelSpec{Arch: ArchLlama, Vocab: vocab, RopeTheta: 10000}
	switch name {
	case PresetLlamaTiny:
		m.BlockSize, m.NLayer, m.NHead, m.NKVHead, m.NEmbd, m.FFNHidden = 64, 4, 4, 2, 64, 176
	case PresetLlama124M:
		m.BlockSize, m.NLayer, m.NHead, m.NKVHead, m.NEmbd, m.FFNHidden = 1024, 12, 12, 12, 768, 2048
		m.TieEmbeddings = true
	case PresetLlama350M:
		m.BlockSize, m.NLayer, m.NHead, m.NKVHead, m.NEmbd, m.FFNHidden = 1024, 24, 16, 16, 1024, 2688
		m.TieEmbeddings = true
	default:
		return ModelSpec{}, fmt.Errorf("unknown llama preset %q (want %s)", name, strings.Join(LlamaPresets, ", "))
	}
	return m, nil
}

// NewLlama returns a defaults manifest for a Llama preset over the text
// dataset with the given character set, split into the given number of
// shards (balanced by FLOPs; a split preset unties its head). llama-tiny's
// training defaults are those of gpt-char; the larger presets get a GPT-2
// style schedule (lr 6e-4, 2,000 warm-up steps of 8 sequences per micro-batch)
// meant as a starting point for a GPU swarm.
func NewLlama(preset, charset string, shards int) (*Manifest, error) {
	md, err := LlamaPreset(preset, len([]rune(charset)))
	if err != nil {
		return nil, err
	}
	if shards > 1 {
		md.TieEmbeddings = false
	}
	m := NewGPTChar(charset, 1)
	m.Name, m.Model = preset, md
	if preset != PresetLlamaTiny {
		m.Optimizer = OptimizerSpec{
			Name: "adamw", LR: 6e-4, MinLR: 6e-5, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8,
			WeightDecay: 0.1, ClipNorm: 1, WarmupSteps: 2000, DecaySteps: 18000,
		}
		m.Training = TrainingSpec{BatchSize: 8, TargetBatch: 256, Steps: 20000}
	}
	if err := m.Split(shards); err != nil {
		return nil, err
	}
	return m, nil
}

// LRAt is the learning rate of optimizer step (0-based): linear warm-up to LR,
// then cosine decay to MinLR over DecaySteps, then MinLR.
func (o OptimizerSpec) LRAt(step int) float64 {
	if step < o.WarmupSteps {
		return o.LR * float64(step+1) / float64(o.WarmupSteps)
	}
	if o.DecaySteps == 0 {
		return o.LR
	}
	t := float64(step-o.WarmupSteps) / float64(o.DecaySteps)
	if t >= 1 {
		return o.MinLR
	}
	return o.MinLR + 0.5*(o.LR-o.MinLR)*(1+cosPi(t))
}
