package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/swarm-train/swarm/internal/testutil"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/checkpoint"
	"github.com/swarm-train/swarm/swarm/data"
	"github.com/swarm-train/swarm/swarm/train"
)

// swarmCLI runs the swarm command line in this process and returns its
// stdout, stderr and error.
func swarmCLI(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	app := newApp()
	var out, errOut bytes.Buffer
	app.Writer, app.ErrWriter = &out, &errOut
	err := app.Run(append([]string{"swarm"}, args...))
	return out.String(), errOut.String(), err
}

func mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := swarmCLI(t, args...)
	if err != nil {
		t.Fatalf("swarm %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out
}

func TestRunInitShow(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "run.json")
	mustCLI(t, "run", "init", "--model", "mlp-mnist", "--shards", "3", "--steps", "100", "--lr", "0.002", "-o", path)
	m, err := run.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Shards) != 3 || m.Training.Steps != 100 || m.Optimizer.LR != 0.002 || m.Optimizer.DecaySteps != 100-m.Optimizer.WarmupSteps {
		t.Fatalf("manifest from flags: %+v", m)
	}
	id, _ := m.ID()
	var info RunInfo
	if err := json.Unmarshal([]byte(mustCLI(t, "run", "show", "--json", path)), &info); err != nil {
		t.Fatal(err)
	}
	if info.RunID != id.String() || len(info.Shards) != 3 || info.Params != 784*1024+1024+1024*1024+1024+1024*10+10 {
		t.Fatalf("show --json: %+v", info)
	}
	if info.Shards[1].Params != 1024*1024+1024 || info.Shards[1].FLOPsPerSample != 6*1024*1024 || info.Shards[0].ActivationSize != 1024 {
		t.Fatalf("shard 1: %+v", info.Shards[1])
	}
	text := mustCLI(t, "run", "show", path)
	for _, want := range []string{id.String(), "784-1024-1024-10", "1049600", "6.29M"} {
		if !strings.Contains(text, want) {
			t.Errorf("show output lacks %q:\n%s", want, text)
		}
	}

	gpt := filepath.Join(dir, "gpt.json")
	mustCLI(t, "run", "init", "--model", "gpt-char", "--shards", "2", "--n-layer", "4", "--n-embd", "32", "-o", gpt)
	g, err := run.Load(gpt)
	if err != nil {
		t.Fatal(err)
	}
	if g.Model.NLayer != 4 || g.Model.NEmbd != 32 || g.Model.Vocab < 60 || g.Shards[1].Start != 2 {
		t.Fatalf("gpt manifest: %+v", g.Model)
	}
	corpus, err := data.ReadCorpus("")
	if err != nil {
		t.Fatal(err)
	}
	if g.Dataset.SHA256 != data.CorpusSHA256(corpus) {
		t.Fatalf("gpt manifest pins sha256 %q, want the corpus's %s", g.Dataset.SHA256, data.CorpusSHA256(corpus))
	}

	// A llama preset, split: its head is untied; show names the sizes.
	ll := filepath.Join(dir, "llama.json")
	mustCLI(t, "run", "init", "--model", "llama-124m", "--shards", "2", "--n-kv-head", "4", "--block-size", "256", "-o", ll)
	l, err := run.Load(ll)
	if err != nil {
		t.Fatal(err)
	}
	if md := l.Model; md.Arch != run.ArchLlama || md.NLayer != 12 || md.NKVHead != 4 || md.BlockSize != 256 || md.TieEmbeddings || len(l.Shards) != 2 {
		t.Fatalf("llama manifest: %+v", l.Model)
	}
	text = mustCLI(t, "run", "show", ll)
	for _, want := range []string{"Llama n_layer=12 n_head=12 n_kv_head=4 n_embd=768 ffn_hidden=2048", "BLOCKS"} {
		if !strings.Contains(text, want) {
			t.Errorf("show output lacks %q:\n%s", want, text)
		}
	}
}

func TestRunInitAndShowErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "init", "--model", "resnet"}, "resnet"},
		{[]string{"run", "init", "--model", "mlp-mnist", "--shards", "0"}, "--shards"},
		{[]string{"run", "init", "--model", "mlp-mnist", "--shards", "4"}, "--shards"},
		{[]string{"run", "init", "--model", "mlp-mnist", "--lr", "-1"}, "optimizer.lr"},
		{[]string{"run", "init", "--model", "mlp-mnist", "--hidden", "10,x"}, "--hidden"},
		{[]string{"run", "init", "--model", "gpt-char", "--n-head", "3"}, "model.n_embd"},
		{[]string{"run", "init", "--model", "llama-tiny", "--n-kv-head", "3"}, "model.n_kv_head"},
		{[]string{"run", "init", "--model", "llama-tiny", "--n-embd", "60"}, "model.n_head"}, // heads of 15: rotary needs even
		{[]string{"run", "init", "--model", "llama-tiny", "--shards", "2", "--tie-embeddings"}, "model.tie_embeddings"},
		{[]string{"run", "init", "--model", "gpt-char", "--n-kv-head", "2"}, "llama presets"},
		{[]string{"run", "init", "--model", "llama-1b"}, "llama-1b"},
		{[]string{"run", "init", "--model", "mlp-mnist", "--activations", "fp8"}, "training.activations"},
		{[]string{"run", "init", "--model", "mlp-mnist", "--activation-keep", "0"}, "training.activation_keep"},
		{[]string{"run", "init", "--model", "mlp-mnist", "--activation-keep", "1.5"}, "training.activation_keep"},
		{[]string{"run", "init", "--model", "mlp-mnist", "--activations", "bf16", "--activation-keep", "0.5"}, "training.activation_keep"},
		{[]string{"run", "init", "--model", "mlp-mnist", "--activation-rank", "-1"}, "training.activation_rank"},
		{[]string{"run", "init", "--model", "mlp-mnist", "--activation-rank", "1024"}, "training.activation_rank"},
		{[]string{"run", "init", "--model", "mlp-mnist", "--shards", "1", "--activation-rank", "16"}, "training.activation_rank"},
		{[]string{"run", "init", "--model", "mlp-mnist", "--compression", "zip"}, "averaging.compression"},
		{[]string{"run", "init", "--model", "mlp-mnist", "--compression", "int8"}, "use bf16 or none"},
		{[]string{"run", "init", "--model", "mlp-mnist", "--averaging", "local", "--delta-keep", "0"}, "averaging.delta_keep"},
		{[]string{"run", "init", "--model", "mlp-mnist", "--averaging", "local", "--delta-keep", "0.03", "--delta-bits", "3"}, "averaging.delta_bits"},
		{[]string{"run", "init", "--model", "mlp-mnist", "--delta-keep", "0.03"}, "averaging.delta_codec"},
		{[]string{"run", "init", "--model", "mlp-mnist", "--averaging", "local", "--delta-bits", "2"}, "--delta-bits"},
		{[]string{"run", "init", "--model", "mlp-mnist", "--averaging", "local", "--delayed-updates"}, "averaging.delayed_updates"},
		{[]string{"run", "init", "--model", "gpt-char", "--corpus", filepath.Join(dir, "none.txt")}, "none.txt"},
		{[]string{"run", "show", filepath.Join(dir, "missing.json")}, "missing.json"},
	} {
		_, _, err := swarmCLI(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("swarm %s: err = %v, want it to mention %q", strings.Join(c.args, " "), err, c.want)
		}
	}
	bad := filepath.Join(dir, "bad.json")
	m := run.NewMLPMNIST(2)
	m.Shards[1].Start = m.Shards[0].Start // the second shard repeats the first one's layers
	b, _ := json.Marshal(m)
	os.WriteFile(bad, b, 0o644)
	if _, _, err := swarmCLI(t, "run", "show", bad); err == nil || !strings.Contains(err.Error(), "shards[1].start") {
		t.Fatalf("show of a manifest with repeated layers: %v", err)
	}
}

func TestTrainCommand(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "run.json")
	ckpt := filepath.Join(dir, "ckpt")
	model := filepath.Join(dir, "model.safetensors")
	mustCLI(t, "run", "init", "--model", "mlp-mnist", "--shards", "2", "--hidden", "64", "--batch", "32", "--target-batch", "64", "--steps", "40", "--lr", "0.003", "-o", path)
	out := mustCLI(t, "train", "--run", path, "--steps", "30", "--checkpoint-dir", ckpt, "--export", model, "--json")
	var res train.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("train --json output %q: %v", out, err)
	}
	if res.Steps != 30 || res.Samples != 30*64 || res.Seconds <= 0 || res.TestAccuracy == nil || *res.TestAccuracy < 0.8 {
		t.Fatalf("result %+v (accuracy %v)", res, res.TestAccuracy)
	}
	b, err := os.ReadFile(model)
	if err != nil {
		t.Fatal(err)
	}
	tensors, md, _, err := checkpoint.ReadSafetensors(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(tensors) != 4 || tensors["l1.w"].Shape[0] != 10 || tensors["l1.w"].Shape[1] != 64 || md["step"] != "30" || md["run_id"] != res.RunID {
		t.Fatalf("exported tensors %v, metadata %v", tensors, md)
	}

	// Resume to the manifest's 40 steps; then export from the checkpoints.
	out = mustCLI(t, "train", "--run", path, "--checkpoint-dir", ckpt, "--resume", "--json")
	res = train.Result{}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	if res.Steps != 40 || res.ResumedFrom == "" || res.Samples != 40*64 {
		t.Fatalf("resumed result %+v", res)
	}
	text := mustCLI(t, "run", "export", "--run", path, "--checkpoint-dir", ckpt, "-o", model)
	if !strings.Contains(text, "step 40") {
		t.Fatalf("export output %q", text)
	}
	if _, _, err := swarmCLI(t, "train", "--run", path, "--resume"); err == nil || !strings.Contains(err.Error(), "--checkpoint-dir") {
		t.Fatalf("--resume without a folder: %v", err)
	}
	if _, _, err := swarmCLI(t, "train", "--run", path, "--data-dir", dir); err == nil || !strings.Contains(err.Error(), "train-images") {
		t.Fatalf("--data-dir without MNIST: %v", err)
	}
}

func TestTrainCommandText(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "run.json")
	mustCLI(t, "run", "init", "--model", "gpt-char", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "16",
		"--batch", "8", "--target-batch", "8", "--steps", "10", "--val-fraction", "0.02", "-o", path)
	out := mustCLI(t, "train", "--run", path, "--json")
	var res train.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	if res.ValLoss == nil || res.BigramValLoss == nil || res.TestAccuracy != nil || res.Steps != 10 {
		t.Fatalf("result %+v", res)
	}
	plain := mustCLI(t, "train", "--run", path, "--steps", "2")
	if !strings.Contains(plain, "validation loss") || !strings.Contains(plain, "bigram model") {
		t.Fatalf("plain output:\n%s", plain)
	}
}

// TestMNISTTarget is the CI-sized target run: the default mlp-mnist manifest
// through `swarm train` reaches at least 97.5% test accuracy (600 steps of
// 128 samples; about 35 s on two cores). Skipped with -short.
func TestMNISTTarget(t *testing.T) {
	if testing.Short() {
		t.Skip("a 600-step training run")
	}
	path := filepath.Join(t.TempDir(), "run.json")
	mustCLI(t, "run", "init", "--model", "mlp-mnist", "-o", path)
	var res train.Result
	if err := json.Unmarshal([]byte(mustCLI(t, "--log-level", "warn", "train", "--run", path, "--eval-every", "-1", "--json")), &res); err != nil {
		t.Fatal(err)
	}
	if res.TestAccuracy == nil || *res.TestAccuracy < 0.975 {
		t.Fatalf("test accuracy %v after %d steps, want ≥ 97.5%%", res.TestAccuracy, res.Steps)
	}
	t.Logf("mlp-mnist: %.2f%% test accuracy, %d steps, %d samples, %.1f s", 100**res.TestAccuracy, res.Steps, res.Samples, res.Seconds)
}

// TestRunInitDiskFull: `swarm run init` over a manifest on a full disk
// fails, naming the file and saying the disk is full; the previous
// manifest still loads, with its run ID.
func TestRunInitDiskFull(t *testing.T) {
	disk := testutil.SmallDisk(t, 256<<10)
	path := filepath.Join(disk, "run.json")
	mustCLI(t, "run", "init", "--model", "mlp-mnist", "--shards", "2", "-o", path)
	before, err := run.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	testutil.FillDisk(t, disk)
	_, _, err = swarmCLI(t, "run", "init", "--model", "mlp-mnist", "--shards", "3", "-o", path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "disk is full") {
		t.Fatalf("run init on a full disk: %v, want the path and that the disk is full", err)
	}
	t.Logf("full disk: %v", err)
	after, err := run.Load(path)
	if err != nil {
		t.Fatalf("the previous manifest no longer loads: %v", err)
	}
	a, _ := before.ID()
	b, _ := after.ID()
	if !a.Equals(b) || len(after.Shards) != 2 {
		t.Fatalf("manifest changed on a full disk: %s → %s", a, b)
	}
}

// TestDataPrepareTokens: swarm data prepare writes a token file of a folder's
// Go files; swarm run init --tokens pins it in a llama manifest whose
// vocabulary is GPT-2's.
func TestDataPrepareTokens(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	code := "package x\n\n" + strings.Repeat("func f(a int) int { return a * 2 }\n", 50)
	os.WriteFile(filepath.Join(src, "a.go"), []byte(code), 0o644)
	os.WriteFile(filepath.Join(src, "b.go"), []byte(code), 0o644)
	os.WriteFile(filepath.Join(src, "c.txt"), []byte("skipped"), 0o644)
	tok := filepath.Join(dir, "corpus.tok")
	out := mustCLI(t, "data", "prepare", "--tokenizer", "gpt2", "--ext", ".go", "--json", src, "-o", tok)
	var res DataPrepared
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	b, err := os.ReadFile(tok)
	if err != nil {
		t.Fatal(err)
	}
	if res.Files != 2 || res.Bytes != int64(2*len(code)) || res.Vocab != 50257 || res.SHA256 != data.CorpusSHA256(string(b)) {
		t.Fatalf("prepared %+v", res)
	}
	man := filepath.Join(dir, "run.json")
	mustCLI(t, "run", "init", "--model", "llama-tiny", "--tokens", tok, "--block-size", "32", "-o", man)
	m, err := run.Load(man)
	if err != nil {
		t.Fatal(err)
	}
	if d := m.Dataset; d.Tokenizer != run.TokenizerGPT2 || d.SHA256 != res.SHA256 || d.Charset != "" || m.Model.Vocab != 50257 {
		t.Fatalf("manifest dataset %+v, vocab %d", d, m.Model.Vocab)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"data", "prepare", src}, "-o"},
		{[]string{"data", "prepare", "--tokenizer", "bpe", src, "-o", tok}, "--tokenizer"},
		{[]string{"data", "prepare", filepath.Join(dir, "none"), "-o", tok}, "none"},
		{[]string{"run", "init", "--model", "llama-tiny", "--tokens", filepath.Join(src, "a.go")}, "not a token file"},
	} {
		if _, _, err := swarmCLI(t, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("swarm %s: err = %v, want it to mention %q", strings.Join(c.args, " "), err, c.want)
		}
	}
}
