package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/swarm-train/swarm/internal/atomicfile"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/checkpoint"
	"github.com/swarm-train/swarm/swarm/data"
	"github.com/swarm-train/swarm/swarm/dataset"
)

func init() {
	register(&cli.Command{
		Name:  "run",
		Usage: "create and inspect run manifests",
		Subcommands: []*cli.Command{
			{
				Name:      "init",
				Usage:     "write a run manifest for a built-in model",
				ArgsUsage: " ",
				Description: `Writes a validated manifest with the model's defaults, changed by the flags
given. For gpt-char and the llama presets (llama-tiny, llama-124m,
llama-350m) the corpus is read to build the character set stored in the
manifest (default: the Opticks text shipped with Go). The manifest pins
the data set's root CID (dataset.root): nodes without the data fetch it from
the run's peers and check every chunk against it.`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "model", Required: true, Usage: "mlp-mnist, gpt-char, llama-tiny, llama-124m or llama-350m"},
					&cli.IntFlag{Name: "shards", Value: 1, Usage: "number of contiguous stages to split the model into"},
					&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "run.json", Usage: "manifest file to write (- for stdout)"},
					&cli.StringFlag{Name: "name", Usage: "run name (default: the model's)"},
					&cli.Uint64Flag{Name: "seed", Usage: "seed of initialisation and sampling"},
					&cli.IntFlag{Name: "steps", Usage: "optimizer steps; the cosine decay is fitted to them"},
					&cli.IntFlag{Name: "batch", Usage: "micro-batch size on one node"},
					&cli.IntFlag{Name: "target-batch", Usage: "samples per optimizer step across the swarm"},
					&cli.StringFlag{Name: "optimizer", Usage: "adamw or sgd"},
					&cli.Float64Flag{Name: "lr", Usage: "peak learning rate"},
					&cli.Float64Flag{Name: "min-lr", Usage: "learning rate at the end of the decay"},
					&cli.IntFlag{Name: "warmup", Usage: "linear warm-up steps"},
					&cli.Float64Flag{Name: "weight-decay", Usage: "decoupled weight decay"},
					&cli.Float64Flag{Name: "momentum", Usage: "SGD momentum"},
					&cli.Float64Flag{Name: "clip", Usage: "global gradient-norm clip (0: none)"},
					&cli.StringFlag{Name: "hidden", Usage: "mlp-mnist hidden widths, comma-separated (e.g. 1024,1024)"},
					&cli.IntFlag{Name: "n-layer", Usage: "gpt-char or llama transformer blocks"},
					&cli.IntFlag{Name: "n-head", Usage: "gpt-char or llama attention (query) heads"},
					&cli.IntFlag{Name: "n-embd", Usage: "gpt-char or llama width"},
					&cli.IntFlag{Name: "block-size", Usage: "gpt-char or llama context length"},
					&cli.IntFlag{Name: "n-kv-head", Usage: "llama key/value heads (fewer than n-head: grouped-query attention)"},
					&cli.IntFlag{Name: "ffn-hidden", Usage: "llama SwiGLU hidden width"},
					&cli.BoolFlag{Name: "tie-embeddings", Usage: "llama: the head reuses the token embedding (one shard only)"},
					&cli.StringFlag{Name: "corpus", Usage: "gpt-char or llama text file, one token a character (default: Go's Opticks text, found at run time)"},
					&cli.StringFlag{Name: "tokens", Usage: "gpt-char or llama: a token file from swarm data prepare (subword tokens; the model's vocabulary is the tokenizer's)"},
					&cli.StringFlag{Name: "data-root", Usage: "data set root CID to pin (from swarm data add; default: the MNIST files' root, or the corpus's)"},
					&cli.Float64Flag{Name: "val-fraction", Usage: "held-out fraction of the data for validation"},
					&cli.StringFlag{Name: "averaging", Usage: "sync or local"},
					&cli.IntFlag{Name: "group-size", Usage: "averaging group size"},
					&cli.IntFlag{Name: "local-steps", Usage: "local mode: inner steps between averaging rounds"},
					&cli.BoolFlag{Name: "overlap", Usage: "local mode: keep training while a round's deltas are averaged (default on; --overlap=false waits)"},
					&cli.BoolFlag{Name: "delayed-updates", Usage: "sync mode: average an epoch's gradient while the next epoch computes, and apply its step when it lands (one-step-delayed updates)"},
					&cli.StringFlag{Name: "compression", Usage: "averaging compression: none, bf16, fp16 or int8 (sync gradients under Adam: none or bf16)"},
					&cli.Float64Flag{Name: "delta-keep", Usage: "local mode: compress outer rounds' deltas (delta_codec topk) to this fraction of their values, largest first, with error feedback (e.g. 0.02); sets outer lr 1 and momentum 0"},
					&cli.IntFlag{Name: "delta-bits", Usage: "with --delta-keep: bits a kept value, 2, 4 or 8 (default 4)"},
					&cli.StringFlag{Name: "aggregation", Usage: "how each reducer combines a group's values: mean, centered-clip or trimmed-mean (robust to members who lie)"},
					&cli.Float64Flag{Name: "clip-tau", Usage: "centered-clip: τ as a multiple of the median distance from the coordinate median (0: 2)"},
					&cli.IntFlag{Name: "clip-iters", Usage: "centered-clip: most iterations (0: 5)"},
					&cli.Float64Flag{Name: "norm-k", Usage: "reject a member's part whose norm exceeds k × the group's median (0: off)"},
					&cli.IntFlag{Name: "audit-parts", Usage: "reducer audits: parts each member re-computes after every averaging round, to catch reducers that lie (0: off)"},
					&cli.Float64Flag{Name: "audit-rate", Usage: "reducer audits: the share of rounds audited, drawn by each group once its results are out (0: every round)"},
					&cli.StringFlag{Name: "activations", Usage: "precision of activations between shards: fp32, bf16 (half the traffic), int8 (blocks of 64 with a scale: about a quarter) or topk (each sample's, or a language model's position's, largest values in bf16 with a bitmap; see --activation-keep)"},
					&cli.Float64Flag{Name: "activation-keep", Usage: "topk activations: the fraction of each sample's (language models: each position's) values sent, largest first (default 1: every non-zero value); implies --activations topk"},
					&cli.IntFlag{Name: "activation-rank", Usage: "a learned projection at every cut between shards: each sample's (language models: each position's) activations cross as this many values, and their gradients come back as many (adds the projections to the model; 0: none)"},
					&cli.Float64Flag{Name: "sync-loss-margin", Usage: "nats a state offered by a single donor may lose on held-out data against a node's own for it to be installed (0: 0.05)"},
					&cli.StringFlag{Name: "admission", Usage: "who may take part: open (anyone), token (operator-signed tokens) or private (a swarm key)"},
					&cli.StringFlag{Name: "operator-key", Usage: "token admission: the operator's public key, or its key file (swarm run keygen)"},
					&cli.StringFlag{Name: "swarm-key", Usage: "private admission: the swarm key file (swarm run keygen --swarm-key)"},
				},
				Action: runInit,
			},
			keygenCommand(),
			admitCommand(),
			{
				Name:      "show",
				Usage:     "print a manifest's run ID and its shards",
				ArgsUsage: "run.json",
				Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print a JSON object"}},
				Action:    runShowCmd,
			},
			{
				Name:  "export",
				Usage: "export a run's newest checkpoint: one safetensors file, or a Hugging Face model folder (--format hf)",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "run", Required: true, Usage: "run manifest"},
					&cli.StringFlag{Name: "checkpoint-dir", Usage: "folder of swarm train checkpoints holding every shard (default: the node checkpoints under --home)"},
					homesFlag("node home whose runs/<run ID>/shard-<k> folders hold the shards' checkpoints; repeat it to gather the shards of several nodes"),
					&cli.StringFlag{Name: "format", Value: "safetensors", Usage: "safetensors (the run's tensor names) or hf (config.json and model.safetensors for transformers' LlamaForCausalLM)"},
					&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "file to write (safetensors, default model.safetensors) or an empty or new folder (hf)"},
				},
				Action: runExport,
			},
		},
	})
}

// manifestFromFlags builds the manifest `swarm run init` writes.
func manifestFromFlags(c *cli.Context) (*run.Manifest, error) {
	shards := c.Int("shards")
	if shards < 1 {
		return nil, fmt.Errorf("--shards must be at least 1, got %d", shards)
	}
	var m *run.Manifest
	switch arch := c.String("model"); arch {
	case run.ArchMLPMNIST:
		m = run.NewMLPMNIST(1)
		if c.IsSet("hidden") {
			var hs []int
			for _, f := range strings.Split(c.String("hidden"), ",") {
				h, err := strconv.Atoi(strings.TrimSpace(f))
				if err != nil {
					return nil, fmt.Errorf("--hidden %q: %v", c.String("hidden"), err)
				}
				hs = append(hs, h)
			}
			m.Model.Hidden = hs
		}
		m.Dataset.Root = data.MNISTRoot
	case run.ArchGPTChar, run.PresetLlamaTiny, run.PresetLlama124M, run.PresetLlama350M:
		if c.IsSet("tokens") && c.IsSet("corpus") {
			return nil, fmt.Errorf("--tokens and --corpus: give one")
		}
		var err error
		if m, err = textManifest(arch, c.String("corpus"), c.String("tokens")); err != nil {
			return nil, err
		}
		setInt(c, "n-layer", &m.Model.NLayer)
		setInt(c, "n-head", &m.Model.NHead)
		setInt(c, "n-embd", &m.Model.NEmbd)
		setInt(c, "block-size", &m.Model.BlockSize)
		if m.Model.Arch == run.ArchLlama {
			setInt(c, "n-kv-head", &m.Model.NKVHead)
			setInt(c, "ffn-hidden", &m.Model.FFNHidden)
			if shards > 1 {
				m.Model.TieEmbeddings = false // the embedding and the head live on different shards
			}
			if c.IsSet("tie-embeddings") {
				m.Model.TieEmbeddings = c.Bool("tie-embeddings")
			}
		} else if c.IsSet("n-kv-head") || c.IsSet("ffn-hidden") || c.IsSet("tie-embeddings") {
			return nil, fmt.Errorf("--n-kv-head, --ffn-hidden and --tie-embeddings are for the llama presets")
		}
	default:
		return nil, fmt.Errorf("--model %q: want %s, %s or a llama preset (%s)", arch, run.ArchMLPMNIST, run.ArchGPTChar, strings.Join(run.LlamaPresets, ", "))
	}
	if units := m.Model.Units(); shards > units {
		return nil, fmt.Errorf("--shards %d: the model has only %d units (layers or blocks) to split", shards, units)
	}
	if err := m.Split(shards); err != nil {
		return nil, fmt.Errorf("--shards %d: %w", shards, err)
	}
	setString(c, "name", &m.Name)
	if c.IsSet("seed") {
		m.Seed = c.Uint64("seed")
	}
	setFloat(c, "val-fraction", &m.Dataset.ValFraction)
	setString(c, "data-root", &m.Dataset.Root)
	o := &m.Optimizer
	if c.IsSet("optimizer") {
		o.Name = c.String("optimizer")
		if o.Name == "sgd" && !c.IsSet("momentum") {
			o.Momentum = 0.9
		}
	}
	setFloat(c, "lr", &o.LR)
	if c.IsSet("lr") && !c.IsSet("min-lr") {
		o.MinLR = o.LR / 100
	}
	setFloat(c, "min-lr", &o.MinLR)
	setInt(c, "warmup", &o.WarmupSteps)
	setFloat(c, "weight-decay", &o.WeightDecay)
	setFloat(c, "momentum", &o.Momentum)
	setFloat(c, "clip", &o.ClipNorm)
	if c.IsSet("steps") {
		m.Training.Steps = c.Int("steps")
		o.DecaySteps = max(m.Training.Steps-o.WarmupSteps, 0)
	}
	setInt(c, "batch", &m.Training.BatchSize)
	if c.IsSet("batch") && !c.IsSet("target-batch") && m.Training.TargetBatch < m.Training.BatchSize {
		m.Training.TargetBatch = m.Training.BatchSize
	}
	setInt(c, "target-batch", &m.Training.TargetBatch)
	a := &m.Averaging
	if c.IsSet("averaging") {
		a.Mode = c.String("averaging")
		if a.Mode == run.ModeLocal {
			a.LocalSteps, a.OuterLR, a.OuterMomentum, a.Overlap = 100, 0.7, 0.9, true
		}
	}
	setInt(c, "group-size", &a.GroupSize)
	if a.MinGroupSize > a.GroupSize {
		a.MinGroupSize = a.GroupSize
	}
	setInt(c, "local-steps", &a.LocalSteps)
	if c.IsSet("overlap") {
		a.Overlap = c.Bool("overlap")
	}
	if c.IsSet("delayed-updates") {
		a.DelayedUpdates = c.Bool("delayed-updates")
	}
	setString(c, "compression", &a.Compression)
	if c.IsSet("delta-keep") {
		// Error feedback already carries past rounds forward; on sparse
		// deltas outer momentum hurt (mlp-mnist: README, BENCHMARKS.md).
		a.DeltaCodec, a.DeltaKeep, a.DeltaBits, a.OuterLR, a.OuterMomentum = run.DeltaTopK, c.Float64("delta-keep"), 4, 1, 0
	}
	if c.IsSet("delta-bits") {
		if a.DeltaCodec != run.DeltaTopK {
			return nil, fmt.Errorf("--delta-bits: only with --delta-keep")
		}
		a.DeltaBits = c.Int("delta-bits")
	}
	// New runs aggregate robustly: centered-clip with norm_k 10 costs about
	// 10% more CPU than the mean per round (BENCHMARKS.md) and keeps training
	// within a point of the clean run with up to 1 in 4 lying holders.
	if !c.IsSet("aggregation") {
		a.Aggregation = run.AggregateCenteredClip
		if !c.IsSet("norm-k") {
			a.NormK = 10
		}
	}
	setString(c, "aggregation", &a.Aggregation)
	setFloat(c, "clip-tau", &a.ClipTau)
	setInt(c, "clip-iters", &a.ClipIters)
	setFloat(c, "norm-k", &a.NormK)
	setInt(c, "audit-parts", &a.AuditParts)
	setFloat(c, "audit-rate", &a.AuditRate)
	setActivations(c, &m.Training)
	setFloat(c, "sync-loss-margin", &m.Training.SyncLossMargin)
	if err := admissionFromFlags(c, m); err != nil {
		return nil, err
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// corpusRoot is the data set root of a text run's corpus (path, or Go's
// Opticks text when empty).
func corpusRoot(path string) (string, error) {
	p, err := data.CorpusPath(path)
	if err != nil {
		return "", err
	}
	r, err := dataset.Build([]string{p}, 0)
	if err != nil {
		return "", err
	}
	return r.CID().String(), nil
}

// textManifest is the one-shard manifest of a text model (gpt-char or a
// llama preset) on a corpus (one token a character; "" is Go's Opticks
// text) or on a token file from swarm data prepare (tokens, when given).
func textManifest(arch, corpus, tokens string) (*run.Manifest, error) {
	path := corpus
	if path != "" {
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, err
		}
		path = abs
	}
	if tokens != "" {
		abs, err := filepath.Abs(tokens)
		if err != nil {
			return nil, err
		}
		path = abs
	}
	text, err := data.ReadCorpus(path)
	if err != nil {
		return nil, err
	}
	charset := data.Charset(text)
	var tokenizer string
	if tokens != "" {
		h, err := data.ParseTokenHeader([]byte(text))
		if err != nil {
			return nil, fmt.Errorf("--tokens %s: %w", tokens, err)
		}
		charset, tokenizer = "", h.Tokenizer
	}
	var m *run.Manifest
	if arch == run.ArchGPTChar {
		m = run.NewGPTChar(charset, 1)
	} else if m, err = run.NewLlama(arch, charset, 1); err != nil {
		return nil, err
	}
	m.Dataset.Path, m.Dataset.SHA256 = path, data.CorpusSHA256(text)
	if tokenizer != "" {
		m.Dataset.Tokenizer, m.Model.Vocab = tokenizer, run.TokenizerVocab(tokenizer)
	}
	if m.Dataset.Root, err = corpusRoot(path); err != nil {
		return nil, err
	}
	return m, nil
}

// homesFlag is a repeatable --home naming node homes whose checkpoints are
// read (the shards a model needs may be spread over several nodes).
func homesFlag(usage string) cli.Flag {
	return &cli.StringSliceFlag{Name: "home", Value: cli.NewStringSlice(defaultHome()), EnvVars: []string{"SWARM_HOME"}, Usage: usage}
}

// runsDirs is HOME/runs of every --home.
func runsDirs(c *cli.Context) []string {
	var dirs []string
	for _, h := range c.StringSlice("home") {
		dirs = append(dirs, filepath.Join(h, "runs"))
	}
	return dirs
}

// setActivations applies --activations, --activation-keep and
// --activation-rank to t: a keep alone means topk, and topk without one
// keeps every non-zero value.
func setActivations(c *cli.Context, t *run.TrainingSpec) {
	setString(c, "activations", &t.Activations)
	if c.IsSet("activation-keep") {
		if !c.IsSet("activations") {
			t.Activations = run.ActivationsTopK
		}
		t.ActivationKeep = c.Float64("activation-keep")
	} else if t.Activations == run.ActivationsTopK {
		t.ActivationKeep = 1
	}
	if c.IsSet("activation-rank") {
		t.ActivationRank = c.Int("activation-rank")
	}
}

func setString(c *cli.Context, name string, dst *string) {
	if c.IsSet(name) {
		*dst = c.String(name)
	}
}

func setInt(c *cli.Context, name string, dst *int) {
	if c.IsSet(name) {
		*dst = c.Int(name)
	}
}

func setFloat(c *cli.Context, name string, dst *float64) {
	if c.IsSet(name) {
		*dst = c.Float64(name)
	}
}

func runInit(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("run init: unexpected argument %q (the output file is -o FILE)", c.Args().First())
	}
	m, err := manifestFromFlags(c)
	if err != nil {
		return fmt.Errorf("run init: %w", err)
	}
	id, err := m.ID()
	if err != nil {
		return err
	}
	out := c.String("output")
	if out == "-" {
		b, _ := json.MarshalIndent(m, "", "  ")
		_, err := fmt.Fprintf(c.App.Writer, "%s\n", b)
		return err
	}
	if err := m.Save(out); err != nil {
		return fmt.Errorf("run init: %w", err)
	}
	fmt.Fprintf(c.App.Writer, "wrote %s: run %s, %s in %d shard(s)\n", out, id, m.Model.Arch, len(m.Shards))
	return nil
}

// RunInfo is what `swarm run show` prints.
type RunInfo struct {
	RunID          string      `json:"run_id"`
	Name           string      `json:"name"`
	Arch           string      `json:"arch"`
	Model          string      `json:"model"`
	Dataset        string      `json:"dataset"`
	Params         int         `json:"params"`
	FLOPsPerSample float64     `json:"flops_per_sample"`
	Optimizer      string      `json:"optimizer"`
	Training       string      `json:"training"`
	Averaging      string      `json:"averaging"`
	Shards         []ShardInfo `json:"shards"`
}

// ShardInfo describes one shard in RunInfo.
type ShardInfo struct {
	Index          int     `json:"index"`
	ShardID        string  `json:"shard_id"`
	Start          int     `json:"start"`
	End            int     `json:"end"`
	Params         int     `json:"params"`
	FLOPsPerSample float64 `json:"flops_per_sample"`
	ActivationSize int     `json:"activation_size"` // float32 values per sample sent to the next shard
}

func describeRun(m *run.Manifest) (*RunInfo, error) {
	id, err := m.ID()
	if err != nil {
		return nil, err
	}
	md := m.Model
	info := &RunInfo{RunID: id.String(), Name: m.Name, Arch: md.Arch}
	switch md.Arch {
	case run.ArchMLPMNIST:
		ws := []string{strconv.Itoa(md.Input)}
		for _, h := range md.Hidden {
			ws = append(ws, strconv.Itoa(h))
		}
		info.Model = "MLP " + strings.Join(append(ws, strconv.Itoa(md.Classes)), "-") + ", ReLU"
	case run.ArchGPTChar:
		info.Model = fmt.Sprintf("GPT n_layer=%d n_head=%d n_embd=%d block_size=%d vocab=%d", md.NLayer, md.NHead, md.NEmbd, md.BlockSize, md.Vocab)
	case run.ArchLlama:
		info.Model = fmt.Sprintf("Llama n_layer=%d n_head=%d n_kv_head=%d n_embd=%d ffn_hidden=%d block_size=%d vocab=%d rope_theta=%g", md.NLayer, md.NHead, md.NKVHead, md.NEmbd, md.FFNHidden, md.BlockSize, md.Vocab, md.RopeTheta)
		if md.TieEmbeddings {
			info.Model += ", tied head"
		}
	}
	d := m.Dataset
	info.Dataset = d.Name
	if d.Name == run.DatasetText {
		p := d.Path
		if p == "" {
			p = "$GOROOT/" + data.DefaultCorpus
		}
		info.Dataset += " " + p
		if d.Tokenizer != "" {
			info.Dataset += ", tokenizer " + d.Tokenizer
		}
	}
	info.Dataset += fmt.Sprintf(", val_fraction %g", d.ValFraction)
	if d.Root != "" {
		info.Dataset += ", root " + d.Root
	}
	o := m.Optimizer
	info.Optimizer = fmt.Sprintf("%s lr %g→%g, warm-up %d, cosine %d, weight decay %g, clip %g", o.Name, o.LR, o.MinLR, o.WarmupSteps, o.DecaySteps, o.WeightDecay, o.ClipNorm)
	t := m.Training
	info.Training = fmt.Sprintf("%d steps of %d samples (micro-batch %d)", t.Steps, t.TargetBatch, t.BatchSize)
	switch t.Activations {
	case run.ActivationsBF16, run.ActivationsInt8:
		info.Training += ", " + t.Activations + " activations between shards"
	case run.ActivationsTopK:
		info.Training += fmt.Sprintf(", topk activations between shards (%g of each row's values, bf16)", t.ActivationKeep)
	}
	if t.ActivationRank > 0 {
		info.Training += fmt.Sprintf(", learned rank-%d projections at the cuts", t.ActivationRank)
	}
	a := m.Averaging
	info.Averaging = fmt.Sprintf("%s, groups of %d (min %d), %s, timeout %dms", a.Mode, a.GroupSize, a.MinGroupSize, a.Compression, a.TimeoutMS)
	if a.Mode == run.ModeLocal {
		info.Averaging += fmt.Sprintf(", %d local steps, outer lr %g momentum %g", a.LocalSteps, a.OuterLR, a.OuterMomentum)
		if a.Overlap {
			info.Averaging += ", averaging overlapped with training"
		}
	}
	if a.DelayedUpdates {
		info.Averaging += ", delayed updates (averaging overlapped with the next epoch)"
	}
	for i, s := range m.Shards {
		n, err := m.NumParams(i)
		if err != nil {
			return nil, err
		}
		f, err := m.FLOPsPerSample(i)
		if err != nil {
			return nil, err
		}
		sid, err := m.ShardID(i)
		if err != nil {
			return nil, err
		}
		info.Shards = append(info.Shards, ShardInfo{Index: i, ShardID: sid.String(), Start: s.Start, End: s.End, Params: n, FLOPsPerSample: f, ActivationSize: m.ActivationSize(i)})
		info.Params += n
		info.FLOPsPerSample += f
	}
	return info, nil
}

func runShowCmd(c *cli.Context) error {
	if c.NArg() != 1 {
		return fmt.Errorf("run show: want one manifest file, got %d arguments", c.NArg())
	}
	m, err := run.Load(c.Args().First())
	if err != nil {
		return fmt.Errorf("run show: %w", err)
	}
	info, err := describeRun(m)
	if err != nil {
		return fmt.Errorf("run show: %w", err)
	}
	w := c.App.Writer
	if c.Bool("json") {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(info)
	}
	fmt.Fprintf(w, "run       %s\nname      %s\nmodel     %s\ndataset   %s\noptimizer %s\ntraining  %s\naveraging %s\nparams    %s, %s FLOPs per sample (forward+backward)\n\n",
		info.RunID, info.Name, info.Model, info.Dataset, info.Optimizer, info.Training, info.Averaging, human(float64(info.Params)), human(info.FLOPsPerSample))
	unit := "layers"
	if m.Model.LanguageModel() {
		unit = "blocks"
	}
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "SHARD\t%s\tPARAMS\tFLOPS/SAMPLE\tACTIVATIONS/SAMPLE\tSHARD ID\n", strings.ToUpper(unit))
	for _, s := range info.Shards {
		act := "-"
		if s.ActivationSize > 0 {
			act = strconv.Itoa(s.ActivationSize)
		}
		fmt.Fprintf(tw, "%d\t%d..%d\t%d\t%s\t%s\t%s\n", s.Index, s.Start, s.End-1, s.Params, human(s.FLOPsPerSample), act, s.ShardID)
	}
	return tw.Flush()
}

// human prints a count with a k/M/G suffix.
func human(x float64) string {
	switch {
	case x >= 1e9:
		return fmt.Sprintf("%.2fG", x/1e9)
	case x >= 1e6:
		return fmt.Sprintf("%.2fM", x/1e6)
	case x >= 1e3:
		return fmt.Sprintf("%.1fk", x/1e3)
	}
	return fmt.Sprintf("%.0f", x)
}

func runExport(c *cli.Context) error {
	m, err := run.Load(c.String("run"))
	if err != nil {
		return fmt.Errorf("run export: %w", err)
	}
	format, out := c.String("format"), c.String("output")
	switch format {
	case "safetensors":
		if out == "" {
			out = "model.safetensors"
		}
	case "hf":
		if out == "" {
			return errors.New("run export: --format hf needs -o DIR (an empty or new folder)")
		}
		if err := checkpoint.HFExportable(m); err != nil {
			return fmt.Errorf("run export: --format hf: %w", err)
		}
	default:
		return fmt.Errorf("run export: --format %q: want safetensors or hf", format)
	}
	skip := func(p string, err error) { fmt.Fprintf(c.App.ErrWriter, "run export: skipping %v\n", err) }
	var (
		params [][]float32
		step   int64
		from   string
	)
	if dir := c.String("checkpoint-dir"); dir != "" {
		d := &checkpoint.Dir{Path: dir, OnSkip: skip}
		s, path, err := d.Latest()
		if err != nil {
			return fmt.Errorf("run export: %w", err)
		}
		if params, err = checkpointParams(m, s); err != nil {
			return fmt.Errorf("run export: %s: %w", path, err)
		}
		step, from = s.Step, path
	} else {
		a, err := checkpoint.AssembleNodeShards(runsDirs(c), m, skip)
		if err != nil {
			return fmt.Errorf("run export: %w (swarm train's checkpoints: --checkpoint-dir)", err)
		}
		params, step = a.Params, a.Step
		var parts []string
		for i, p := range a.Paths {
			parts = append(parts, fmt.Sprintf("%s (epoch %d)", p, a.Epochs[i]))
		}
		from = strings.Join(parts, ", ")
	}
	if format == "hf" {
		files, err := checkpoint.ExportHF(out, m, params, step)
		if err != nil {
			return fmt.Errorf("run export: %w", err)
		}
		for _, f := range files {
			fmt.Fprintf(c.App.Writer, "wrote %s\n", f)
		}
		fmt.Fprintf(c.App.Writer, "from %s (step %d); load with AutoModelForCausalLM.from_pretrained(%q)\n", from, step, out)
		return nil
	}
	err = atomicfile.Write(out, 0o644, func(w io.Writer) error {
		return checkpoint.ExportSafetensors(w, m, params, map[string]string{"step": strconv.FormatInt(step, 10)})
	})
	if err != nil {
		return fmt.Errorf("run export: %w", err)
	}
	fmt.Fprintf(c.App.Writer, "wrote %s from %s (step %d)\n", out, from, step)
	return nil
}

// checkpointParams takes every shard's parameters of m from a checkpoint of
// the whole model (swarm train's).
func checkpointParams(m *run.Manifest, s *checkpoint.State) ([][]float32, error) {
	id, err := m.ID()
	if err != nil {
		return nil, err
	}
	if s.RunID != id.String() {
		return nil, fmt.Errorf("checkpoint is of run %s, the manifest is run %s", s.RunID, id)
	}
	params := make([][]float32, len(m.Shards))
	for _, sh := range s.Shards {
		if sh.Index < 0 || sh.Index >= len(params) {
			return nil, fmt.Errorf("checkpoint holds shard %d, the run has %d", sh.Index, len(params))
		}
		params[sh.Index] = sh.Params
	}
	for i, p := range params {
		if p == nil {
			return nil, fmt.Errorf("checkpoint lacks shard %d: export needs every shard", i)
		}
	}
	return params, nil
}

// exportModel writes a checkpoint holding every shard of m as safetensors,
// atomically (internal/atomicfile).
func exportModel(m *run.Manifest, s *checkpoint.State, out string) error {
	params, err := checkpointParams(m, s)
	if err != nil {
		return err
	}
	return atomicfile.Write(out, 0o644, func(w io.Writer) error {
		return checkpoint.ExportSafetensors(w, m, params, map[string]string{"step": strconv.FormatInt(s.Step, 10)})
	})
}
