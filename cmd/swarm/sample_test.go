package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/checkpoint"
	"github.com/swarm-train/swarm/swarm/train"
)

// TestSampleAndExportHF trains a small 2-shard llama on characters with
// swarm train, then: its result has the validation perplexity; swarm sample
// continues a prompt with characters of the run, the same for one seed,
// and refuses a prompt outside the charset; swarm run export --format hf
// writes a model folder and refuses a folder that is not empty; the same
// parameters kept as a node keeps them (HOME/runs/<run ID>/shard-<k>)
// export and sample the same.
func TestSampleAndExportHF(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "run.json")
	mustCLI(t, "run", "init", "--model", "llama-tiny", "--shards", "2", "--n-layer", "2", "--n-embd", "32", "--ffn-hidden", "64",
		"--block-size", "32", "--batch", "8", "--target-batch", "8", "--steps", "20", "--val-fraction", "0.01", "-o", path)
	m, err := run.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ckpt := filepath.Join(dir, "ckpt")
	var res train.Result
	out := mustCLI(t, "--log-level", "warn", "train", "--run", path, "--checkpoint-dir", ckpt, "--threads", "1", "--eval-every", "-1", "--json")
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if res.ValLoss == nil || res.ValPerplexity == nil || math.Abs(*res.ValPerplexity-math.Exp(*res.ValLoss)) > 1e-9**res.ValPerplexity {
		t.Fatalf("validation loss %v, perplexity %v", res.ValLoss, res.ValPerplexity)
	}

	sampleJSON := func(args ...string) Sampled {
		t.Helper()
		var s Sampled
		out := mustCLI(t, append([]string{"sample", "--run", path, "--prompt", "The light ", "-n", "40", "--seed", "7", "--threads", "1", "--json"}, args...)...)
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		return s
	}
	a := sampleJSON("--checkpoint", ckpt)
	if a.Tokens != 40 || len([]rune(a.Text)) != 40 || a.Step != 20 {
		t.Fatalf("sample: %+v", a)
	}
	for _, r := range a.Text {
		if !strings.ContainsRune(m.Dataset.Charset, r) {
			t.Fatalf("sampled %q outside the run's charset", r)
		}
	}
	if b := sampleJSON("--checkpoint", ckpt); b.Text != a.Text {
		t.Fatalf("one seed, two texts: %q and %q", a.Text, b.Text)
	}
	plain := mustCLI(t, "sample", "--run", path, "--checkpoint", ckpt, "--prompt", "The light ", "-n", "40", "--seed", "7", "--threads", "1")
	if plain != "The light "+a.Text+"\n" {
		t.Fatalf("plain output %q, want the prompt and %q", plain, a.Text)
	}
	if _, _, err := swarmCLI(t, "sample", "--run", path, "--checkpoint", ckpt, "--prompt", "日本", "-n", "3"); err == nil ||
		!strings.Contains(err.Error(), "--prompt") || !strings.Contains(err.Error(), "charset") {
		t.Fatalf("a prompt outside the charset: %v", err)
	}

	hf := filepath.Join(dir, "hf")
	text := mustCLI(t, "run", "export", "--run", path, "--checkpoint-dir", ckpt, "--format", "hf", "-o", hf)
	if !strings.Contains(text, "config.json") || !strings.Contains(text, "step 20") {
		t.Fatalf("export output %q", text)
	}
	var cfg checkpoint.HFConfig
	if b, err := os.ReadFile(filepath.Join(hf, "config.json")); err != nil || json.Unmarshal(b, &cfg) != nil ||
		cfg.NumHiddenLayers != 2 || cfg.HiddenSize != 32 || cfg.VocabSize != m.Model.Vocab || cfg.TieWordEmbeddings {
		t.Fatalf("config.json: %+v (%v)", cfg, err)
	}
	if _, _, err := swarmCLI(t, "run", "export", "--run", path, "--checkpoint-dir", ckpt, "--format", "hf", "-o", hf); err == nil ||
		!strings.Contains(err.Error(), hf) || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("export into a full folder: %v", err)
	}

	// The same parameters as a node's checkpoints, one folder a shard.
	st, _, err := (&checkpoint.Dir{Path: ckpt}).Latest()
	if err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(dir, "home")
	id, _ := m.ID()
	for i, sh := range st.Shards {
		layout, _ := checkpoint.LayoutHash(m, i)
		ns := &checkpoint.State{RunID: id.String(), Step: st.Step, Epoch: uint64(st.Step), Layout: layout, Shards: []checkpoint.ShardState{sh}}
		if _, err := (&checkpoint.Dir{Path: checkpoint.ShardPath(filepath.Join(home, "runs"), id.String(), i)}).Save(ns); err != nil {
			t.Fatal(err)
		}
	}
	if c := sampleJSON("--home", home); c.Text != a.Text {
		t.Fatalf("node checkpoints sample %q, swarm train's %q", c.Text, a.Text)
	}
	hf2 := filepath.Join(dir, "hf2")
	mustCLI(t, "run", "export", "--run", path, "--home", home, "--format", "hf", "-o", hf2)
	b1, _ := os.ReadFile(filepath.Join(hf, "model.safetensors"))
	b2, _ := os.ReadFile(filepath.Join(hf2, "model.safetensors"))
	if len(b1) == 0 || string(b1) != string(b2) {
		t.Fatalf("node-home export differs from the checkpoint's (%d vs %d bytes)", len(b1), len(b2))
	}
	if _, _, err := swarmCLI(t, "run", "export", "--run", path, "--home", t.TempDir(), "--format", "hf", "-o", filepath.Join(dir, "hf3")); err == nil ||
		!strings.Contains(err.Error(), "shard 0") {
		t.Fatalf("export from a home without checkpoints: %v", err)
	}
	mnist := filepath.Join(dir, "mnist.json")
	mustCLI(t, "run", "init", "--model", "mlp-mnist", "-o", mnist)
	if _, _, err := swarmCLI(t, "run", "export", "--run", mnist, "--checkpoint-dir", ckpt, "--format", "hf", "-o", filepath.Join(dir, "m")); err == nil ||
		!strings.Contains(err.Error(), "model.arch") {
		t.Fatalf("hf export of an MLP: %v", err)
	}
}

// TestBytesTokenRun: swarm data prepare --tokenizer bytes writes a token
// file of 257 tokens a manifest pins; a small llama trains on it, samples
// Go-looking bytes, and exports with <|endoftext|> (256) as its end token.
func TestBytesTokenRun(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "a.go")
	code := "package x\n\n" + strings.Repeat("func f(a int) int { return a * 2 }\n", 120)
	if err := os.WriteFile(src, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	tok := filepath.Join(dir, "bytes.tok")
	var prep DataPrepared
	if err := json.Unmarshal([]byte(mustCLI(t, "data", "prepare", "--tokenizer", "bytes", "--json", src, "-o", tok)), &prep); err != nil {
		t.Fatal(err)
	}
	if prep.Vocab != 257 || prep.Tokens != len(code)+1 {
		t.Fatalf("prepared %+v", prep)
	}
	path := filepath.Join(dir, "run.json")
	mustCLI(t, "run", "init", "--model", "llama-tiny", "--tokens", tok, "--n-layer", "1", "--n-embd", "32", "--ffn-hidden", "64",
		"--block-size", "16", "--batch", "8", "--target-batch", "8", "--steps", "5", "-o", path)
	m, err := run.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if m.Model.Vocab != 257 || m.Dataset.Tokenizer != run.TokenizerBytes {
		t.Fatalf("manifest: vocab %d, tokenizer %q", m.Model.Vocab, m.Dataset.Tokenizer)
	}
	ckpt := filepath.Join(dir, "ckpt")
	mustCLI(t, "--log-level", "warn", "train", "--run", path, "--checkpoint-dir", ckpt, "--threads", "1", "--eval-every", "-1", "--json")
	var s Sampled
	if err := json.Unmarshal([]byte(mustCLI(t, "sample", "--run", path, "--checkpoint", ckpt, "--prompt", "func ", "-n", "12", "--seed", "3", "--json")), &s); err != nil {
		t.Fatal(err)
	}
	if s.Tokens != 12 || s.Text == "" {
		t.Fatalf("sample %+v", s)
	}
	hf := filepath.Join(dir, "hf")
	mustCLI(t, "run", "export", "--run", path, "--checkpoint-dir", ckpt, "--format", "hf", "-o", hf)
	var cfg checkpoint.HFConfig
	if b, err := os.ReadFile(filepath.Join(hf, "config.json")); err != nil || json.Unmarshal(b, &cfg) != nil || cfg.EOSTokenID == nil || *cfg.EOSTokenID != 256 || cfg.VocabSize != 257 {
		t.Fatalf("config.json: %+v (%v)", cfg, err)
	}
	if b, err := os.ReadFile(filepath.Join(hf, "swarm_tokenizer.json")); err != nil || !strings.Contains(string(b), `"bytes"`) {
		t.Fatalf("swarm_tokenizer.json: %s (%v)", b, err)
	}
}
