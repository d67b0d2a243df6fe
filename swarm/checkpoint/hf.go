package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/swarm-train/swarm/internal/atomicfile"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/data"
)

// A Hugging Face export is a folder that transformers'
// AutoModelForCausalLM.from_pretrained loads as a LlamaForCausalLM:
// config.json, model.safetensors (float32, Hugging Face's tensor names) and
// what the run's tokenizer allows (ExportHF).
//
// The run's llama computes what LlamaForCausalLM computes with the same
// matrices: RMSNorm with eps 1e-5 and the weight applied after the
// normalisation, rotary embeddings rotating the pairs (i, i + hd/2) of each
// head by t·θ^(−2i/hd) (transformers' rotate_half over the two halves), key
// and value head j serving query heads j·g … (j+1)·g−1 (repeat_kv), SwiGLU
// down(silu(gate(x))·up(x)), and no biases. So no tensor is permuted: the
// layout's names are renamed (HFName) and written as they are.

// HFConfig is the config.json of a Hugging Face LlamaForCausalLM.
type HFConfig struct {
	Architectures         []string  `json:"architectures"`
	ModelType             string    `json:"model_type"`
	HiddenSize            int       `json:"hidden_size"`
	IntermediateSize      int       `json:"intermediate_size"`
	NumAttentionHeads     int       `json:"num_attention_heads"`
	NumKeyValueHeads      int       `json:"num_key_value_heads"`
	NumHiddenLayers       int       `json:"num_hidden_layers"`
	HeadDim               int       `json:"head_dim"`
	HiddenAct             string    `json:"hidden_act"`
	RMSNormEps            float64   `json:"rms_norm_eps"`
	RopeTheta             float64   `json:"rope_theta"`
	RopeScaling           *struct{} `json:"rope_scaling"`
	VocabSize             int       `json:"vocab_size"`
	MaxPositionEmbeddings int       `json:"max_position_embeddings"`
	TieWordEmbeddings     bool      `json:"tie_word_embeddings"`
	AttentionBias         bool      `json:"attention_bias"`
	AttentionDropout      float64   `json:"attention_dropout"`
	MLPBias               bool      `json:"mlp_bias"`
	PretrainingTP         int       `json:"pretraining_tp"`
	InitializerRange      float64   `json:"initializer_range"`
	UseCache              bool      `json:"use_cache"`
	TorchDType            string    `json:"torch_dtype"`
	BOSTokenID            *int      `json:"bos_token_id"`
	EOSTokenID            *int      `json:"eos_token_id"`
	// SwarmRunID names the run the weights come from (transformers keeps
	// unknown fields as attributes).
	SwarmRunID string `json:"swarm_run_id,omitempty"`
	SwarmStep  int64  `json:"swarm_step"`
}

// HFRMSNormEps is the RMSNorm epsilon both engines use.
const HFRMSNormEps = 1e-5

// ErrNotExportable: the run's model has no Hugging Face equivalent here.
var ErrNotExportable = errors.New("export: no Hugging Face format for this model")

// NewHFConfig describes m's llama as a LlamaForCausalLM.
func NewHFConfig(m *run.Manifest, step int64) (*HFConfig, error) {
	md := m.Model
	if err := HFExportable(m); err != nil {
		return nil, err
	}
	id, err := m.ID()
	if err != nil {
		return nil, err
	}
	c := &HFConfig{
		Architectures: []string{"LlamaForCausalLM"}, ModelType: "llama",
		HiddenSize: md.NEmbd, IntermediateSize: md.FFNHidden,
		NumAttentionHeads: md.NHead, NumKeyValueHeads: md.NKVHead, NumHiddenLayers: md.NLayer,
		HeadDim: md.HeadDim(), HiddenAct: "silu", RMSNormEps: HFRMSNormEps, RopeTheta: md.RopeTheta,
		VocabSize: md.Vocab, MaxPositionEmbeddings: md.BlockSize, TieWordEmbeddings: md.TieEmbeddings,
		PretrainingTP: 1, InitializerRange: 0.02, UseCache: true, TorchDType: "float32",
		SwarmRunID: id.String(), SwarmStep: step,
	}
	if m.Dataset.Tokenizer != "" {
		tk, err := data.NewTokenizer(m.Dataset.Tokenizer)
		if err != nil {
			return nil, err
		}
		eot := int(tk.EndOfText())
		c.BOSTokenID, c.EOSTokenID = &eot, &eot
	}
	return c, nil
}

// HFExportable refuses what a LlamaForCausalLM cannot hold: another
// architecture, or the learned projections of training.activation_rank
// (a bottleneck in the residual stream at every cut).
func HFExportable(m *run.Manifest) error {
	if m.Model.Arch != run.ArchLlama {
		return fmt.Errorf("%w: model.arch is %s (only %s exports as LlamaForCausalLM)", ErrNotExportable, m.Model.Arch, run.ArchLlama)
	}
	if r := m.Training.ActivationRank; r > 0 {
		return fmt.Errorf("%w: training.activation_rank %d puts a learned rank-%d projection in the residual stream at every cut between shards, which LlamaForCausalLM has no place for (export --format safetensors keeps every tensor under its layout name)", ErrNotExportable, r, r)
	}
	return nil
}

// HFName is the Hugging Face name of a llama layout tensor ("" for a name
// that is not one).
func HFName(name string) string {
	switch name {
	case "wte":
		return "model.embed_tokens.weight"
	case "norm.w":
		return "model.norm.weight"
	case "head.w":
		return "lm_head.weight"
	}
	rest, ok := strings.CutPrefix(name, "h")
	if !ok {
		return ""
	}
	num, sub, ok := strings.Cut(rest, ".")
	if _, err := strconv.Atoi(num); !ok || err != nil {
		return ""
	}
	hf := map[string]string{
		"attn_norm.w": "input_layernorm.weight",
		"attn.q.w":    "self_attn.q_proj.weight",
		"attn.k.w":    "self_attn.k_proj.weight",
		"attn.v.w":    "self_attn.v_proj.weight",
		"attn.o.w":    "self_attn.o_proj.weight",
		"mlp_norm.w":  "post_attention_layernorm.weight",
		"mlp.gate.w":  "mlp.gate_proj.weight",
		"mlp.up.w":    "mlp.up_proj.weight",
		"mlp.down.w":  "mlp.down_proj.weight",
	}[sub]
	if hf == "" {
		return ""
	}
	return "model.layers." + num + "." + hf
}

// ExportHFSafetensors writes the whole llama (params[i] is shard i's flat
// buffer) as one safetensors file under Hugging Face's names. A tied head is
// written once, as model.embed_tokens.weight (tie_word_embeddings).
func ExportHFSafetensors(w io.Writer, m *run.Manifest, params [][]float32, metadata map[string]string) error {
	if err := HFExportable(m); err != nil {
		return err
	}
	return exportNamed(w, m, params, metadata, HFName)
}

// ErrOutputNotEmpty: an export was pointed at a folder that holds files.
var ErrOutputNotEmpty = errors.New("export: output folder is not empty")

// ExportHF writes a Hugging Face model folder at dir (created if missing;
// refused if it holds anything): config.json, generation_config.json,
// model.safetensors and swarm_tokenizer.json naming the run's tokenizer
// (GPT-2's: load it with AutoTokenizer.from_pretrained("gpt2"); characters:
// the character set). It returns the files written.
func ExportHF(dir string, m *run.Manifest, params [][]float32, step int64) ([]string, error) {
	cfg, err := NewHFConfig(m, step)
	if err != nil {
		return nil, err
	}
	if entries, err := os.ReadDir(dir); err == nil {
		if len(entries) > 0 {
			return nil, fmt.Errorf("%w: %s holds %s (choose an empty or new folder)", ErrOutputNotEmpty, dir, entries[0].Name())
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var written []string
	writeJSON := func(name string, v any) error {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		p := filepath.Join(dir, name)
		if err := atomicfile.WriteFile(p, append(b, '\n'), 0o644); err != nil {
			return err
		}
		written = append(written, p)
		return nil
	}
	md := map[string]string{"step": strconv.FormatInt(step, 10)}
	st := filepath.Join(dir, "model.safetensors")
	if err := atomicfile.Write(st, 0o644, func(w io.Writer) error {
		return ExportHFSafetensors(w, m, params, md)
	}); err != nil {
		return nil, err
	}
	written = append(written, st)
	if err := writeJSON("config.json", cfg); err != nil {
		return nil, err
	}
	gen := map[string]any{"do_sample": true, "temperature": 0.8, "top_k": 40, "max_length": m.Model.BlockSize}
	if cfg.EOSTokenID != nil {
		gen["bos_token_id"], gen["eos_token_id"] = *cfg.BOSTokenID, *cfg.EOSTokenID
	}
	if err := writeJSON("generation_config.json", gen); err != nil {
		return nil, err
	}
	switch {
	case m.Dataset.Tokenizer == run.TokenizerGPT2:
		err = writeJSON("swarm_tokenizer.json", map[string]any{
			"tokenizer":    run.TokenizerGPT2,
			"hf_tokenizer": "gpt2",
			"note":         "GPT-2's byte-level BPE (r50k_base, 50,257 tokens, <|endoftext|> = 50256); its vocab.json and merges.txt are not written here: load it with AutoTokenizer.from_pretrained(\"gpt2\")",
		})
	case m.Dataset.Tokenizer == run.TokenizerBytes:
		err = writeJSON("swarm_tokenizer.json", map[string]any{
			"tokenizer": run.TokenizerBytes,
			"note":      "token i < 256 is the byte i, token 256 is <|endoftext|>; transformers has no tokenizer for it",
		})
	case m.Dataset.Charset != "":
		err = writeJSON("swarm_tokenizer.json", map[string]any{
			"tokenizer": "characters",
			"charset":   m.Dataset.Charset,
			"note":      "token i is the i-th Unicode character of charset; transformers has no tokenizer for it",
		})
	}
	if err != nil {
		return nil, err
	}
	return written, nil
}
