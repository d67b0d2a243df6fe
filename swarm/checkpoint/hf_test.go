package checkpoint

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/engine/native"
	"github.com/swarm-train/swarm/spec/run"
)

// hfCase is a small llama with trained-looking parameters: the run's
// initial ones plus noise, so norm weights are not all 1 and every tensor
// matters to the logits.
type hfCase struct {
	m      *run.Manifest
	params [][]float32
	tokens []int32 // n windows of block_size
	n      int
}

func newHFCase(t *testing.T, shards, nKV int, tied bool, seed uint64) *hfCase {
	t.Helper()
	m, err := run.NewLlama(run.PresetLlamaTiny, "abcdefghijklmnopqrstuvwxyz .,\n", shards)
	if err != nil {
		t.Fatal(err)
	}
	m.Model.NLayer, m.Model.NEmbd, m.Model.NHead, m.Model.NKVHead, m.Model.FFNHidden, m.Model.BlockSize = 3, 32, 4, nKV, 48, 12
	m.Model.RopeTheta = 500
	m.Model.TieEmbeddings = tied
	m.Shards = run.EvenShards(3, shards)
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	c := &hfCase{m: m, n: 2}
	for i := range m.Shards {
		p, err := m.InitParams(i)
		if err != nil {
			t.Fatal(err)
		}
		for j := range p {
			p[j] += float32(rng.NormFloat64() * 0.08)
		}
		c.params = append(c.params, p)
	}
	for range c.n * m.Model.BlockSize {
		c.tokens = append(c.tokens, int32(rng.IntN(m.Model.Vocab)))
	}
	return c
}

// nativeLogits runs the case through the native engine, shard after shard.
func (c *hfCase) nativeLogits(t *testing.T) []float32 {
	t.Helper()
	eng := native.New(native.WithThreads(1))
	var in []float32
	for i := range c.m.Shards {
		sh, err := eng.NewShard(c.m, i)
		if err != nil {
			t.Fatal(err)
		}
		copy(sh.Params(), c.params[i])
		if err := sh.Sync(); err != nil {
			t.Fatal(err)
		}
		b := &engine.Batch{N: c.n}
		if i == 0 {
			b.Tokens = c.tokens
		}
		out, _, _, err := sh.Forward(b, in, false)
		if err != nil {
			t.Fatal(err)
		}
		in = out
		sh.Close()
	}
	return in
}

// hfModel is a model folder read back with nothing of swarm's but the
// safetensors reader: the tensors by Hugging Face name, as float64.
type hfModel struct {
	cfg     map[string]any
	tensors map[string][]float64
	shapes  map[string][]int
}

func readHFModel(t *testing.T, dir string) *hfModel {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	h := &hfModel{tensors: map[string][]float64{}, shapes: map[string][]int{}}
	if err := json.Unmarshal(raw, &h.cfg); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	infos, _, dataSec, err := ReadSafetensors(b)
	if err != nil {
		t.Fatal(err)
	}
	for name, ti := range infos {
		if ti.DType != "F32" {
			t.Fatalf("%s is %s, want F32", name, ti.DType)
		}
		raw := dataSec[ti.Offsets[0]:ti.Offsets[1]]
		v := make([]float64, len(raw)/4)
		for i := range v {
			v[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])))
		}
		h.tensors[name], h.shapes[name] = v, ti.Shape
	}
	return h
}

func (h *hfModel) int(t *testing.T, key string) int {
	v, ok := h.cfg[key].(float64)
	if !ok {
		t.Fatalf("config.json: %s is %v", key, h.cfg[key])
	}
	return int(v)
}

// w is the tensor name [rows, cols], checked against the shape.
func (h *hfModel) w(t *testing.T, name string, shape ...int) []float64 {
	t.Helper()
	v, ok := h.tensors[name]
	if !ok {
		t.Fatalf("model.safetensors lacks %s", name)
	}
	if len(h.shapes[name]) != len(shape) {
		t.Fatalf("%s has shape %v, want %v", name, h.shapes[name], shape)
	}
	for i := range shape {
		if h.shapes[name][i] != shape[i] {
			t.Fatalf("%s has shape %v, want %v", name, h.shapes[name], shape)
		}
	}
	return v
}

// forward is LlamaForCausalLM's forward written from the published formulas
// (transformers' modeling_llama), in float64, on one sequence:
//
//	x = embed_tokens[ids]
//	per layer: h = x + o_proj(attn(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))), n = rmsnorm(x)·input_layernorm
//	           x = h + down_proj(silu(gate_proj(m))·up_proj(m)), m = rmsnorm(h)·post_attention_layernorm
//	logits = lm_head(rmsnorm(x)·norm) (lm_head = embed_tokens when tied)
//
// rmsnorm(x) = x / sqrt(mean(x²) + eps); rope(x) = x·cos + rotate_half(x)·sin
// with cos, sin = cat(freqs, freqs) of angle pos·inv_freq,
// inv_freq = 1 / base^(arange(0, hd, 2)/hd), rotate_half(x) = cat(−x₂, x₁);
// attention softmax(q·kᵀ/√hd + causal mask)·v, key/value head j repeated for
// query heads j·g … (j+1)·g − 1.
func (h *hfModel) forward(t *testing.T, ids []int32) [][]float64 {
	C, F, NH, NKV := h.int(t, "hidden_size"), h.int(t, "intermediate_size"), h.int(t, "num_attention_heads"), h.int(t, "num_key_value_heads")
	L, V := h.int(t, "num_hidden_layers"), h.int(t, "vocab_size")
	eps, base := h.cfg["rms_norm_eps"].(float64), h.cfg["rope_theta"].(float64)
	hd, T := C/NH, len(ids)
	linear := func(x []float64, w []float64, out, in int) []float64 {
		y := make([]float64, out)
		for o := range y {
			var s float64
			for i := 0; i < in; i++ {
				s += w[o*in+i] * x[i]
			}
			y[o] = s
		}
		return y
	}
	rmsnorm := func(x, w []float64) []float64 {
		var ss float64
		for _, v := range x {
			ss += v * v
		}
		r := 1 / math.Sqrt(ss/float64(len(x))+eps)
		y := make([]float64, len(x))
		for i := range x {
			y[i] = w[i] * (x[i] * r)
		}
		return y
	}
	rotate := func(v []float64, pos int) {
		half := hd / 2
		x := append([]float64(nil), v...)
		for i := 0; i < hd; i++ {
			ang := float64(pos) * (1 / math.Pow(base, float64(2*(i%half))/float64(hd)))
			var rh float64 // rotate_half(x) = cat(−x₂, x₁)
			if i < half {
				rh = -x[i+half]
			} else {
				rh = x[i-half]
			}
			v[i] = x[i]*math.Cos(ang) + rh*math.Sin(ang)
		}
	}
	emb := h.w(t, "model.embed_tokens.weight", V, C)
	xs := make([][]float64, T)
	for p, id := range ids {
		xs[p] = append([]float64(nil), emb[int(id)*C:(int(id)+1)*C]...)
	}
	for l := 0; l < L; l++ {
		pre := "model.layers." + strconv.Itoa(l) + "."
		inNorm, postNorm := h.w(t, pre+"input_layernorm.weight", C), h.w(t, pre+"post_attention_layernorm.weight", C)
		wq, wk := h.w(t, pre+"self_attn.q_proj.weight", NH*hd, C), h.w(t, pre+"self_attn.k_proj.weight", NKV*hd, C)
		wv, wo := h.w(t, pre+"self_attn.v_proj.weight", NKV*hd, C), h.w(t, pre+"self_attn.o_proj.weight", C, NH*hd)
		wg, wu, wd := h.w(t, pre+"mlp.gate_proj.weight", F, C), h.w(t, pre+"mlp.up_proj.weight", F, C), h.w(t, pre+"mlp.down_proj.weight", C, F)
		q, k, v := make([][]float64, T), make([][]float64, T), make([][]float64, T)
		for p := range xs {
			n := rmsnorm(xs[p], inNorm)
			q[p], k[p], v[p] = linear(n, wq, NH*hd, C), linear(n, wk, NKV*hd, C), linear(n, wv, NKV*hd, C)
			for hh := 0; hh < NH; hh++ {
				rotate(q[p][hh*hd:(hh+1)*hd], p)
			}
			for hh := 0; hh < NKV; hh++ {
				rotate(k[p][hh*hd:(hh+1)*hd], p)
			}
		}
		group := NH / NKV
		for p := range xs {
			att := make([]float64, NH*hd)
			for hh := 0; hh < NH; hh++ {
				kv := hh / group
				scores := make([]float64, p+1)
				mx := math.Inf(-1)
				for s := 0; s <= p; s++ {
					var d float64
					for i := 0; i < hd; i++ {
						d += q[p][hh*hd+i] * k[s][kv*hd+i]
					}
					scores[s] = d / math.Sqrt(float64(hd))
					mx = math.Max(mx, scores[s])
				}
				var z float64
				for s := range scores {
					scores[s] = math.Exp(scores[s] - mx)
					z += scores[s]
				}
				for s := range scores {
					for i := 0; i < hd; i++ {
						att[hh*hd+i] += scores[s] / z * v[s][kv*hd+i]
					}
				}
			}
			o := linear(att, wo, C, NH*hd)
			for i := range o {
				xs[p][i] += o[i]
			}
			m := rmsnorm(xs[p], postNorm)
			g, u := linear(m, wg, F, C), linear(m, wu, F, C)
			for i := range g {
				g[i] = g[i] / (1 + math.Exp(-g[i])) * u[i]
			}
			d := linear(g, wd, C, F)
			for i := range d {
				xs[p][i] += d[i]
			}
		}
	}
	head := emb
	if tied, _ := h.cfg["tie_word_embeddings"].(bool); !tied {
		head = h.w(t, "lm_head.weight", V, C)
	} else if _, ok := h.tensors["lm_head.weight"]; ok {
		t.Fatal("tied model also writes lm_head.weight")
	}
	norm := h.w(t, "model.norm.weight", C)
	logits := make([][]float64, T)
	for p := range xs {
		logits[p] = linear(rmsnorm(xs[p], norm), head, V, C)
	}
	return logits
}

// maxRelDiff is max |a−b| over the largest |b| (at least 1).
func maxRelDiff(a []float32, b [][]float64, V int) float64 {
	var d, scale float64 = 0, 1
	for p, row := range b {
		for j, w := range row {
			d = math.Max(d, math.Abs(float64(a[p*V+j])-w))
			scale = math.Max(scale, math.Abs(w))
		}
	}
	return d / scale
}

// The export of a llama, read back with the safetensors reader and run by a
// forward written from Hugging Face's formulas over Hugging Face's names,
// gives the native engine's logits to 1e-4: untied and split in two, tied
// on one shard, with grouped-query attention and without.
func TestExportHFMatchesNative(t *testing.T) {
	for _, tc := range []struct {
		name   string
		shards int
		nKV    int
		tied   bool
	}{
		{"split-gqa", 2, 2, false},
		{"tied-mha", 1, 4, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newHFCase(t, tc.shards, tc.nKV, tc.tied, 11)
			dir := filepath.Join(t.TempDir(), "hf")
			files, err := ExportHF(dir, c.m, c.params, 42)
			if err != nil {
				t.Fatal(err)
			}
			if len(files) != 4 {
				t.Fatalf("wrote %v", files)
			}
			h := readHFModel(t, dir)
			if h.cfg["architectures"].([]any)[0] != "LlamaForCausalLM" || h.cfg["torch_dtype"] != "float32" || h.int(t, "max_position_embeddings") != c.m.Model.BlockSize {
				t.Fatalf("config.json: %v", h.cfg)
			}
			wantTensors := 2 + 9*c.m.Model.NLayer
			if !tc.tied {
				wantTensors++
			}
			if len(h.tensors) != wantTensors {
				t.Fatalf("%d tensors, want %d", len(h.tensors), wantTensors)
			}
			got := c.nativeLogits(t)
			T, V := c.m.Model.BlockSize, c.m.Model.Vocab
			for s := 0; s < c.n; s++ {
				ref := h.forward(t, c.tokens[s*T:(s+1)*T])
				d := maxRelDiff(got[s*T*V:(s+1)*T*V], ref, V)
				if d > 1e-4 {
					t.Fatalf("window %d: native and the Hugging Face reference differ by %.3g (relative)", s, d)
				}
				t.Logf("window %d: native vs the Hugging Face reference: %.2g (largest difference over the largest logit)", s, d)
			}
			// A tensor renamed or permuted shows: the reference on the
			// wrong weights is far off (the check can fail).
			q := "model.layers.1.self_attn.q_proj.weight"
			h.tensors[q] = swapHalves(h.tensors[q], c.m.Model.NEmbd)
			if d := maxRelDiff(got[:T*V], h.forward(t, c.tokens[:T]), V); d < 1e-3 {
				t.Fatalf("reference insensitive to q_proj's row order (%.3g)", d)
			}
		})
	}
}

// swapHalves swaps rows 2i and 2i+1 of a [rows, cols] matrix: what an
// export mixing up the interleaved-pair rotary convention with Hugging
// Face's split halves would get wrong.
func swapHalves(w []float64, cols int) []float64 {
	out := append([]float64(nil), w...)
	for r := 0; r+1 < len(w)/cols; r += 2 {
		copy(out[r*cols:(r+1)*cols], w[(r+1)*cols:(r+2)*cols])
		copy(out[(r+1)*cols:(r+2)*cols], w[r*cols:(r+1)*cols])
	}
	return out
}

// An export into a folder that holds anything is refused naming it; other
// models than llama have no Hugging Face format here.
func TestExportHFRefusals(t *testing.T) {
	c := newHFCase(t, 1, 2, true, 3)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "keep.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := ExportHF(dir, c.m, c.params, 1)
	if !errors.Is(err, ErrOutputNotEmpty) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "keep.txt") {
		t.Fatalf("export into a non-empty folder: %v", err)
	}
	g := run.NewGPTChar("abc", 1)
	p, _ := g.InitParams(0)
	if _, err := ExportHF(filepath.Join(t.TempDir(), "g"), g, [][]float32{p}, 1); !errors.Is(err, ErrNotExportable) || !strings.Contains(err.Error(), "gpt-char") {
		t.Fatalf("gpt-char export: %v", err)
	}
	// A llama with learned projections at its cuts has a bottleneck in
	// the residual stream that LlamaForCausalLM cannot hold.
	r, err := run.NewLlama(run.PresetLlamaTiny, "abc", 2)
	if err != nil {
		t.Fatal(err)
	}
	r.Training.ActivationRank = 16
	rp := make([][]float32, 2)
	for i := range rp {
		rp[i], _ = r.InitParams(i)
	}
	if _, err := ExportHF(filepath.Join(t.TempDir(), "r"), r, rp, 1); !errors.Is(err, ErrNotExportable) || !strings.Contains(err.Error(), "training.activation_rank") {
		t.Fatalf("ranked llama export: %v", err)
	}
	if err := ExportSafetensors(io.Discard, r, rp, nil); err != nil {
		t.Fatalf("ranked llama, safetensors under layout names: %v", err)
	}
	if _, err := ExportHF(filepath.Join(t.TempDir(), "short"), c.m, [][]float32{c.params[0][:10]}, 1); err == nil {
		t.Fatal("export of a short parameter buffer accepted")
	}
}

// With transformers installed, AutoModelForCausalLM.from_pretrained loads the
// export and gives the native engine's logits to 1e-4 in float32. Skipped
// (with the reason) where python3 has no transformers, as on Debian CI.
func TestExportHFTransformers(t *testing.T) {
	py := "/usr/bin/python3"
	if p := os.Getenv("SWARM_PYTHON"); p != "" {
		py = p
	}
	if out, err := exec.Command(py, "-c", "import transformers").CombinedOutput(); err != nil {
		t.Skipf("%s cannot import transformers (%v): %s", py, err, lastLine(string(out)))
	}
	for _, tied := range []bool{false, true} {
		shards := 2
		if tied {
			shards = 1
		}
		c := newHFCase(t, shards, 2, tied, 5)
		dir := filepath.Join(t.TempDir(), "hf")
		if _, err := ExportHF(dir, c.m, c.params, 7); err != nil {
			t.Fatal(err)
		}
		ids, _ := json.Marshal(c.tokens)
		out := filepath.Join(t.TempDir(), "logits.f32")
		script := `
import sys, json, torch
from transformers import AutoModelForCausalLM
try:
    m = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32, attn_implementation="eager")
except TypeError:  # transformers before attn_implementation
    m = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32)
m.eval()
ids = torch.tensor(json.loads(sys.argv[2]), dtype=torch.long).view(` + strconv.Itoa(c.n) + `, -1)
with torch.no_grad():
    logits = m(input_ids=ids).logits.float().contiguous()
open(sys.argv[3], "wb").write(logits.numpy().astype("<f4").tobytes())
`
		if b, err := exec.Command(py, "-c", script, dir, string(ids), out).CombinedOutput(); err != nil {
			t.Fatalf("transformers: %v\n%s", err, b)
		}
		rel := logitsDiff(t, out, c.nativeLogits(t), "transformers")
		if rel > 1e-4 {
			t.Fatalf("tied=%v: transformers and native logits differ by %.3g (relative)", tied, rel)
		}
		t.Logf("tied=%v: transformers vs native logits: %.3g relative", tied, rel)
	}
}

// logitsDiff reads the little-endian float32 logits another program wrote
// to path and returns their largest difference from want, relative to
// want's largest magnitude (at least 1).
func logitsDiff(t *testing.T, path string, want []float32, who string) float64 {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != 4*len(want) {
		t.Fatalf("%s gave %d logits, native %d", who, len(raw)/4, len(want))
	}
	var d, scale float64 = 0, 1
	for i, w := range want {
		g := float64(math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])))
		d = math.Max(d, math.Abs(g-float64(w)))
		scale = math.Max(scale, math.Abs(float64(w)))
	}
	return d / scale
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// hfTorchScript is LlamaForCausalLM's forward in PyTorch, written from the
// published formulas over the Hugging Face names and config keys, reading
// model.safetensors with nothing but json and numpy: argv is the model
// folder, the token ids as JSON (n windows), the output file of float32
// logits.
const hfTorchScript = `
import json, struct, sys
import numpy as np
import torch

d = sys.argv[1]
cfg = json.load(open(d + "/config.json"))
raw = open(d + "/model.safetensors", "rb").read()
(hlen,) = struct.unpack("<Q", raw[:8])
header = json.loads(raw[8:8 + hlen])
data = raw[8 + hlen:]
W = {}
for name, info in header.items():
    if name == "__metadata__":
        continue
    assert info["dtype"] == "F32", name
    a, b = info["data_offsets"]
    W[name] = torch.from_numpy(np.frombuffer(data[a:b], dtype="<f4").copy()).view(*info["shape"]).double()

C, L = cfg["hidden_size"], cfg["num_hidden_layers"]
H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
hd = cfg.get("head_dim") or C // H
eps, base = cfg["rms_norm_eps"], cfg["rope_theta"]

def rmsnorm(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)

ids = torch.tensor(json.loads(sys.argv[2]), dtype=torch.long).view(int(sys.argv[4]), -1)
n, T = ids.shape
inv_freq = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
emb = torch.cat((freqs, freqs), dim=-1)
cos, sin = emb.cos(), emb.sin()
mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)

x = W["model.embed_tokens.weight"][ids]
for l in range(L):
    p = "model.layers.%d." % l
    h = rmsnorm(x, W[p + "input_layernorm.weight"])
    q = (h @ W[p + "self_attn.q_proj.weight"].T).view(n, T, H, hd).transpose(1, 2)
    k = (h @ W[p + "self_attn.k_proj.weight"].T).view(n, T, KV, hd).transpose(1, 2)
    v = (h @ W[p + "self_attn.v_proj.weight"].T).view(n, T, KV, hd).transpose(1, 2)
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
    att = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5 + mask, dim=-1)
    y = (att @ v).transpose(1, 2).reshape(n, T, H * hd)
    x = x + y @ W[p + "self_attn.o_proj.weight"].T
    h = rmsnorm(x, W[p + "post_attention_layernorm.weight"])
    g, u = h @ W[p + "mlp.gate_proj.weight"].T, h @ W[p + "mlp.up_proj.weight"].T
    x = x + (torch.nn.functional.silu(g) * u) @ W[p + "mlp.down_proj.weight"].T
head = W["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else W["lm_head.weight"]
logits = rmsnorm(x, W["model.norm.weight"]) @ head.T
open(sys.argv[3], "wb").write(logits.float().contiguous().numpy().astype("<f4").tobytes())
`

// The same check in PyTorch (float64), as CI's python3-torch allows: a
// forward from the published formulas, in transformers' own terms
// (rotate_half, repeat_kv), reading the export's files by their Hugging Face
// names. Skipped without torch.
func TestExportHFTorchReference(t *testing.T) {
	py := "/usr/bin/python3"
	if out, err := exec.Command(py, "-c", "import torch, numpy").CombinedOutput(); err != nil {
		t.Skipf("%s cannot import torch and numpy (%v): %s", py, err, lastLine(string(out)))
	}
	for _, tc := range []struct {
		shards, nKV int
		tied        bool
	}{{2, 2, false}, {1, 4, true}} {
		c := newHFCase(t, tc.shards, tc.nKV, tc.tied, 13)
		dir := filepath.Join(t.TempDir(), "hf")
		if _, err := ExportHF(dir, c.m, c.params, 3); err != nil {
			t.Fatal(err)
		}
		ids, _ := json.Marshal(c.tokens)
		out := filepath.Join(t.TempDir(), "logits.f32")
		if b, err := exec.Command(py, "-c", hfTorchScript, dir, string(ids), out, strconv.Itoa(c.n)).CombinedOutput(); err != nil {
			t.Fatalf("torch reference: %v\n%s", err, b)
		}
		rel := logitsDiff(t, out, c.nativeLogits(t), "the torch reference")
		if rel > 1e-4 {
			t.Fatalf("%+v: the torch reference and native logits differ by %.3g (relative)", tc, rel)
		}
		t.Logf("%+v: torch reference vs native logits: %.2g relative", tc, rel)
	}
}
