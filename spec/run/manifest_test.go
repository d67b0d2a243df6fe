package run

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testCharset = "\n !,.abcdefghijklmnopqrstuvwxyz"

func TestDefaultsValidate(t *testing.T) {
	for n := 1; n <= 3; n++ {
		if err := NewMLPMNIST(n).Validate(); err != nil {
			t.Errorf("mlp-mnist %d shards: %v", n, err)
		}
	}
	for n := 1; n <= 4; n++ {
		if err := NewGPTChar(testCharset, n).Validate(); err != nil {
			t.Errorf("gpt-char %d shards: %v", n, err)
		}
	}
}

// localTopK makes m a local-mode run with compressed deltas (valid).
func localTopK(m *Manifest) {
	m.Averaging.Mode, m.Averaging.LocalSteps, m.Averaging.OuterLR, m.Averaging.OuterMomentum = ModeLocal, 20, 0.7, 0.9
	m.Averaging.DeltaCodec, m.Averaging.DeltaKeep, m.Averaging.DeltaBits = DeltaTopK, 0.01, 4
}

func TestValidateNamesField(t *testing.T) {
	valid := NewMLPMNIST(2)
	localTopK(valid)
	if err := valid.Validate(); err != nil {
		t.Fatalf("local mode with topk deltas: %v", err)
	}
	cases := []struct {
		name  string
		edit  func(m *Manifest)
		field string
	}{
		{"schema version", func(m *Manifest) { m.Version = 2 }, "version"},
		{"empty name", func(m *Manifest) { m.Name = " " }, "name"},
		{"unknown arch", func(m *Manifest) { m.Model.Arch = "resnet" }, "model.arch"},
		{"missing arch", func(m *Manifest) { m.Model.Arch = "" }, "model.arch"},
		{"zero input", func(m *Manifest) { m.Model.Input = 0 }, "model.input"},
		{"negative hidden", func(m *Manifest) { m.Model.Hidden[1] = -3 }, "model.hidden[1]"},
		{"no hidden", func(m *Manifest) { m.Model.Hidden = nil; m.Shards = EvenShards(1, 1) }, "model.hidden"},
		{"gpt field on mlp", func(m *Manifest) { m.Model.NHead = 2 }, "model"},
		{"no shards", func(m *Manifest) { m.Shards = nil }, "shards"},
		{"too many shards", func(m *Manifest) { m.Shards = EvenShards(4, 4) }, "shards"},
		{"shard out of order", func(m *Manifest) { m.Shards[1].Index = 2 }, "shards[1].index"},
		{"layers repeated", func(m *Manifest) { m.Shards[1].Start = 0 }, "shards[1].start"},
		{"layers missed", func(m *Manifest) { m.Shards[1].Start = 2 }, "shards[1].start"},
		{"empty shard", func(m *Manifest) { m.Shards[0].End = 0 }, "shards[0].end"},
		{"last layers missed", func(m *Manifest) { m.Shards = []ShardSpec{{0, 0, 1}, {1, 1, 2}} }, "shards[1].end"},
		{"past the model", func(m *Manifest) { m.Shards[2].End = 4 }, "shards[2].end"},
		{"negative checkpoint epochs", func(m *Manifest) { m.Checkpoint = &CheckpointSpec{EveryEpochs: -1} }, "checkpoint.every_epochs"},
		{"NaN checkpoint minutes", func(m *Manifest) { m.Checkpoint = &CheckpointSpec{EveryMinutes: math.NaN()} }, "checkpoint.every_minutes"},
		{"too many checkpoints kept", func(m *Manifest) { m.Checkpoint = &CheckpointSpec{Keep: 1000} }, "checkpoint.keep"},
		{"unknown dataset", func(m *Manifest) { m.Dataset.Name = "cifar" }, "dataset.name"},
		{"missing dataset", func(m *Manifest) { m.Dataset.Name = "" }, "dataset.name"},
		{"dataset for other model", func(m *Manifest) { m.Dataset.Name = DatasetText }, "dataset.name"},
		{"val fraction", func(m *Manifest) { m.Dataset.ValFraction = 1 }, "dataset.val_fraction"},
		{"unknown optimizer", func(m *Manifest) { m.Optimizer.Name = "lion" }, "optimizer.name"},
		{"zero lr", func(m *Manifest) { m.Optimizer.LR = 0 }, "optimizer.lr"},
		{"min lr above lr", func(m *Manifest) { m.Optimizer.MinLR = 1 }, "optimizer.min_lr"},
		{"beta2", func(m *Manifest) { m.Optimizer.Beta2 = 1 }, "optimizer.beta2"},
		{"eps", func(m *Manifest) { m.Optimizer.Eps = 0 }, "optimizer.eps"},
		{"negative clip", func(m *Manifest) { m.Optimizer.ClipNorm = -1 }, "optimizer.clip_norm"},
		{"negative warm-up", func(m *Manifest) { m.Optimizer.WarmupSteps = -1 }, "optimizer.warmup_steps"},
		{"zero batch", func(m *Manifest) { m.Training.BatchSize = 0 }, "training.batch_size"},
		{"target below batch", func(m *Manifest) { m.Training.TargetBatch = 1 }, "training.target_batch"},
		{"zero steps", func(m *Manifest) { m.Training.Steps = 0 }, "training.steps"},
		{"unknown activation precision", func(m *Manifest) { m.Training.Activations = "fp16" }, "training.activations"},
		{"topk activations keeping nothing", func(m *Manifest) { m.Training.Activations = ActivationsTopK }, "training.activation_keep"},
		{"topk activations keeping more than all", func(m *Manifest) {
			m.Training.Activations, m.Training.ActivationKeep = ActivationsTopK, 1.5
		}, "training.activation_keep"},
		{"topk activations keeping NaN", func(m *Manifest) {
			m.Training.Activations, m.Training.ActivationKeep = ActivationsTopK, math.NaN()
		}, "training.activation_keep"},
		{"activation keep without topk", func(m *Manifest) { m.Training.ActivationKeep = 0.5 }, "training.activation_keep"},
		{"negative activation rank", func(m *Manifest) { m.Training.ActivationRank = -1 }, "training.activation_rank"},
		{"activation rank of the full width", func(m *Manifest) { m.Training.ActivationRank = 1024 }, "training.activation_rank"},
		{"activation rank without a cut", func(m *Manifest) {
			m.Shards, m.Training.ActivationRank = EvenShards(m.Model.Units(), 1), 8
		}, "training.activation_rank"},
		{"activation rank above a narrow cut", func(m *Manifest) {
			m.Model.Hidden = []int{1024, 64, 1024}
			m.Shards, m.Training.ActivationRank = EvenShards(4, 3), 100
		}, "training.activation_rank"},
		{"negative sync loss margin", func(m *Manifest) { m.Training.SyncLossMargin = -0.1 }, "training.sync_loss_margin"},
		{"NaN sync loss margin", func(m *Manifest) { m.Training.SyncLossMargin = math.NaN() }, "training.sync_loss_margin"},
		{"huge sync loss margin", func(m *Manifest) { m.Training.SyncLossMargin = 11 }, "training.sync_loss_margin"},
		{"overlap in sync mode", func(m *Manifest) { m.Averaging.Overlap = true }, "averaging.overlap"},
		{"delayed updates in local mode", func(m *Manifest) {
			m.Averaging.Mode, m.Averaging.LocalSteps, m.Averaging.OuterLR, m.Averaging.DelayedUpdates = ModeLocal, 10, 0.7, true
		}, "averaging.delayed_updates"},
		{"max local steps in sync mode", func(m *Manifest) { m.Averaging.MaxLocalSteps = 100 }, "averaging.max_local_steps"},
		{"max local steps below local steps", func(m *Manifest) {
			m.Averaging.Mode, m.Averaging.LocalSteps, m.Averaging.OuterLR, m.Averaging.Overlap, m.Averaging.MaxLocalSteps = ModeLocal, 50, 0.7, true, 49
		}, "averaging.max_local_steps"},
		{"max local steps too far above", func(m *Manifest) {
			m.Averaging.Mode, m.Averaging.LocalSteps, m.Averaging.OuterLR, m.Averaging.Overlap, m.Averaging.MaxLocalSteps = ModeLocal, 50, 0.7, true, 50*MaxLocalStepsFactor+1
		}, "averaging.max_local_steps"},
		{"negative max local steps", func(m *Manifest) {
			m.Averaging.Mode, m.Averaging.LocalSteps, m.Averaging.OuterLR, m.Averaging.Overlap, m.Averaging.MaxLocalSteps = ModeLocal, 50, 0.7, true, -1
		}, "averaging.max_local_steps"},
		{"max local steps without overlap", func(m *Manifest) {
			m.Averaging.Mode, m.Averaging.LocalSteps, m.Averaging.OuterLR, m.Averaging.MaxLocalSteps = ModeLocal, 50, 0.7, 100
		}, "averaging.max_local_steps"},
		{"sha256 on mnist", func(m *Manifest) { m.Dataset.SHA256 = strings.Repeat("ab", 32) }, "dataset.sha256"},
		{"root not a CID", func(m *Manifest) { m.Dataset.Root = "bafk-nope" }, "dataset.root"},
		{"root of another codec", func(m *Manifest) {
			m.Dataset.Root = "bafyreie22zfcldnec4xld5pk6jn2e7qcmratgvhqdf6knrug5tmzlwthwa"
		}, "dataset.root"},
		{"root CIDv0", func(m *Manifest) { m.Dataset.Root = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG" }, "dataset.root"},
		{"fp16 gradients under adamw", func(m *Manifest) { m.Averaging.Compression = CompressFP16 }, "averaging.compression"},
		{"unknown averaging", func(m *Manifest) { m.Averaging.Mode = "gossip" }, "averaging.mode"},
		{"local without steps", func(m *Manifest) { m.Averaging.Mode = ModeLocal }, "averaging.local_steps"},
		{"group of one", func(m *Manifest) { m.Averaging.GroupSize = 1 }, "averaging.group_size"},
		{"compression", func(m *Manifest) { m.Averaging.Compression = "zip" }, "averaging.compression"},
		{"timeout", func(m *Manifest) { m.Averaging.TimeoutMS = 0 }, "averaging.timeout_ms"},
		{"unknown aggregation", func(m *Manifest) { m.Averaging.Aggregation = "median" }, "averaging.aggregation"},
		{"clip tau without centered-clip", func(m *Manifest) { m.Averaging.ClipTau = 2 }, "averaging.clip_tau"},
		{"clip iters on trimmed mean", func(m *Manifest) {
			m.Averaging.Aggregation, m.Averaging.ClipIters = AggregateTrimmedMean, 3
		}, "averaging.clip_iters"},
		{"negative clip tau", func(m *Manifest) {
			m.Averaging.Aggregation, m.Averaging.ClipTau = AggregateCenteredClip, -1
		}, "averaging.clip_tau"},
		{"NaN clip tau", func(m *Manifest) {
			m.Averaging.Aggregation, m.Averaging.ClipTau = AggregateCenteredClip, math.NaN()
		}, "averaging.clip_tau"},
		{"clip iters", func(m *Manifest) {
			m.Averaging.Aggregation, m.Averaging.ClipIters = AggregateCenteredClip, 1000
		}, "averaging.clip_iters"},
		{"norm k below 1", func(m *Manifest) { m.Averaging.NormK = 0.5 }, "averaging.norm_k"},
		{"norm k infinite", func(m *Manifest) { m.Averaging.NormK = math.Inf(1) }, "averaging.norm_k"},
		{"audit parts negative", func(m *Manifest) { m.Averaging.AuditParts = -1 }, "averaging.audit_parts"},
		{"audit parts above 16", func(m *Manifest) { m.Averaging.AuditParts = 17 }, "averaging.audit_parts"},
		{"audit rate above 1", func(m *Manifest) { m.Averaging.AuditParts, m.Averaging.AuditRate = 1, 1.5 }, "averaging.audit_rate"},
		{"audit rate NaN", func(m *Manifest) { m.Averaging.AuditParts, m.Averaging.AuditRate = 1, math.NaN() }, "averaging.audit_rate"},
		{"audit rate without audits", func(m *Manifest) { m.Averaging.AuditRate = 0.25 }, "averaging.audit_rate"},
		{"unknown delta codec", func(m *Manifest) { localTopK(m); m.Averaging.DeltaCodec = "dct" }, "averaging.delta_codec"},
		{"delta codec in sync mode", func(m *Manifest) { localTopK(m); m.Averaging.Mode = ModeSync }, "averaging.delta_codec"},
		{"keep zero", func(m *Manifest) { localTopK(m); m.Averaging.DeltaKeep = 0 }, "averaging.delta_keep"},
		{"keep negative", func(m *Manifest) { localTopK(m); m.Averaging.DeltaKeep = -0.1 }, "averaging.delta_keep"},
		{"keep above 1", func(m *Manifest) { localTopK(m); m.Averaging.DeltaKeep = 1.5 }, "averaging.delta_keep"},
		{"keep NaN", func(m *Manifest) { localTopK(m); m.Averaging.DeltaKeep = math.NaN() }, "averaging.delta_keep"},
		{"3 bits", func(m *Manifest) { localTopK(m); m.Averaging.DeltaBits = 3 }, "averaging.delta_bits"},
		{"0 bits", func(m *Manifest) { localTopK(m); m.Averaging.DeltaBits = 0 }, "averaging.delta_bits"},
		{"keep without topk", func(m *Manifest) { m.Averaging.DeltaKeep = 0.01 }, "averaging.delta_keep"},
		{"bits without topk", func(m *Manifest) { m.Averaging.DeltaBits = 8 }, "averaging.delta_bits"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMLPMNIST(3)
			tc.edit(m)
			err := m.Validate()
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v, want a FieldError", err)
			}
			if fe.Field != tc.field {
				t.Fatalf("field %q (%v), want %q", fe.Field, err, tc.field)
			}
		})
	}
	gpt := []struct {
		name  string
		edit  func(m *Manifest)
		field string
	}{
		{"heads do not divide width", func(m *Manifest) { m.Model.NHead = 3 }, "model.n_embd"},
		{"zero block size", func(m *Manifest) { m.Model.BlockSize = 0 }, "model.block_size"},
		{"charset size", func(m *Manifest) { m.Dataset.Charset += "~" }, "dataset.charset"},
		{"charset repeats", func(m *Manifest) { m.Dataset.Charset = m.Dataset.Charset[:len(m.Dataset.Charset)-1] + "a" }, "dataset.charset"},
		{"mlp field on gpt", func(m *Manifest) { m.Model.Classes = 10 }, "model"},
		{"blocks repeated", func(m *Manifest) { m.Shards[1].Start = 1 }, "shards[1].start"},
	}
	for _, tc := range gpt {
		t.Run(tc.name, func(t *testing.T) {
			m := NewGPTChar(testCharset, 2)
			tc.edit(m)
			var fe *FieldError
			if err := m.Validate(); !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("err = %v, want field %q", err, tc.field)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	good, _ := NewMLPMNIST(1).Canonical()
	if _, err := Parse(good); err != nil {
		t.Fatal(err)
	}
	for name, in := range map[string]string{
		"unknown field": strings.Replace(string(good), `"seed"`, `"sede"`, 1),
		"trailing data": string(good) + "{}",
		"not json":      "model: mlp",
		"invalid":       strings.Replace(string(good), `"steps":`, `"steps":-`, 1),
	} {
		if _, err := Parse([]byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(strings.Replace(string(good), `"mnist"`, `"cifar"`, 1)), 0o644)
	if _, err := Load(bad); err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "dataset.name") {
		t.Fatalf("Load error %v does not name the file and the field", err)
	}
}

func TestRunIDStable(t *testing.T) {
	m := NewGPTChar(testCharset, 2)
	id1, err := m.ID()
	if err != nil {
		t.Fatal(err)
	}
	// Through a file and back: same ID.
	path := filepath.Join(t.TempDir(), "run.json")
	if err := m.Save(path); err != nil {
		t.Fatal(err)
	}
	m2, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	id2, _ := m2.ID()
	if !id1.Equals(id2) {
		t.Fatalf("ID changed through Save/Load: %s vs %s", id1, id2)
	}
	if id1.Prefix().Version != 1 || id1.Prefix().MhType != 0x12 {
		t.Fatalf("ID %s is not a CIDv1 sha2-256", id1)
	}
	// Any change of the run changes the ID.
	m2.Seed++
	if id3, _ := m2.ID(); id3.Equals(id1) {
		t.Fatal("seed change kept the run ID")
	}
	// Shard IDs differ per shard and derive from the run ID.
	s0, _ := m.ShardID(0)
	s1, _ := m.ShardID(1)
	if s0.Equals(s1) || s0.Equals(id1) {
		t.Fatal("shard IDs not distinct")
	}
	// The canonical encoding of a fixed manifest does not drift (the CID was
	// computed independently: sha256 of the compact JSON, CIDv1 raw, base32).
	fixed := &Manifest{
		Version: 1, Name: "fixed", Seed: 7,
		Model:     ModelSpec{Arch: ArchMLPMNIST, Input: 4, Hidden: []int{3}, Classes: 2},
		Shards:    []ShardSpec{{0, 0, 1}, {1, 1, 2}},
		Dataset:   DatasetSpec{Name: DatasetMNIST},
		Optimizer: OptimizerSpec{Name: "sgd", LR: 0.1, Momentum: 0.9},
		Training:  TrainingSpec{BatchSize: 2, TargetBatch: 4, Steps: 3},
		Averaging: AveragingSpec{Mode: ModeSync, GroupSize: 2, MinGroupSize: 2, Compression: CompressNone, TimeoutMS: 100},
	}
	const want = "bafkreieyf5yh4biu6wdh46v7xzvk225l2j3xfj7moefm4cc6543jghnwv4"
	if id, _ := fixed.ID(); id.String() != want {
		b, _ := fixed.Canonical()
		t.Fatalf("fixed manifest ID %s, want %s; canonical %s", id, want, b)
	}
	// A data set root is part of the ID; without one the encoding is as
	// before the field existed (omitempty), so older run IDs hold.
	fixed.Dataset.Root = "bafkreie22zfcldnec4xld5pk6jn2e7qcmratgvhqdf6knrug5tmzlwthwa"
	if err := fixed.Validate(); err != nil {
		t.Fatalf("a manifest with a data root: %v", err)
	}
	if id, _ := fixed.ID(); id.String() == want {
		t.Fatal("the data set root does not change the run ID")
	}
}

func TestLayoutAndParams(t *testing.T) {
	m := NewMLPMNIST(3)
	want := []int{784*1024 + 1024, 1024*1024 + 1024, 1024*10 + 10}
	for i, w := range want {
		n, err := m.NumParams(i)
		if err != nil || n != w {
			t.Fatalf("shard %d: %d params (%v), want %d", i, n, err, w)
		}
	}
	if m.ActivationSize(0) != 1024 || m.ActivationSize(2) != 0 {
		t.Fatal("activation sizes")
	}
	// A model split any way has the same tensors and the same initial values.
	g1 := NewGPTChar(testCharset, 1)
	whole, _ := g1.InitParams(0)
	layout1, _ := g1.Layout(0)
	byName := map[string][]float32{}
	for _, ts := range layout1 {
		byName[ts.Name] = whole[ts.Offset : ts.Offset+ts.Size()]
	}
	for n := 2; n <= 4; n++ {
		g := NewGPTChar(testCharset, n)
		total := 0
		var fl float64
		for i := 0; i < n; i++ {
			p, err := g.InitParams(i)
			if err != nil {
				t.Fatal(err)
			}
			total += len(p)
			f, _ := g.FLOPsPerSample(i)
			fl += f
			layout, _ := g.Layout(i)
			for _, ts := range layout {
				w := byName[ts.Name]
				got := p[ts.Offset : ts.Offset+ts.Size()]
				if len(w) != len(got) || w[0] != got[0] || w[len(w)-1] != got[len(got)-1] {
					t.Fatalf("%d shards: tensor %s differs from the unsplit model", n, ts.Name)
				}
			}
		}
		if total != len(whole) {
			t.Fatalf("%d shards hold %d params, unsplit %d", n, total, len(whole))
		}
		f1, _ := g1.FLOPsPerSample(0)
		if math.Abs(fl-f1) > 1e-6*f1 {
			t.Fatalf("%d shards: FLOPs %g, unsplit %g", n, fl, f1)
		}
	}
	if _, err := m.Layout(3); err == nil {
		t.Fatal("layout of a shard past the end")
	}
}

// TestCutLayout: training.activation_rank adds the projection pair at each
// cut, narrows what crosses it, starts both sides of a cut from one matrix
// whatever the split, and leaves the shards' balance to the units.
func TestCutLayout(t *testing.T) {
	m := NewMLPMNIST(3)
	m.Training.ActivationRank = 16
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	want := [][]string{{"l0.w", "l0.b", "cut1.down.w"}, {"cut1.up.w", "l1.w", "l1.b", "cut2.down.w"}, {"cut2.up.w", "l2.w", "l2.b"}}
	for i, names := range want {
		layout, err := m.Layout(i)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, ts := range layout {
			got = append(got, ts.Name)
			if IsCutTensor(ts.Name) != (ts.Name[:3] == "cut") {
				t.Errorf("IsCutTensor(%q) = %v", ts.Name, IsCutTensor(ts.Name))
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(names) {
			t.Fatalf("shard %d layout %v, want %v", i, got, names)
		}
	}
	if m.ActivationSize(0) != 16 || m.ActivationRow(1) != 16 || m.CutWidth(1) != 1024 || m.ActivationSize(2) != 0 {
		t.Fatalf("activation sizes %d, %d (cut width %d), last %d", m.ActivationSize(0), m.ActivationRow(1), m.CutWidth(1), m.ActivationSize(2))
	}
	l0, _ := m.Layout(0)
	l1, _ := m.Layout(1)
	p0, _ := m.InitParams(0)
	p1, _ := m.InitParams(1)
	down := p0[l0[2].Offset : l0[2].Offset+l0[2].Size()]
	up := p1[l1[0].Offset : l1[0].Offset+l1[0].Size()]
	for i := 0; i < 16; i++ {
		for k := 0; k < 1024; k++ {
			if up[k*16+i] != down[i*1024+k] {
				t.Fatalf("cut1.up.w[%d,%d] = %g, cut1.down.w[%d,%d] = %g: want the transpose", k, i, up[k*16+i], i, k, down[i*1024+k])
			}
		}
	}
	// The same cut in a 2-shard split of the same seed starts alike.
	m2 := NewMLPMNIST(2)
	m2.Training.ActivationRank = 16
	l, _ := m2.Layout(0)
	p, _ := m2.InitParams(0)
	if got := p[l[2].Offset : l[2].Offset+l[2].Size()]; l[2].Name != "cut1.down.w" || relDiff(got, down) != 0 {
		t.Fatalf("cut1.down.w of a 2-shard split differs from the 3-shard split's")
	}
	if s, _ := BalancedShards(m2, 2); s[0].End != 1 {
		t.Errorf("ranked mlp in 2 shards = %v, want the cut after the first layer as without a rank", s)
	}
	// A language model's row is a position.
	g := NewGPTChar(testCharset, 2)
	g.Training.ActivationRank = 8
	if err := g.Validate(); err != nil {
		t.Fatal(err)
	}
	if g.ActivationSize(0) != g.Model.BlockSize*8 || g.ActivationRow(0) != 8 {
		t.Fatalf("gpt: activation size %d, row %d", g.ActivationSize(0), g.ActivationRow(0))
	}
	for _, name := range []string{"cut", "cut1.up", "cut1.down.w.x", "cutx.up.w", "cut-1.up.w", "l1.w"} {
		if IsCutTensor(name) {
			t.Errorf("IsCutTensor(%q) = true", name)
		}
	}
}

func relDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var d float64
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

func TestEvenShards(t *testing.T) {
	for units := 1; units <= 12; units++ {
		for n := 1; n <= units; n++ {
			s := EvenShards(units, n)
			if err := validateShards(s, units); err != nil {
				t.Fatalf("EvenShards(%d, %d) = %v: %v", units, n, s, err)
			}
			lo, hi := units, 0
			for _, sh := range s {
				lo, hi = min(lo, sh.End-sh.Start), max(hi, sh.End-sh.Start)
			}
			if hi-lo > 1 {
				t.Fatalf("EvenShards(%d, %d) = %v is uneven", units, n, s)
			}
		}
	}
}

func TestLRSchedule(t *testing.T) {
	o := OptimizerSpec{LR: 1, MinLR: 0.1, WarmupSteps: 10, DecaySteps: 100}
	if got := o.LRAt(0); math.Abs(got-0.1) > 1e-12 {
		t.Fatalf("LRAt(0) = %g", got)
	}
	if got := o.LRAt(9); got != 1 {
		t.Fatalf("end of warm-up %g", got)
	}
	if got := o.LRAt(60); math.Abs(got-0.55) > 1e-12 {
		t.Fatalf("half-way %g", got)
	}
	if got := o.LRAt(500); got != 0.1 {
		t.Fatalf("after decay %g", got)
	}
	for s := 10; s < 110; s++ {
		if o.LRAt(s+1) > o.LRAt(s) {
			t.Fatalf("decay rises at %d", s)
		}
	}
}

func TestBalancedShards(t *testing.T) {
	m := NewMLPMNIST(1)
	for n := 1; n <= m.Model.Units(); n++ {
		s, err := BalancedShards(m, n)
		if err != nil {
			t.Fatal(err)
		}
		if err := validateShards(s, m.Model.Units()); err != nil {
			t.Fatalf("BalancedShards(mlp, %d) = %v: %v", n, s, err)
		}
	}
	// 784-1024-1024-10 in two: the first layer (0.80M weights) alone against
	// the other two (1.06M); counting units would put 1.85M against 10k.
	s, _ := BalancedShards(m, 2)
	if s[0].End != 1 {
		t.Errorf("mlp in 2 shards = %v, want the cut after the first layer", s)
	}
	// Brute force over every cut of a GPT into 3: no split has a smaller bottleneck.
	g := NewGPTChar("abcdefghijklmnopqrstuvwxyz", 1)
	g.Model.NLayer = 6
	s, err := BalancedShards(g, 3)
	if err != nil {
		t.Fatal(err)
	}
	bottleneck := func(sh []ShardSpec) float64 {
		c := *g
		c.Shards = sh
		worst := 0.0
		for i := range sh {
			f, _ := c.FLOPsPerSample(i)
			worst = math.Max(worst, f)
		}
		return worst
	}
	got := bottleneck(s)
	for a := 1; a < 6; a++ {
		for b := a + 1; b < 6; b++ {
			sh := []ShardSpec{{0, 0, a}, {1, a, b}, {2, b, 6}}
			if w := bottleneck(sh); w < got*(1-1e-12) {
				t.Fatalf("BalancedShards = %v (bottleneck %g), but %v has %g", s, got, sh, w)
			}
		}
	}
	if _, err := BalancedShards(m, 4); err == nil {
		t.Error("4 shards of a 3-unit model accepted")
	}
}

// TestAggregationFields: robust settings validate, leave the run ID of a
// manifest without them as it was (omitempty), and change it when set.
func TestAggregationFields(t *testing.T) {
	m := NewMLPMNIST(3)
	id0, err := m.ID()
	if err != nil {
		t.Fatal(err)
	}
	m.Averaging.Aggregation = AggregateMean
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	m.Averaging.Aggregation = ""
	b, _ := m.Canonical()
	for _, f := range []string{"aggregation", "clip_tau", "clip_iters", "norm_k"} {
		if strings.Contains(string(b), f) {
			t.Fatalf("canonical manifest names %s while unset: %s", f, b)
		}
	}
	m.Averaging.Aggregation, m.Averaging.ClipTau, m.Averaging.ClipIters, m.Averaging.NormK = AggregateCenteredClip, 1.5, 8, 10
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	if id, _ := m.ID(); id.Equals(id0) {
		t.Fatal("robust aggregation kept the run ID")
	}
	m.Averaging = NewMLPMNIST(3).Averaging
	m.Averaging.Aggregation = AggregateTrimmedMean
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestSyncLossMargin: unset, the held-out margin of single-donor state sync
// is the default and the run ID of a manifest is what it was (omitempty);
// set, it is used and changes the run ID.
func TestSyncLossMargin(t *testing.T) {
	m := NewMLPMNIST(2)
	id0, err := m.ID()
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := m.Canonical(); strings.Contains(string(b), "sync_loss_margin") {
		t.Fatalf("canonical manifest names sync_loss_margin while unset: %s", b)
	}
	if got := m.Training.LossMargin(); got != DefaultSyncLossMargin {
		t.Errorf("margin %g unset, want %g", got, DefaultSyncLossMargin)
	}
	m.Training.SyncLossMargin = 0.2
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := m.Training.LossMargin(); got != 0.2 {
		t.Errorf("margin %g, want 0.2", got)
	}
	if id, _ := m.ID(); id.Equals(id0) {
		t.Error("a sync loss margin kept the run ID")
	}
}

func TestLlamaValidate(t *testing.T) {
	for _, p := range LlamaPresets {
		for n := 1; n <= 3; n++ {
			m, err := NewLlama(p, testCharset, n)
			if err != nil {
				t.Fatalf("%s in %d shards: %v", p, n, err)
			}
			if err := m.Validate(); err != nil {
				t.Errorf("%s in %d shards: %v", p, n, err)
			}
			if m.Model.TieEmbeddings != (n == 1 && p != PresetLlamaTiny) {
				t.Errorf("%s in %d shards: tie_embeddings %v", p, n, m.Model.TieEmbeddings)
			}
		}
	}
	if _, err := NewLlama("llama-7b", testCharset, 1); err == nil {
		t.Error("unknown preset accepted")
	}
	cases := []struct {
		name  string
		edit  func(m *Manifest)
		field string
	}{
		{"heads do not divide width", func(m *Manifest) { m.Model.NHead = 3 }, "model.n_embd"},
		{"odd head size", func(m *Manifest) { m.Model.NEmbd, m.Model.NHead, m.Model.NKVHead = 60, 4, 2 }, "model.n_head"},
		{"kv heads do not divide heads", func(m *Manifest) { m.Model.NKVHead = 3 }, "model.n_kv_head"},
		{"kv heads above heads", func(m *Manifest) { m.Model.NKVHead = 8 }, "model.n_kv_head"},
		{"zero kv heads", func(m *Manifest) { m.Model.NKVHead = 0 }, "model.n_kv_head"},
		{"zero ffn", func(m *Manifest) { m.Model.FFNHidden = 0 }, "model.ffn_hidden"},
		{"huge ffn", func(m *Manifest) { m.Model.FFNHidden = MaxModelDim + 1 }, "model.ffn_hidden"},
		{"huge vocab", func(m *Manifest) { m.Model.Vocab = 1 << 30 }, "model.vocab"},
		{"no rope theta", func(m *Manifest) { m.Model.RopeTheta = 0 }, "model.rope_theta"},
		{"NaN rope theta", func(m *Manifest) { m.Model.RopeTheta = math.NaN() }, "model.rope_theta"},
		{"tied across shards", func(m *Manifest) { m.Model.TieEmbeddings = true }, "model.tie_embeddings"},
		{"mlp field on llama", func(m *Manifest) { m.Model.Input = 3 }, "model"},
		{"charset size", func(m *Manifest) { m.Dataset.Charset += "~" }, "dataset.charset"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := NewLlama(PresetLlamaTiny, testCharset, 2)
			if err != nil {
				t.Fatal(err)
			}
			tc.edit(m)
			var fe *FieldError
			if err := m.Validate(); !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("err = %v, want field %q", err, tc.field)
			}
		})
	}
	g := NewGPTChar(testCharset, 1)
	g.Model.NKVHead = 2
	var fe *FieldError
	if err := g.Validate(); !errors.As(err, &fe) || fe.Field != "model" {
		t.Errorf("n_kv_head on gpt-char: %v", err)
	}
}

func TestLlamaPresetSizes(t *testing.T) {
	const gpt2Vocab = 50257
	for _, c := range []struct {
		preset string
		params int
	}{
		{PresetLlamaTiny, 4*(2*64+64*64*2+2*32*64+3*64*176) + 64 + 2*gpt2Vocab*64},
		{PresetLlama124M, 123_551_232},
		{PresetLlama350M, 350_357_504},
	} {
		md, err := LlamaPreset(c.preset, gpt2Vocab)
		if err != nil {
			t.Fatal(err)
		}
		m := NewGPTChar(testCharset, 1)
		m.Model, m.Shards = md, EvenShards(md.NLayer, 1)
		n, err := m.NumParams(0)
		if err != nil || n != c.params {
			t.Errorf("%s: %d params (%v), want %d", c.preset, n, err, c.params)
		}
	}
}

// TestLlamaLayoutSplits: a Llama split any way has the unsplit model's
// tensors, initial values and FLOPs, and the balanced split counts the head:
// with a large vocabulary the last shard gets fewer blocks.
func TestLlamaLayoutSplits(t *testing.T) {
	whole, err := NewLlama(PresetLlamaTiny, testCharset, 1)
	if err != nil {
		t.Fatal(err)
	}
	wp, _ := whole.InitParams(0)
	wl, _ := whole.Layout(0)
	byName := map[string][]float32{}
	for _, ts := range wl {
		byName[ts.Name] = wp[ts.Offset : ts.Offset+ts.Size()]
	}
	if got := byName["h0.attn.k.w"]; len(got) != 32*64 {
		t.Fatalf("h0.attn.k.w has %d values, want 32×64 (2 kv heads of 16)", len(got))
	}
	if v := byName["h2.mlp_norm.w"]; v[0] != 1 || v[63] != 1 {
		t.Fatal("norm weights do not start at 1")
	}
	f1, _ := whole.FLOPsPerSample(0)
	for n := 2; n <= 4; n++ {
		m, err := NewLlama(PresetLlamaTiny, testCharset, n)
		if err != nil {
			t.Fatal(err)
		}
		var fl float64
		for i := range m.Shards {
			p, _ := m.InitParams(i)
			l, _ := m.Layout(i)
			for _, ts := range l {
				w := byName[ts.Name]
				got := p[ts.Offset : ts.Offset+ts.Size()]
				if len(w) != len(got) || w[0] != got[0] || w[len(w)-1] != got[len(got)-1] {
					t.Fatalf("%d shards: tensor %s differs from the unsplit model", n, ts.Name)
				}
			}
			f, _ := m.FLOPsPerSample(i)
			fl += f
		}
		if math.Abs(fl-f1) > 1e-6*f1 {
			t.Fatalf("%d shards: FLOPs %g, unsplit %g", n, fl, f1)
		}
	}
	// Tied, the head's FLOPs still count.
	tied := *whole
	tied.Model.TieEmbeddings = true
	ft, _ := tied.FLOPsPerSample(0)
	if ft != f1 {
		t.Fatalf("tied head: %g FLOPs, untied %g", ft, f1)
	}
	big, err := NewLlama(PresetLlamaTiny, testCharset, 1)
	if err != nil {
		t.Fatal(err)
	}
	big.Model.Vocab, big.Model.NLayer = 4096, 8
	s, err := BalancedShards(big, 2)
	if err != nil {
		t.Fatal(err)
	}
	if s[1].End-s[1].Start >= 4 {
		t.Fatalf("split of 8 blocks with a 4096-token head = %v: the head is not counted", s)
	}
}

func TestTokenizerDataset(t *testing.T) {
	tokens := func() *Manifest {
		m, err := NewLlama(PresetLlamaTiny, testCharset, 1)
		if err != nil {
			t.Fatal(err)
		}
		m.Model.Vocab = TokenizerVocab(TokenizerGPT2)
		m.Dataset = DatasetSpec{Name: DatasetText, Path: "/data/go.tok", SHA256: strings.Repeat("0f", 32), Tokenizer: TokenizerGPT2, ValFraction: 0.01}
		return m
	}
	if err := tokens().Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		edit  func(m *Manifest)
		field string
	}{
		{"unknown tokenizer", func(m *Manifest) { m.Dataset.Tokenizer = "cl100k" }, "dataset.tokenizer"},
		{"vocab of another tokenizer", func(m *Manifest) { m.Model.Vocab = 50304 }, "model.vocab"},
		{"charset and tokenizer", func(m *Manifest) { m.Dataset.Charset = "ab" }, "dataset.charset"},
		{"no token file", func(m *Manifest) { m.Dataset.Path = "" }, "dataset.path"},
		{"token file not pinned", func(m *Manifest) { m.Dataset.SHA256 = "" }, "dataset.sha256"},
		{"tokenizer on mnist", func(m *Manifest) { *m = *NewMLPMNIST(1); m.Dataset.Tokenizer = TokenizerGPT2 }, "dataset.tokenizer"},
	} {
		m := tokens()
		tc.edit(m)
		var fe *FieldError
		if err := m.Validate(); !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%s: err = %v, want field %q", tc.name, err, tc.field)
		}
	}
}

func TestEvalBatch(t *testing.T) {
	m, err := NewLlama(PresetLlama124M, testCharset, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.EvalBatch(250); got != 250 { // 250 × 1024 × 31 characters fit
		t.Fatalf("EvalBatch(250) = %d", got)
	}
	m.Model.Vocab = 50257
	if got := m.EvalBatch(250); got != 1 {
		t.Fatalf("124m with GPT-2 tokens: EvalBatch(250) = %d, want 1", got)
	}
	m.Model.BlockSize = 64
	if got := m.EvalBatch(250); got != MaxEvalLogits/(64*50257) || got*64*50257 > MaxEvalLogits {
		t.Fatalf("context 64: EvalBatch(250) = %d", got)
	}
	if got := NewMLPMNIST(1).EvalBatch(250); got != 250 {
		t.Fatalf("mlp: EvalBatch(250) = %d", got)
	}
}

// ActivationsKept rounds activation_keep × width up, keeps at least one
// value and at most width, and is width for the dense precisions.
func TestActivationsKept(t *testing.T) {
	tr := TrainingSpec{Activations: ActivationsTopK}
	for _, c := range []struct {
		keep  float64
		width int
		want  int
	}{{0.1, 1024, 103}, {0.25, 1024, 256}, {1, 1024, 1024}, {1e-9, 1024, 1}, {0.3, 10, 3}} {
		tr.ActivationKeep = c.keep
		if got := tr.ActivationsKept(c.width); got != c.want {
			t.Errorf("keep %g of %d: %d, want %d", c.keep, c.width, got, c.want)
		}
	}
	if got := (TrainingSpec{Activations: ActivationsBF16}).ActivationsKept(1024); got != 1024 {
		t.Errorf("bf16: %d kept, want all 1024", got)
	}
}
