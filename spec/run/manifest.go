// Package run defines a training run: the manifest that names the model, its
// split into shards, the data, the optimizer and the averaging settings; the
// run ID derived from it; and the parameter layout every engine shares.
package run

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"

	"github.com/ipfs/go-cid"
	"github.com/multiformats/go-multihash"

	"github.com/swarm-train/swarm/internal/atomicfile"
)

// SchemaVersion is the manifest schema this code reads and writes.
const SchemaVersion = 1

// Architectures known to every engine.
const (
	ArchMLPMNIST = "mlp-mnist"
	ArchGPTChar  = "gpt-char"
	ArchLlama    = "llama"
)

// Datasets known to the data loaders.
const (
	DatasetMNIST = "mnist"
	DatasetText  = "text"
)

// Manifest defines a run. Its canonical JSON encoding hashes to the run ID.
type Manifest struct {
	Version   int           `json:"version"`
	Name      string        `json:"name"`
	Seed      uint64        `json:"seed"`
	Model     ModelSpec     `json:"model"`
	Shards    []ShardSpec   `json:"shards"`
	Dataset   DatasetSpec   `json:"dataset"`
	Optimizer OptimizerSpec `json:"optimizer"`
	Training  TrainingSpec  `json:"training"`
	Averaging AveragingSpec `json:"averaging"`
	// Admission says who may take part (nil: open to anyone who completes
	// the run hello). It is part of the run ID.
	Admission *AdmissionSpec `json:"admission,omitempty"`
	// Checkpoint is how often the swarm's nodes keep their shard's state
	// on disk (nil: the defaults, CheckpointSpec.Policy). Nodes may
	// override it (swarm node --checkpoint-every...).
	Checkpoint *CheckpointSpec `json:"checkpoint,omitempty"`
}

// CheckpointSpec is the nodes' checkpoint policy: a checkpoint every
// EveryEpochs collaborative epochs or EveryMinutes, whichever comes first,
// the newest Keep kept. Zero fields take the defaults.
type CheckpointSpec struct {
	EveryEpochs  int     `json:"every_epochs,omitempty"`
	EveryMinutes float64 `json:"every_minutes,omitempty"`
	Keep         int     `json:"keep,omitempty"`
}

// Checkpoint policy defaults and bounds.
const (
	DefaultCheckpointEpochs  = 50
	DefaultCheckpointMinutes = 10
	DefaultCheckpointKeep    = 3
	MaxCheckpointKeep        = 100
)

// Policy is the checkpoint policy with the defaults filled in (c may be nil).
func (c *CheckpointSpec) Policy() CheckpointSpec {
	p := CheckpointSpec{EveryEpochs: DefaultCheckpointEpochs, EveryMinutes: DefaultCheckpointMinutes, Keep: DefaultCheckpointKeep}
	if c != nil {
		if c.EveryEpochs > 0 {
			p.EveryEpochs = c.EveryEpochs
		}
		if c.EveryMinutes > 0 {
			p.EveryMinutes = c.EveryMinutes
		}
		if c.Keep > 0 {
			p.Keep = c.Keep
		}
	}
	return p
}

func (c *CheckpointSpec) validate() error {
	if c.EveryEpochs < 0 {
		return fieldErr("checkpoint.every_epochs", "must not be negative, got %d", c.EveryEpochs)
	}
	if !(c.EveryMinutes >= 0 && c.EveryMinutes <= 7*24*60) {
		return fieldErr("checkpoint.every_minutes", "must be in [0, %d], got %g", 7*24*60, c.EveryMinutes)
	}
	if c.Keep < 0 || c.Keep > MaxCheckpointKeep {
		return fieldErr("checkpoint.keep", "must be in [0, %d], got %d", MaxCheckpointKeep, c.Keep)
	}
	return nil
}

// ModelSpec names the architecture and its sizes. Fields that do not apply to
// the architecture must be zero.
type ModelSpec struct {
	Arch string `json:"arch"`
	// mlp-mnist: input width, hidden widths and number of classes.
	Input   int   `json:"input,omitempty"`
	Hidden  []int `json:"hidden,omitempty"`
	Classes int   `json:"classes,omitempty"`
	// gpt-char and llama: vocabulary, context length, depth, heads and width.
	Vocab     int `json:"vocab,omitempty"`
	BlockSize int `json:"block_size,omitempty"`
	NLayer    int `json:"n_layer,omitempty"`
	NHead     int `json:"n_head,omitempty"`
	NEmbd     int `json:"n_embd,omitempty"`
	// llama only: key/value heads (n_head divisible by it; fewer than
	// n_head is grouped-query attention), the SwiGLU hidden width, the
	// rotary embeddings' base, and whether the head reuses the token
	// embedding (one shard only: the embedding lives on the first shard,
	// the head on the last).
	NKVHead       int     `json:"n_kv_head,omitempty"`
	FFNHidden     int     `json:"ffn_hidden,omitempty"`
	RopeTheta     float64 `json:"rope_theta,omitempty"`
	TieEmbeddings bool    `json:"tie_embeddings,omitempty"`
}

// MaxModelDim bounds every size of a model (vocabulary, context, depth,
// heads, widths), so products of sizes fit an int and a manifest cannot ask
// an engine for absurd buffers by a typo.
const MaxModelDim = 1 << 20

// LanguageModel reports whether the model reads token ids and predicts the
// next token at every position (gpt-char, llama).
func (m ModelSpec) LanguageModel() bool { return m.Arch == ArchGPTChar || m.Arch == ArchLlama }

// HeadDim is the width of one attention head (n_embd / n_head).
func (m ModelSpec) HeadDim() int {
	if m.NHead <= 0 {
		return 0
	}
	return m.NEmbd / m.NHead
}

// ShardSpec is one contiguous stage: units [Start, End) of the model (Linear
// layers of the MLP, transformer blocks of the GPT). The first shard also holds
// the GPT's embeddings; the last holds the head and the loss.
type ShardSpec struct {
	Index int `json:"index"`
	Start int `json:"start"`
	End   int `json:"end"`
}

// DatasetSpec names the data. For text, Path empty means the Opticks text that
// ships with Go, and Charset is the ordered set of characters (the vocabulary).
// SHA256 (hex) pins the text's content: a node checks the file it found
// against it, so every node trains on the same text wherever its copy lives.
// Root pins the data files themselves (swarm/dataset: a CID of the list of
// the files' names, sizes and chunk CIDs): a node without the data fetches
// it from the run's peers and checks every chunk, and local copies are
// checked against it. Empty (older manifests): the data is found locally.
//
// Tokenizer set (text only): Path is a token file that `swarm data prepare`
// wrote with that tokenizer, SHA256 pins the file, Charset is empty and
// model.vocab is the tokenizer's vocabulary (TokenizerVocab).
type DatasetSpec struct {
	Name        string  `json:"name"`
	Path        string  `json:"path,omitempty"`
	SHA256      string  `json:"sha256,omitempty"`
	Charset     string  `json:"charset,omitempty"`
	Tokenizer   string  `json:"tokenizer,omitempty"`
	ValFraction float64 `json:"val_fraction"`
	Root        string  `json:"root,omitempty"`
}

// Tokenizers of prepared token files.
const (
	// TokenizerGPT2 is GPT-2's byte-level BPE (r50k_base): 50,257 tokens,
	// the last (50256) being <|endoftext|>, which separates documents.
	TokenizerGPT2 = "gpt2"
	// TokenizerBytes is one token a byte (0–255) and 256 for end-of-text:
	// any text, 257 tokens, for tiny runs.
	TokenizerBytes = "bytes"
)

// Tokenizers lists the tokenizers a token file may name.
var Tokenizers = []string{TokenizerGPT2, TokenizerBytes}

// TokenizerVocab is the vocabulary size of a tokenizer, 0 for an unknown one.
func TokenizerVocab(name string) int {
	switch name {
	case TokenizerGPT2:
		return 50257
	case TokenizerBytes:
		return 257
	}
	return 0
}

// OptimizerSpec is the (inner) optimizer and its schedule.
type OptimizerSpec struct {
	Name        string  `json:"name"` // "adamw" or "sgd"
	LR          float64 `json:"lr"`
	MinLR       float64 `json:"min_lr"`
	Beta1       float64 `json:"beta1,omitempty"`
	Beta2       float64 `json:"beta2,omitempty"`
	Eps         float64 `json:"eps,omitempty"`
	Momentum    float64 `json:"momentum,omitempty"`
	WeightDecay float64 `json:"weight_decay"`
	ClipNorm    float64 `json:"clip_norm"` // 0: no clipping
	WarmupSteps int     `json:"warmup_steps"`
	DecaySteps  int     `json:"decay_steps"` // cosine decay to MinLR over this many steps after warm-up; 0: constant
}

// TrainingSpec sizes the work.
type TrainingSpec struct {
	BatchSize   int `json:"batch_size"`   // samples in one micro-batch on one node
	TargetBatch int `json:"target_batch"` // samples the whole swarm accumulates per optimizer step (epoch)
	Steps       int `json:"steps"`        // optimizer steps (epochs) in the run
	// Activations is the precision of the activations and their gradients
	// sent between shards: fp32 (the default, also when empty), bf16,
	// which halves the pipeline's traffic for slow links, or int8 (blocks
	// of 64 values with a shared scale), which nearly quarters it, or topk
	// (each row's ActivationKeep largest magnitudes in bf16 with a bitmap,
	// the rest zero, the gradient back at the same places only; a row is
	// a sample, or a position of a language model: ActivationRow).
	Activations string `json:"activations,omitempty"`
	// ActivationKeep is, with topk activations, the fraction of each row's
	// boundary values sent (0, 1]; 1 sends every non-zero value.
	ActivationKeep float64 `json:"activation_keep,omitempty"`
	// ActivationRank, when positive, puts a learned low-rank projection
	// at every cut between shards: the shard before the cut ends with a
	// down-projection cut{u}.down.w [rank, width] and the shard after it
	// starts with an up-projection cut{u}.up.w [width, rank] (u the cut's
	// unit, width the row's: Manifest.CutWidth), both trained with the
	// rest of the model. A row crosses the cut as rank values instead of
	// width, and its gradient comes back the same size. It changes the
	// model, not only its traffic: an exported model keeps the bottleneck.
	ActivationRank int `json:"activation_rank,omitempty"`
	// SyncLossMargin (nats) is how much worse than a node's own state a
	// shard state offered by a single donor may do on held-out data for a
	// node with trained state to install it (0: DefaultSyncLossMargin);
	// states two donors offer alike need no check.
	SyncLossMargin float64 `json:"sync_loss_margin,omitempty"`
}

// DefaultSyncLossMargin is TrainingSpec.SyncLossMargin when unset, and
// MaxSyncLossMargin its largest value.
const (
	DefaultSyncLossMargin = 0.05
	MaxSyncLossMargin     = 10
)

// LossMargin is the held-out margin of single-donor state sync.
func (t TrainingSpec) LossMargin() float64 {
	if t.SyncLossMargin == 0 {
		return DefaultSyncLossMargin
	}
	return t.SyncLossMargin
}

// Precisions of the activations between shards.
const (
	ActivationsFP32 = "fp32"
	ActivationsBF16 = "bf16"
	// ActivationsInt8: blocks of 64 values sharing a float32 scale, one
	// signed byte a value (3.8× fewer bytes than fp32, 1.9× than bf16).
	ActivationsInt8 = "int8"
	// ActivationsTopK: each row's largest magnitudes (activation_keep of
	// them), bf16, and a bitmap of their places; the rest are zero.
	ActivationsTopK = "topk"
)

// ActivationsKept is, for topk activations, how many of a row's width
// boundary values are sent (Manifest.ActivationRow): activation_keep of
// them, rounded up; width for the other precisions.
func (t TrainingSpec) ActivationsKept(width int) int {
	if t.Activations != ActivationsTopK {
		return width
	}
	return min(width, max(1, int(math.Ceil(t.ActivationKeep*float64(width)-1e-9))))
}

// MaxLocalStepsFactor bounds averaging.max_local_steps as a multiple of
// local_steps.
const MaxLocalStepsFactor = 16

// Averaging modes.
const (
	ModeSync  = "sync"  // average gradients every epoch, then step together
	ModeLocal = "local" // DiLoCo: H local steps, average parameter deltas, outer Nesterov step
)

// Compression schemes for averaging.
const (
	CompressNone = "none"
	CompressFP16 = "fp16"
	CompressInt8 = "int8"
	CompressBF16 = "bf16"
)

// AveragingSpec configures how shard holders average.
type AveragingSpec struct {
	Mode         string `json:"mode"`
	GroupSize    int    `json:"group_size"`
	MinGroupSize int    `json:"min_group_size"`
	Compression  string `json:"compression"`
	TimeoutMS    int    `json:"timeout_ms"`
	LocalSteps   int    `json:"local_steps,omitempty"`
	// MaxLocalSteps (local mode with overlap), when above LocalSteps, lets
	// a round grow to as many inner steps as its outer round's averaging
	// takes, up to this many, so that compute does not stall behind a slow
	// link (swarm/epochs, pace.go); 0 or LocalSteps: rounds of LocalSteps.
	MaxLocalSteps int     `json:"max_local_steps,omitempty"`
	OuterLR       float64 `json:"outer_lr,omitempty"`
	OuterMomentum float64 `json:"outer_momentum,omitempty"`
	// Overlap (local mode): holders keep taking inner steps while the
	// round's deltas are averaged, and apply the outer step on top of the
	// progress made meanwhile, so communication hides behind compute.
	// Without it, drawing stops at the end of each round until the outer
	// step is taken.
	Overlap bool `json:"overlap,omitempty"`
	// DelayedUpdates (sync mode): an epoch's gradient round runs while the
	// next epoch's micro-batches compute on the parameters before its step,
	// which is applied when the round lands (one-step-delayed updates;
	// swarm/epochs, delayed.go). Communication hides behind compute at the
	// price of gradients one step stale.
	DelayedUpdates bool `json:"delayed_updates,omitempty"`
	// DeltaCodec (local mode) compresses the deltas of outer rounds:
	// "topk" sends, of each delta plus what earlier rounds left unsent
	// (error feedback), the fraction DeltaKeep of values largest in
	// magnitude, each quantized to DeltaBits (2, 4 or 8) bits with one
	// scale per 4096 values (internal/sparseq); "" or "none" sends the
	// deltas with Compression. Rounds that also average the outer state
	// (every 10th and the last) go uncompressed.
	DeltaCodec string  `json:"delta_codec,omitempty"`
	DeltaKeep  float64 `json:"delta_keep,omitempty"`
	DeltaBits  int     `json:"delta_bits,omitempty"`
	// Aggregation is how each reducer of a group combines the members'
	// values of its part: "mean" (or empty: the weighted mean), or, for runs
	// that admit peers who may lie, "centered-clip" (CenteredClip from the
	// coordinate median; ClipTau is τ as a multiple of the median distance of
	// the members' values from that median, default 2; ClipIters caps its
	// iterations, default 5) or "trimmed-mean" (per coordinate, drop the
	// ⌊n/4⌋ lowest and highest values). Robust aggregations also cap each
	// member's weight at the group's median weight.
	Aggregation string  `json:"aggregation,omitempty"`
	ClipTau     float64 `json:"clip_tau,omitempty"`
	ClipIters   int     `json:"clip_iters,omitempty"`
	// NormK, when set (≥ 1), rejects a member's part whose norm exceeds
	// NormK × the median norm of the group's values of that part: the member
	// is dropped from the round and the refusal counted ("outlier").
	NormK float64 `json:"norm_k,omitempty"`
	// AuditParts, when set (1 to 16), checks the reducers: after every
	// round each member re-computes that many parts of the other reducers'
	// shares, picked at random once they have signed what they returned,
	// and checks one part received from each; a reducer shown to lie is
	// banned for the run and its share stays local (averaging/audit.go).
	AuditParts int `json:"audit_parts,omitempty"`
	// AuditRate, in (0, 1), audits only that share of rounds, drawn by each
	// group together once every result is out (no reducer can tell an
	// unaudited round in advance); a reducer that lies in every round is
	// then banned after about 1/AuditRate times as many rounds. 0 or 1:
	// every round. Needs AuditParts.
	AuditRate float64 `json:"audit_rate,omitempty"`
}

// Delta codecs (AveragingSpec.DeltaCodec).
const (
	DeltaNone = "none"
	DeltaTopK = "topk"
)

// validateDelta checks the delta compression of local mode.
func (a AveragingSpec) validateDelta() error {
	switch a.DeltaCodec {
	case "", DeltaNone:
		if a.DeltaKeep != 0 {
			return fieldErr("averaging.delta_keep", "only with delta_codec topk (delta_codec is %q)", a.DeltaCodec)
		}
		if a.DeltaBits != 0 {
			return fieldErr("averaging.delta_bits", "only with delta_codec topk (delta_codec is %q)", a.DeltaCodec)
		}
		return nil
	case DeltaTopK:
	default:
		return fieldErr("averaging.delta_codec", "unknown codec %q (want none or topk)", a.DeltaCodec)
	}
	if a.Mode != ModeLocal {
		return fieldErr("averaging.delta_codec", "only for local mode (mode is %q)", a.Mode)
	}
	if !(a.DeltaKeep > 0 && a.DeltaKeep <= 1) {
		return fieldErr("averaging.delta_keep", "must be in (0, 1] (the fraction of each delta's values sent), got %g", a.DeltaKeep)
	}
	if a.DeltaBits != 2 && a.DeltaBits != 4 && a.DeltaBits != 8 {
		return fieldErr("averaging.delta_bits", "must be 2, 4 or 8, got %d", a.DeltaBits)
	}
	return nil
}

// Aggregations (AveragingSpec.Aggregation).
const (
	AggregateMean         = "mean"
	AggregateCenteredClip = "centered-clip"
	AggregateTrimmedMean  = "trimmed-mean"
)

// FieldError is a validation error that names the offending field by its JSON path.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Units is the number of split points' units of the model: Linear layers of
// the MLP, transformer blocks of the GPT.
func (m ModelSpec) Units() int {
	switch m.Arch {
	case ArchMLPMNIST:
		return len(m.Hidden) + 1
	case ArchGPTChar, ArchLlama:
		return m.NLayer
	}
	return 0
}

// Validate checks every field and returns the first problem found, naming the field.
func (m *Manifest) Validate() error {
	if m.Version != SchemaVersion {
		return fieldErr("version", "schema version %d not supported (want %d)", m.Version, SchemaVersion)
	}
	if strings.TrimSpace(m.Name) == "" {
		return fieldErr("name", "must not be empty")
	}
	if err := m.Model.validate(); err != nil {
		return err
	}
	if err := validateShards(m.Shards, m.Model.Units()); err != nil {
		return err
	}
	if m.Model.TieEmbeddings && len(m.Shards) != 1 {
		return fieldErr("model.tie_embeddings", "needs a single shard (the embedding lives on the first, the head on the last), the run has %d", len(m.Shards))
	}
	if err := m.validateDataset(); err != nil {
		return err
	}
	if err := m.Optimizer.validate(); err != nil {
		return err
	}
	t := m.Training
	if t.BatchSize <= 0 {
		return fieldErr("training.batch_size", "must be positive, got %d", t.BatchSize)
	}
	if t.TargetBatch < t.BatchSize {
		return fieldErr("training.target_batch", "must be at least batch_size (%d), got %d", t.BatchSize, t.TargetBatch)
	}
	if t.Steps <= 0 {
		return fieldErr("training.steps", "must be positive, got %d", t.Steps)
	}
	switch t.Activations {
	case "", ActivationsFP32, ActivationsBF16, ActivationsInt8, ActivationsTopK:
	default:
		return fieldErr("training.activations", "unknown precision %q (want fp32, bf16, int8 or topk)", t.Activations)
	}
	if t.Activations != ActivationsTopK && t.ActivationKeep != 0 {
		return fieldErr("training.activation_keep", "only with topk activations (activations is %q)", t.Activations)
	}
	if t.Activations == ActivationsTopK && !(t.ActivationKeep > 0 && t.ActivationKeep <= 1) {
		return fieldErr("training.activation_keep", "must be in (0, 1] with topk activations (the fraction of each row's values sent), got %g", t.ActivationKeep)
	}
	if err := m.validateRank(); err != nil {
		return err
	}
	if !(t.SyncLossMargin >= 0 && t.SyncLossMargin <= MaxSyncLossMargin) {
		return fieldErr("training.sync_loss_margin", "must be in [0, %d] nats (0: %g), got %g", MaxSyncLossMargin, DefaultSyncLossMargin, t.SyncLossMargin)
	}
	if err := m.Averaging.validate(); err != nil {
		return err
	}
	if m.Admission != nil {
		if err := m.Admission.validate(); err != nil {
			return err
		}
	}
	if m.Checkpoint != nil {
		if err := m.Checkpoint.validate(); err != nil {
			return err
		}
	}
	// AdamW divides each gradient entry by its own running scale, so the
	// small entries that fp16 flushes and int8 rounds to zero come back as
	// full-size steps in the wrong direction.
	if a := m.Averaging; a.Mode == ModeSync && m.Optimizer.Name == "adamw" && (a.Compression == CompressFP16 || a.Compression == CompressInt8) {
		return fieldErr("averaging.compression", "%s breaks gradient averaging under adamw (mlp-mnist: 59%% test accuracy with fp16, 69%% with int8, 97%% with none or bf16); use bf16 or none in sync mode", a.Compression)
	}
	return nil
}

// validateRank checks training.activation_rank against the run's cuts: it
// needs a cut, and at every cut fewer values than the row it projects
// (a rank of the row's width or more would send more, not fewer).
func (m *Manifest) validateRank() error {
	r := m.Training.ActivationRank
	if r == 0 {
		return nil
	}
	if r < 0 {
		return fieldErr("training.activation_rank", "must not be negative, got %d", r)
	}
	if len(m.Shards) < 2 {
		return fieldErr("training.activation_rank", "projects the activations between shards; the run has %d shard", len(m.Shards))
	}
	for i := 0; i < len(m.Shards)-1; i++ {
		if w := m.CutWidth(i); r >= w {
			return fieldErr("training.activation_rank", "%d is not below the width of the rows leaving shard %d (%d values)", r, i, w)
		}
	}
	return nil
}

func (s ModelSpec) validate() error {
	positive := func(field string, v int) error {
		if v <= 0 {
			return fieldErr("model."+field, "must be positive, got %d", v)
		}
		return nil
	}
	switch s.Arch {
	case ArchMLPMNIST:
		if err := positive("input", s.Input); err != nil {
			return err
		}
		if err := positive("classes", s.Classes); err != nil {
			return err
		}
		if len(s.Hidden) == 0 {
			return fieldErr("model.hidden", "needs at least one hidden layer")
		}
		for i, h := range s.Hidden {
			if err := positive(fmt.Sprintf("hidden[%d]", i), h); err != nil {
				return err
			}
		}
		if s.Vocab|s.BlockSize|s.NLayer|s.NHead|s.NEmbd|s.NKVHead|s.FFNHidden != 0 || s.RopeTheta != 0 || s.TieEmbeddings {
			return fieldErr("model", "gpt-char or llama fields (vocab, block_size, n_layer, n_head, n_embd, ...) set on an mlp-mnist model")
		}
	case ArchGPTChar, ArchLlama:
		type size struct {
			name string
			v    int
		}
		sizes := []size{{"vocab", s.Vocab}, {"block_size", s.BlockSize}, {"n_layer", s.NLayer}, {"n_head", s.NHead}, {"n_embd", s.NEmbd}}
		if s.Arch == ArchLlama {
			sizes = append(sizes, size{"n_kv_head", s.NKVHead}, size{"ffn_hidden", s.FFNHidden})
		}
		for _, f := range sizes {
			if err := positive(f.name, f.v); err != nil {
				return err
			}
			if f.v > MaxModelDim {
				return fieldErr("model."+f.name, "%d is over the limit of %d", f.v, MaxModelDim)
			}
		}
		if s.NEmbd%s.NHead != 0 {
			return fieldErr("model.n_embd", "%d is not divisible by n_head %d", s.NEmbd, s.NHead)
		}
		if s.Input != 0 || s.Classes != 0 || len(s.Hidden) != 0 {
			return fieldErr("model", "mlp-mnist fields (input, hidden, classes) set on a %s model", s.Arch)
		}
		if s.Arch == ArchGPTChar {
			if s.NKVHead != 0 || s.FFNHidden != 0 || s.RopeTheta != 0 || s.TieEmbeddings {
				return fieldErr("model", "llama fields (n_kv_head, ffn_hidden, rope_theta, tie_embeddings) set on a gpt-char model")
			}
			break
		}
		if hd := s.NEmbd / s.NHead; hd%2 != 0 {
			return fieldErr("model.n_head", "gives heads of %d values (n_embd %d / n_head %d): rotary embeddings need an even head size", hd, s.NEmbd, s.NHead)
		}
		if s.NHead%s.NKVHead != 0 {
			return fieldErr("model.n_kv_head", "n_head %d is not divisible by n_kv_head %d (each key/value head serves a whole group of query heads)", s.NHead, s.NKVHead)
		}
		if !(s.RopeTheta > 1 && s.RopeTheta <= 1e9) {
			return fieldErr("model.rope_theta", "must be in (1, 1e9] (10000 is usual), got %g", s.RopeTheta)
		}
	case "":
		return fieldErr("model.arch", "missing (want %s, %s or %s)", ArchMLPMNIST, ArchGPTChar, ArchLlama)
	default:
		return fieldErr("model.arch", "unknown architecture %q (want %s, %s or %s)", s.Arch, ArchMLPMNIST, ArchGPTChar, ArchLlama)
	}
	return nil
}

func validateShards(shards []ShardSpec, units int) error {
	if len(shards) == 0 {
		return fieldErr("shards", "at least one shard is needed")
	}
	if len(shards) > units {
		return fieldErr("shards", "%d shards for a model of %d units: every shard needs at least one", len(shards), units)
	}
	next := 0
	for i, s := range shards {
		f := fmt.Sprintf("shards[%d]", i)
		if s.Index != i {
			return fieldErr(f+".index", "is %d, want %d (shards are listed in order)", s.Index, i)
		}
		if s.Start != next {
			if s.Start < next {
				return fieldErr(f+".start", "is %d: units %d..%d are repeated", s.Start, s.Start, next-1)
			}
			return fieldErr(f+".start", "is %d: units %d..%d are missing", s.Start, next, s.Start-1)
		}
		if s.End <= s.Start {
			return fieldErr(f+".end", "is %d, must be greater than start %d", s.End, s.Start)
		}
		next = s.End
	}
	if next != units {
		if next > units {
			return fieldErr(fmt.Sprintf("shards[%d].end", len(shards)-1), "is %d, past the model's %d units", next, units)
		}
		return fieldErr(fmt.Sprintf("shards[%d].end", len(shards)-1), "is %d: units %d..%d are missing", next, next, units-1)
	}
	return nil
}

func (m *Manifest) validateDataset() error {
	d := m.Dataset
	switch d.Name {
	case DatasetMNIST:
		if m.Model.Arch != ArchMLPMNIST {
			return fieldErr("dataset.name", "mnist needs model %s, not %s", ArchMLPMNIST, m.Model.Arch)
		}
	case DatasetText:
		if !m.Model.LanguageModel() {
			return fieldErr("dataset.name", "text needs a language model (%s or %s), not %s", ArchGPTChar, ArchLlama, m.Model.Arch)
		}
		if d.Tokenizer != "" {
			v := TokenizerVocab(d.Tokenizer)
			switch {
			case v == 0:
				return fieldErr("dataset.tokenizer", "unknown tokenizer %q (want %s)", d.Tokenizer, strings.Join(Tokenizers, " or "))
			case d.Charset != "":
				return fieldErr("dataset.charset", "must be empty with a tokenizer (%s)", d.Tokenizer)
			case m.Model.Vocab != v:
				return fieldErr("model.vocab", "is %d, tokenizer %s has %d tokens", m.Model.Vocab, d.Tokenizer, v)
			case d.Path == "":
				return fieldErr("dataset.path", "must name the token file (swarm data prepare) with a tokenizer")
			case d.SHA256 == "":
				return fieldErr("dataset.sha256", "must pin the token file with a tokenizer")
			}
			break
		}
		if len([]rune(d.Charset)) != m.Model.Vocab {
			return fieldErr("dataset.charset", "has %d characters but model.vocab is %d", len([]rune(d.Charset)), m.Model.Vocab)
		}
		seen := map[rune]bool{}
		for _, r := range d.Charset {
			if seen[r] {
				return fieldErr("dataset.charset", "character %q repeated", r)
			}
			seen[r] = true
		}
	case "":
		return fieldErr("dataset.name", "missing (want %s or %s)", DatasetMNIST, DatasetText)
	default:
		return fieldErr("dataset.name", "unknown dataset %q (want %s or %s)", d.Name, DatasetMNIST, DatasetText)
	}
	if d.ValFraction < 0 || d.ValFraction >= 1 {
		return fieldErr("dataset.val_fraction", "must be in [0, 1), got %g", d.ValFraction)
	}
	if d.Root != "" {
		if err := checkDataRoot(d.Root); err != nil {
			return fieldErr("dataset.root", "%v", err)
		}
	}
	if d.Tokenizer != "" && d.Name != DatasetText {
		return fieldErr("dataset.tokenizer", "only for the text dataset")
	}
	if d.SHA256 != "" {
		if d.Name != DatasetText {
			return fieldErr("dataset.sha256", "only for the text dataset")
		}
		if b, err := hex.DecodeString(d.SHA256); err != nil || len(b) != sha256.Size || strings.ToLower(d.SHA256) != d.SHA256 {
			return fieldErr("dataset.sha256", "want 64 lowercase hex digits, got %q", d.SHA256)
		}
	}
	return nil
}

// checkDataRoot accepts a data set root CID: CIDv1, raw codec, a sha2-256
// multihash, in its canonical string form.
func checkDataRoot(s string) error {
	c, err := cid.Decode(s)
	if err != nil {
		return fmt.Errorf("%q is not a CID: %v", s, err)
	}
	if c.Version() != 1 || c.Type() != cid.Raw {
		return fmt.Errorf("%s: want a CIDv1 with the raw codec", s)
	}
	if dec, err := multihash.Decode(c.Hash()); err != nil || dec.Code != multihash.SHA2_256 || len(dec.Digest) != sha256.Size {
		return fmt.Errorf("%s: want a sha2-256 multihash", s)
	}
	if c.String() != s {
		return fmt.Errorf("%s: want its canonical form %s", s, c)
	}
	return nil
}

func (o OptimizerSpec) validate() error {
	switch o.Name {
	case "adamw":
		if o.Beta1 < 0 || o.Beta1 >= 1 {
			return fieldErr("optimizer.beta1", "must be in [0, 1), got %g", o.Beta1)
		}
		if o.Beta2 < 0 || o.Beta2 >= 1 {
			return fieldErr("optimizer.beta2", "must be in [0, 1), got %g", o.Beta2)
		}
		if o.Eps <= 0 {
			return fieldErr("optimizer.eps", "must be positive, got %g", o.Eps)
		}
	case "sgd":
		if o.Momentum < 0 || o.Momentum >= 1 {
			return fieldErr("optimizer.momentum", "must be in [0, 1), got %g", o.Momentum)
		}
	case "":
		return fieldErr("optimizer.name", "missing (want adamw or sgd)")
	default:
		return fieldErr("optimizer.name", "unknown optimizer %q (want adamw or sgd)", o.Name)
	}
	if o.LR <= 0 {
		return fieldErr("optimizer.lr", "must be positive, got %g", o.LR)
	}
	if o.MinLR < 0 || o.MinLR > o.LR {
		return fieldErr("optimizer.min_lr", "must be in [0, lr], got %g", o.MinLR)
	}
	if o.WeightDecay < 0 {
		return fieldErr("optimizer.weight_decay", "must not be negative, got %g", o.WeightDecay)
	}
	if o.ClipNorm < 0 {
		return fieldErr("optimizer.clip_norm", "must not be negative, got %g", o.ClipNorm)
	}
	if o.WarmupSteps < 0 {
		return fieldErr("optimizer.warmup_steps", "must not be negative, got %d", o.WarmupSteps)
	}
	if o.DecaySteps < 0 {
		return fieldErr("optimizer.decay_steps", "must not be negative, got %d", o.DecaySteps)
	}
	return nil
}

func (a AveragingSpec) validate() error {
	switch a.Mode {
	case ModeSync:
	case ModeLocal:
		if a.LocalSteps <= 0 {
			return fieldErr("averaging.local_steps", "must be positive in local mode, got %d", a.LocalSteps)
		}
		if a.OuterLR <= 0 {
			return fieldErr("averaging.outer_lr", "must be positive in local mode, got %g", a.OuterLR)
		}
		if a.OuterMomentum < 0 || a.OuterMomentum >= 1 {
			return fieldErr("averaging.outer_momentum", "must be in [0, 1), got %g", a.OuterMomentum)
		}
		if a.MaxLocalSteps != 0 && (a.MaxLocalSteps < a.LocalSteps || a.MaxLocalSteps > MaxLocalStepsFactor*a.LocalSteps) {
			return fieldErr("averaging.max_local_steps", "must be 0 or in [local_steps, %d × local_steps] = [%d, %d], got %d",
				MaxLocalStepsFactor, a.LocalSteps, MaxLocalStepsFactor*a.LocalSteps, a.MaxLocalSteps)
		}
		if a.MaxLocalSteps > a.LocalSteps && !a.Overlap {
			return fieldErr("averaging.max_local_steps", "needs averaging.overlap (rounds only grow while averaging overlaps inner steps)")
		}
	case "":
		return fieldErr("averaging.mode", "missing (want sync or local)")
	default:
		return fieldErr("averaging.mode", "unknown mode %q (want sync or local)", a.Mode)
	}
	if a.MaxLocalSteps != 0 && a.Mode != ModeLocal {
		return fieldErr("averaging.max_local_steps", "only for local mode (mode is %q)", a.Mode)
	}
	if a.Overlap && a.Mode != ModeLocal {
		return fieldErr("averaging.overlap", "only for local mode (mode is %q)", a.Mode)
	}
	if a.DelayedUpdates && a.Mode != ModeSync {
		return fieldErr("averaging.delayed_updates", "only for sync mode (mode is %q; local mode overlaps with averaging.overlap)", a.Mode)
	}
	if a.GroupSize < 2 {
		return fieldErr("averaging.group_size", "must be at least 2, got %d", a.GroupSize)
	}
	if a.MinGroupSize < 2 || a.MinGroupSize > a.GroupSize {
		return fieldErr("averaging.min_group_size", "must be in [2, group_size], got %d", a.MinGroupSize)
	}
	switch a.Compression {
	case CompressNone, CompressBF16, CompressFP16, CompressInt8:
	default:
		return fieldErr("averaging.compression", "unknown scheme %q (want none, bf16, fp16 or int8)", a.Compression)
	}
	if a.TimeoutMS <= 0 {
		return fieldErr("averaging.timeout_ms", "must be positive, got %d", a.TimeoutMS)
	}
	if err := a.validateDelta(); err != nil {
		return err
	}
	return a.validateAggregation()
}

func (a AveragingSpec) validateAggregation() error {
	switch a.Aggregation {
	case "", AggregateMean, AggregateCenteredClip, AggregateTrimmedMean:
	default:
		return fieldErr("averaging.aggregation", "unknown aggregation %q (want mean, centered-clip or trimmed-mean)", a.Aggregation)
	}
	if a.Aggregation != AggregateCenteredClip {
		if a.ClipTau != 0 {
			return fieldErr("averaging.clip_tau", "only for centered-clip (aggregation is %q)", a.Aggregation)
		}
		if a.ClipIters != 0 {
			return fieldErr("averaging.clip_iters", "only for centered-clip (aggregation is %q)", a.Aggregation)
		}
	}
	if !(a.ClipTau >= 0 && a.ClipTau <= 1e6) {
		return fieldErr("averaging.clip_tau", "must be in [0, 1e6] (a multiple of the median distance; 0: 2), got %g", a.ClipTau)
	}
	if a.ClipIters < 0 || a.ClipIters > 100 {
		return fieldErr("averaging.clip_iters", "must be in [0, 100] (0: 5), got %d", a.ClipIters)
	}
	if !(a.NormK == 0 || a.NormK >= 1 && a.NormK <= 1e12) {
		return fieldErr("averaging.norm_k", "must be 0 (off) or in [1, 1e12], got %g", a.NormK)
	}
	if a.AuditParts < 0 || a.AuditParts > 16 {
		return fieldErr("averaging.audit_parts", "must be in [0, 16] (0: no audits), got %d", a.AuditParts)
	}
	if !(a.AuditRate >= 0 && a.AuditRate <= 1) {
		return fieldErr("averaging.audit_rate", "must be in [0, 1] (the share of rounds audited; 0: every round), got %g", a.AuditRate)
	}
	if a.AuditRate > 0 && a.AuditParts == 0 {
		return fieldErr("averaging.audit_rate", "is %g but averaging.audit_parts is 0: there are no audits to draw", a.AuditRate)
	}
	return nil
}

// Canonical returns the manifest's canonical encoding: compact JSON with the
// fields in declaration order. The run ID hashes these bytes.
func (m *Manifest) Canonical() ([]byte, error) {
	return json.Marshal(m)
}

// ID returns the run ID: a CIDv1 (raw codec, sha2-256) of the canonical encoding.
func (m *Manifest) ID() (cid.Cid, error) {
	b, err := m.Canonical()
	if err != nil {
		return cid.Undef, err
	}
	h, err := multihash.Sum(b, multihash.SHA2_256, -1)
	if err != nil {
		return cid.Undef, err
	}
	return cid.NewCidV1(cid.Raw, h), nil
}

// ShardID returns the CID under which holders of shard index announce
// themselves: the hash of the run ID and the shard index.
func (m *Manifest) ShardID(index int) (cid.Cid, error) {
	id, err := m.ID()
	if err != nil {
		return cid.Undef, err
	}
	h, err := multihash.Sum([]byte(fmt.Sprintf("%s/shard/%d", id, index)), multihash.SHA2_256, -1)
	if err != nil {
		return cid.Undef, err
	}
	return cid.NewCidV1(cid.Raw, h), nil
}

// Parse decodes and validates a manifest. Unknown fields are errors.
func Parse(data []byte) (*Manifest, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("decode manifest: %w", err)
	}
	if dec.More() {
		return nil, errors.New("decode manifest: trailing data after the JSON object")
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("invalid manifest: %w", err)
	}
	return &m, nil
}

// Load reads, decodes and validates a manifest file; errors name the file.
func Load(path string) (*Manifest, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read run manifest: %w", err)
	}
	m, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// Save writes the manifest as indented JSON, atomically: a full disk or a
// crash leaves the previous file (internal/atomicfile).
func (m *Manifest) Save(path string) error {
	if err := m.Validate(); err != nil {
		return fmt.Errorf("invalid manifest: %w", err)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(b, '\n'), 0o644)
}

// EvenShards splits units into n contiguous shards as evenly as possible.
func EvenShards(units, n int) []ShardSpec {
	shards := make([]ShardSpec, n)
	start := 0
	for i := range shards {
		size := units / n
		if i < units%n {
			size++
		}
		shards[i] = ShardSpec{Index: i, Start: start, End: start + size}
		start += size
	}
	return shards
}
