package data

import (
	"bytes"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/swarm-train/swarm/spec/run"
)

func TestMNISTLoads(t *testing.T) {
	d, err := LoadMNIST("")
	if err != nil {
		t.Fatal(err)
	}
	if d.Train.N != 60000 || d.Test.N != 10000 || d.Train.Rows != 28 || d.Train.Cols != 28 {
		t.Fatalf("got train %d test %d of %dx%d", d.Train.N, d.Test.N, d.Train.Rows, d.Train.Cols)
	}
	var hist [10]int
	for _, l := range d.Test.Labels {
		hist[l]++
	}
	for c, n := range hist {
		if n < 800 || n > 1300 {
			t.Errorf("class %d has %d test images", c, n)
		}
	}
	// The normalisation constants are the training set's statistics.
	var sum, sq float64
	for _, p := range d.Train.Pixels {
		v := float64(p) / 255
		sum += v
		sq += v * v
	}
	n := float64(len(d.Train.Pixels))
	mean := sum / n
	std := math.Sqrt(sq/n - mean*mean)
	if math.Abs(mean-MNISTMean) > 1e-3 || math.Abs(std-MNISTStd) > 1e-3 {
		t.Errorf("training pixels: mean %.4f std %.4f, constants %.4f %.4f", mean, std, MNISTMean, MNISTStd)
	}
}

func TestMNISTMissingDirIsClear(t *testing.T) {
	_, err := LoadMNIST(t.TempDir())
	if !errors.Is(err, ErrNoData) || !strings.Contains(err.Error(), mnistTrainImages) {
		t.Fatalf("err = %v, want ErrNoData naming the file", err)
	}
}

func TestMNISTSourceBatches(t *testing.T) {
	m := run.NewMLPMNIST(2)
	src, err := NewSource(m, "")
	if err != nil {
		t.Fatal(err)
	}
	b := src.Next(5)
	if b.N != 5 || len(b.X) != 5*784 || len(b.Targets) != 5 {
		t.Fatalf("batch shapes: N %d X %d targets %d", b.N, len(b.X), len(b.Targets))
	}
	lo, hi := float32((0-MNISTMean)/MNISTStd), float32((1-MNISTMean)/MNISTStd)
	for _, x := range b.X {
		if x < lo-1e-6 || x > hi+1e-6 {
			t.Fatalf("pixel %g outside [%g, %g]", x, lo, hi)
		}
	}
	ev := src.Eval()
	if ev.Name != "test" || ev.Len != 10000 || ev.Classes != 10 {
		t.Fatalf("eval set %+v", ev)
	}
	if last := ev.Batch(9990, 64); last.N != 10 {
		t.Fatalf("last eval batch has %d samples, want 10", last.N)
	}
}

// collect draws n samples one at a time and returns their identities.
func collect(src Source, n int) []int32 {
	var out []int32
	for i := 0; i < n; i++ {
		b := src.Next(1)
		if b.X != nil {
			// Identify an MNIST sample by a hash of its pixels and label.
			var h int32
			for j, x := range b.X {
				h = h*31 + int32(x*1000) + int32(j)
			}
			out = append(out, h*11+b.Targets[0])
		} else {
			out = append(out, b.Tokens[0]*1e6+b.Tokens[1]*1e3+b.Tokens[2])
		}
	}
	return out
}

func TestSamplerDeterministicPerNode(t *testing.T) {
	s1 := newSampler(1000, 7, "a")
	s2 := newSampler(1000, 7, "a")
	s3 := newSampler(1000, 7, "b")
	s4 := newSampler(1000, 8, "a")
	var o1, o2, o3, o4 []int
	for i := 0; i < 1000; i++ {
		o1 = append(o1, s1.next())
		o2 = append(o2, s2.next())
		o3 = append(o3, s3.next())
		o4 = append(o4, s4.next())
	}
	if !slices.Equal(o1, o2) {
		t.Fatal("same seed and node gave different orders")
	}
	if slices.Equal(o1, o3) || slices.Equal(o1, o4) {
		t.Fatal("another node or seed gave the same order")
	}
	// An epoch is a permutation.
	sorted := slices.Clone(o1)
	slices.Sort(sorted)
	for i, v := range sorted {
		if v != i {
			t.Fatalf("epoch is not a permutation: sorted[%d] = %d", i, v)
		}
	}
	if s1.pos != (Position{Epoch: 1}) {
		t.Fatalf("position after one epoch: %+v", s1.pos)
	}
	// The next epoch has another order.
	var e2 []int
	for i := 0; i < 1000; i++ {
		e2 = append(e2, s1.next())
	}
	if slices.Equal(o1, e2) {
		t.Fatal("epochs 0 and 1 have the same order")
	}
	if err := s1.seek(Position{Offset: 1000}); err == nil {
		t.Fatal("seek past the epoch accepted")
	}
}

func TestSourceSeekResumes(t *testing.T) {
	for _, m := range []*run.Manifest{run.NewMLPMNIST(1), textManifest(t)} {
		t.Run(m.Name, func(t *testing.T) {
			a, err := NewSource(m, "node-1")
			if err != nil {
				t.Fatal(err)
			}
			a.Next(37)
			p := a.Position()
			want := collect(a, 20)
			b, err := NewSource(m, "node-1")
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Seek(p); err != nil {
				t.Fatal(err)
			}
			if got := collect(b, 20); !slices.Equal(got, want) {
				t.Fatal("resumed source drew other samples")
			}
		})
	}
}

func textManifest(t testing.TB) *run.Manifest {
	t.Helper()
	text, err := ReadCorpus("")
	if err != nil {
		t.Fatal(err)
	}
	m := run.NewGPTChar(Charset(text), 2)
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestTextSource(t *testing.T) {
	m := textManifest(t)
	src, err := NewSource(m, "")
	if err != nil {
		t.Fatal(err)
	}
	B := m.Model.BlockSize
	b := src.Next(3)
	if len(b.Tokens) != 3*B || len(b.Targets) != 3*B {
		t.Fatalf("tokens %d targets %d", len(b.Tokens), len(b.Targets))
	}
	for k := 0; k < 3; k++ {
		if !slices.Equal(b.Tokens[k*B+1:(k+1)*B], b.Targets[k*B:(k+1)*B-1]) {
			t.Fatal("targets are not the tokens shifted by one")
		}
	}
	train, val, err := TextSplits(m)
	if err != nil {
		t.Fatal(err)
	}
	if src.Len() != len(train)-B {
		t.Fatalf("Len %d, want %d", src.Len(), len(train)-B)
	}
	ev := src.Eval()
	if ev.Len != (len(val)-1)/B || ev.Classes != 0 {
		t.Fatalf("eval set %+v", ev)
	}
	vb := ev.Batch(1, 1)
	if !slices.Equal(vb.Tokens, val[B:2*B]) || !slices.Equal(vb.Targets, val[B+1:2*B+1]) {
		t.Fatal("validation window 1 is not val[B:2B]")
	}
}

func TestCorpusErrors(t *testing.T) {
	if _, err := ReadCorpus(filepath.Join(t.TempDir(), "none.txt")); !errors.Is(err, ErrNoData) {
		t.Fatalf("missing corpus: %v", err)
	}
	if _, err := Encode("abz", "ab"); err == nil || !strings.Contains(err.Error(), `'z'`) {
		t.Fatalf("encode outside charset: %v", err)
	}
	if got := Charset("banana"); got != "abn" {
		t.Fatalf("Charset = %q", got)
	}
	t.Setenv("GOROOT", t.TempDir())
	if p, err := CorpusPath(""); err != nil || !strings.HasSuffix(p, "Opticks.txt") {
		t.Fatalf("default corpus with a bogus $GOROOT: %q %v", p, err)
	}
}

// TestLoadCorpusPinned: a text run that pins its corpus by SHA-256 finds
// a volunteer's copy in the data dir, falls back to the manifest's path, and
// refuses a file with other content, naming the field.
func TestLoadCorpusPinned(t *testing.T) {
	text, err := ReadCorpus("")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	d := run.DatasetSpec{Name: run.DatasetText, Path: "/nowhere/corpus.txt", SHA256: CorpusSHA256(text)}
	if _, err := LoadCorpus(d, ""); err == nil {
		t.Fatal("missing corpus accepted")
	}
	copyPath := filepath.Join(dir, "corpus.txt")
	os.WriteFile(copyPath, []byte(text), 0o644)
	if got, err := LoadCorpus(d, dir); err != nil || got != text {
		t.Fatalf("copy in the data dir: %v", err)
	}
	os.WriteFile(copyPath, []byte(text+"!"), 0o644)
	if _, err := LoadCorpus(d, dir); err == nil || !strings.Contains(err.Error(), "dataset.sha256") || !strings.Contains(err.Error(), copyPath) {
		t.Fatalf("altered copy: %v, want a dataset.sha256 error naming %s", err, copyPath)
	}
	// An altered copy in the data dir, the right text at the manifest's path.
	d.Path = ""
	os.WriteFile(filepath.Join(dir, filepath.Base(DefaultCorpus)), []byte("other"), 0o644)
	if got, err := LoadCorpus(d, dir); err != nil || got != text {
		t.Fatalf("fallback to the default corpus: %v", err)
	}
}

func TestBigram(t *testing.T) {
	m := textManifest(t)
	loss, k, err := BigramBaseline(m)
	if err != nil {
		t.Fatal(err)
	}
	uniform := math.Log(float64(m.Model.Vocab))
	// English characters carry roughly 2.4-2.5 nats under a bigram model.
	if loss < 2 || loss > 2.8 || loss >= uniform {
		t.Fatalf("bigram val loss %.3f (k=%g), uniform %.3f", loss, k, uniform)
	}
	// A deterministic sequence is learnt exactly, up to smoothing.
	seq := []int32{0, 1, 2, 0, 1, 2, 0, 1, 2, 0}
	if l := FitBigram(seq, 3, 1e-6).Loss(seq); l > 1e-4 {
		t.Fatalf("loss on a cycle %.6f", l)
	}
	t.Logf("bigram val loss %.4f with k=%g", loss, k)
}

func FuzzDecodeIDX(f *testing.F) {
	f.Add([]byte{0, 0, 8, 1, 0, 0, 0, 2, 7, 9}, 1)
	f.Add([]byte{0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1, 5, 6}, 3)
	f.Add([]byte{0, 0, 8, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1}, 3)
	f.Add([]byte{0, 0, 9, 1}, 1)
	f.Fuzz(func(t *testing.T, b []byte, rank int) {
		if rank < 1 || rank > 4 {
			return
		}
		x, err := decodeIDX(bytes.NewReader(b), rank)
		if err != nil {
			return
		}
		n := 1
		for _, d := range x.dims {
			n *= d
		}
		if n != len(x.data) || 4+4*rank+n > len(b) {
			t.Fatalf("decoded %d bytes for dims %v from %d input bytes", len(x.data), x.dims, len(b))
		}
	})
}

// MNIST is found without the go command: PATH is emptied, and the data is
// looked up where the build saw it, then in the module cache; when it is
// nowhere the error names every place tried and what to do.
func TestMNISTFoundWithoutGoToolchain(t *testing.T) {
	t.Setenv("PATH", "")
	t.Setenv(EnvDataDir, "")
	cache := t.TempDir()
	t.Setenv("GOMODCACHE", cache)
	t.Setenv("GOPATH", t.TempDir())
	t.Setenv("HOME", t.TempDir())
	defer func(old string) { BuildMNISTDir = old }(BuildMNISTDir)
	BuildMNISTDir = filepath.Join(t.TempDir(), "gone")

	_, err := MNISTDir("")
	if !errors.Is(err, ErrNoData) || !strings.Contains(err.Error(), BuildMNISTDir) ||
		!strings.Contains(err.Error(), cache) || !strings.Contains(err.Error(), "--data-dir") {
		t.Fatalf("nothing found: %v", err)
	}
	inCache := filepath.Join(cache, "github.com", "petar", "!go!m!n!i!s!t@"+mnistVersion, "data")
	if err := os.MkdirAll(inCache, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(inCache, mnistTrainImages), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if d, err := MNISTDir(""); err != nil || d != inCache {
		t.Fatalf("module cache: got %q, %v; want %s", d, err, inCache)
	}
	built := t.TempDir()
	if err := os.WriteFile(filepath.Join(built, mnistTrainImages), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	BuildMNISTDir = built
	if d, err := MNISTDir(""); err != nil || d != built {
		t.Fatalf("build-time folder: got %q, %v; want %s", d, err, built)
	}
}
