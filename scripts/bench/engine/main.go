// Command engine measures the native engine for scripts/bench/engine.sh: the
// machine's FMA peak, GEMM throughput of the shapes the built-in models use
// (native kernels against gonum's Sgemm), and samples/s of a full training
// step (forward, backward, AdamW) next to PyTorch's numbers read from a file.
// It prints a Markdown section.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/engine/native"
	"github.com/swarm-train/swarm/engine/native/kernels"
	"github.com/swarm-train/swarm/spec/run"
)

// Charset is an 80-character set, about the size of an English text's.
const Charset = "\n !\"'(),-.0123456789:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz[]_*"

type torchResult struct {
	Model       string  `json:"model"`
	Batch       int     `json:"batch"`
	Threads     int     `json:"threads"`
	SamplesPerS float64 `json:"samples_per_s"`
	BLAS        string  `json:"blas"` // the libblas.so.3 torch loaded
}

type torchBest struct {
	sps     float64
	threads int
}

// readTorch returns the best samples/s per model/batch over the thread counts
// tried. Every line must come from a torch that loaded wantBLAS: a ratio
// against another BLAS than the one the section declares is refused.
func readTorch(path, wantBLAS string) (map[string]torchBest, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	best := map[string]torchBest{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r torchResult
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if r.BLAS != wantBLAS {
			return nil, fmt.Errorf("PyTorch ran %s/%d with BLAS %q, but the section's baseline is %q: refusing to print a ratio against a different baseline", r.Model, r.Batch, r.BLAS, wantBLAS)
		}
		key := fmt.Sprintf("%s/%d", r.Model, r.Batch)
		if r.SamplesPerS > best[key].sps {
			best[key] = torchBest{r.SamplesPerS, r.Threads}
		}
	}
	return best, sc.Err()
}

// peaks is the machine's FMA peak in GFLOP/s: all threads together and one.
type peaks struct {
	all, one float64
}

// measurePeak measures the FMA peak so that a busy moment cannot lower it:
// each thread keeps its own fastest 10 ms round and the threads' bests are
// summed (a core that was busy for a while still has quiet rounds), and the
// total is never taken below threads × the single-thread best.
func measurePeak(threads int) peaks {
	bests := make([]float64, threads)
	var wg sync.WaitGroup
	for i := range bests {
		wg.Add(1)
		go func() { defer wg.Done(); bests[i] = kernels.FMAPeak(1, 1500*time.Millisecond) }()
	}
	wg.Wait()
	one := kernels.FMAPeak(1, time.Second)
	for _, b := range bests {
		one = max(one, b)
	}
	var sum float64
	for _, b := range bests {
		sum += b
	}
	return peaks{all: max(sum, float64(threads)*one), one: one}
}

// larger keeps the higher of two peak measurements, field by field.
func (p peaks) larger(q peaks) peaks { return peaks{max(p.all, q.all), max(p.one, q.one)} }

type stepRow struct {
	arch        string
	batch       int
	sps, gflops float64
	tcol, ratio string
}

type gemmRow struct {
	s                 shape
	nat, natBest, gon float64
}

func main() {
	threads := flag.Int("threads", runtime.GOMAXPROCS(0), "goroutines per operation (and PyTorch threads)")
	torchFile := flag.String("torch", "", "JSON lines from torch_bench.py")
	torchNote := flag.String("torch-note", "", "why there are no PyTorch numbers")
	blasNote := flag.String("blas-note", "", "which BLAS PyTorch used")
	baseline := flag.String("baseline", "PyTorch", "name of the baseline in the table headers")
	baselineBLAS := flag.String("baseline-blas", "", "the libblas.so.3 every -torch line must have loaded")
	reps := flag.Int("reps", 5, "repetitions; medians are reported")
	flag.Parse()

	torch := map[string]torchBest{}
	if *torchFile != "" {
		if *baselineBLAS == "" {
			log.Fatal("engine bench: -torch needs -baseline-blas, the BLAS the PyTorch baseline is defined with")
		}
		var err error
		if torch, err = readTorch(*torchFile, *baselineBLAS); err != nil {
			log.Fatalf("engine bench: %v", err)
		}
	}

	// The peak is measured before and after the rest, and the higher kept.
	peak := measurePeak(*threads)

	type stepCase struct {
		m *run.Manifest
		n int
	}
	var steps []stepRow
	for _, c := range []stepCase{{run.NewMLPMNIST(1), 64}, {run.NewMLPMNIST(1), 128}, {run.NewGPTChar(Charset, 1), 32}} {
		sps, gflops := trainStep(c.m, c.n, *threads, *reps)
		key := fmt.Sprintf("%s/%d", c.m.Model.Arch, c.n)
		r := stepRow{arch: c.m.Model.Arch, batch: c.n, sps: sps, gflops: gflops, tcol: "–", ratio: "–"}
		if t, ok := torch[key]; ok {
			r.tcol, r.ratio = fmt.Sprintf("%.0f (%d thr)", t.sps, t.threads), fmt.Sprintf("%.2f×", sps/t.sps)
		}
		steps = append(steps, r)
	}
	var gemms []gemmRow
	for _, s := range gemmShapes {
		nat, natBest, gon := gemm(s, *threads, *reps)
		gemms = append(gemms, gemmRow{s, nat, natBest, gon})
	}
	peak = peak.larger(measurePeak(*threads))

	// Nothing runs faster than the peak: a row above it means the peak was
	// measured wrong, and the table is not printed.
	pct := func(gflops float64) float64 { return 100 * gflops / peak.all }
	var over []string
	for _, r := range steps {
		if pct(r.gflops) > 100 {
			over = append(over, fmt.Sprintf("%s batch %d at %.0f%%", r.arch, r.batch, pct(r.gflops)))
		}
	}
	for _, r := range gemms {
		if pct(r.natBest) > 100 {
			over = append(over, fmt.Sprintf("GEMM %d×%d×%d at %.0f%%", r.s.m, r.s.n, r.s.k, pct(r.natBest)))
		}
	}
	if len(over) > 0 {
		log.Fatalf("engine bench: %s of the measured FMA peak (%.0f GFLOP/s on %d threads, %.0f on one): the peak measurement is wrong, most likely because other work held the cores while it ran; not printing the table", strings.Join(over, ", "), peak.all, *threads, peak.one)
	}

	fmt.Println("## Native engine (engine/native)")
	fmt.Println()
	fmt.Printf("Training step = forward, backward and AdamW step of the whole model on one shard, %d threads. %s runs the same model, batch and optimizer with `torch.set_num_threads` at %d and at 1, and the better of the two is compared. ", *threads, *baseline, *threads)
	fmt.Printf("GFLOP/s count 6 FLOPs per weight use (`run.Manifest.FLOPsPerSample`). Micro-kernel: `%s`. ", kernels.Accelerated())
	fmt.Printf("Measured FMA peak (register-only AVX2 FMA loop, each thread's fastest of many 10 ms rounds, summed over the threads and never below %d × the single-thread peak; measured before and after the tables, the higher kept): **%.0f GFLOP/s** on %d threads, %.0f on one. Medians of %d repetitions.\n\n", *threads, peak.all, *threads, peak.one, *reps)
	if *blasNote != "" {
		fmt.Println(*blasNote)
		fmt.Println()
	}
	if *torchNote != "" {
		fmt.Println(*torchNote)
		fmt.Println()
	}

	fmt.Printf("| model | batch | native samples/s | native GFLOP/s | %% of FMA peak | %s samples/s | native / %s |\n", *baseline, *baseline)
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|")
	for _, r := range steps {
		fmt.Printf("| %s | %d | %.0f | %.1f | %.0f%% | %s | %s |\n", r.arch, r.batch, r.sps, r.gflops, pct(r.gflops), r.tcol, r.ratio)
	}
	fmt.Println()

	fmt.Println("GEMM shapes of those steps (m×n×k; N = plain, T = transposed operand), native kernels against gonum's `blas32.Gemm` (pure-Go Sgemm):")
	fmt.Println()
	fmt.Println("| shape | use | native GFLOP/s | % of FMA peak | native best | best % of peak | gonum GFLOP/s | native / gonum |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|---:|")
	for _, r := range gemms {
		s := r.s
		fmt.Printf("| %d×%d×%d %s%s | %s | %.1f | %.0f%% | %.1f | %.0f%% | %.1f | %.1f× |\n", s.m, s.n, s.k, tr(s.tA), tr(s.tB), s.use, r.nat, pct(r.nat), r.natBest, pct(r.natBest), r.gon, r.nat/r.gon)
	}
	fmt.Println()
	fmt.Println("GFLOP/s columns are medians; \"best\" is the fastest repetition, measured the way the FMA peak is (fastest round), for the % of peak goal.")
}

func tr(t bool) string {
	if t {
		return "T"
	}
	return "N"
}

type shape struct {
	m, n, k int
	tA, tB  bool
	use     string
}

var gemmShapes = []shape{
	{128, 1024, 784, false, true, "mlp l0 forward (batch 128)"},
	{128, 1024, 1024, false, true, "mlp l1 forward"},
	{128, 1024, 1024, false, false, "mlp l1 input gradient"},
	{1024, 784, 128, true, false, "mlp l0 weight gradient"},
	{2048, 384, 128, false, true, "gpt qkv forward (32×64 positions)"},
	{2048, 512, 128, false, true, "gpt mlp.fc forward"},
	{2048, 128, 512, false, true, "gpt mlp.proj forward"},
	{2048, 512, 128, false, false, "gpt mlp.proj input gradient"},
	{512, 128, 2048, true, false, "gpt mlp.fc weight gradient"},
	{1024, 768, 768, false, true, "llama-124m q/o proj forward (1024 positions)"},
	{1024, 2048, 768, false, true, "llama-124m SwiGLU gate/up forward"},
	{1024, 768, 2048, false, true, "llama-124m SwiGLU down forward"},
	{768, 2048, 1024, true, false, "llama-124m SwiGLU down weight gradient"},
	{256, 50257, 768, false, true, "llama-124m head over GPT-2's vocabulary (256 positions)"},
	{1024, 176, 64, false, true, "llama-tiny SwiGLU gate forward (16×64 positions)"},
	{1024, 1024, 1024, false, false, "square, large"},
}

func median(xs []float64) float64 {
	slices.Sort(xs)
	return xs[len(xs)/2]
}

func randSlice(n int) []float32 {
	rng := rand.New(rand.NewPCG(1, uint64(n)))
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(rng.NormFloat64())
	}
	return s
}

// gemm returns the median and best GFLOP/s of the native product and the
// median of gonum's.
func gemm(s shape, threads, reps int) (float64, float64, float64) {
	ra, ca := s.m, s.k
	if s.tA {
		ra, ca = ca, ra
	}
	rb, cb := s.k, s.n
	if s.tB {
		rb, cb = cb, rb
	}
	a, b, c := randSlice(ra*ca), randSlice(rb*cb), make([]float32, s.m*s.n)
	flops := 2 * float64(s.m*s.n*s.k)
	// Enough calls per repetition for ~50 ms.
	calls := max(1, int(50e-3*50e9/flops))
	measure := func(f func()) (float64, float64) {
		f()
		var rs []float64
		for range reps {
			t0 := time.Now()
			for range calls {
				f()
			}
			rs = append(rs, flops*float64(calls)/time.Since(t0).Seconds()/1e9)
		}
		return median(rs), slices.Max(rs)
	}
	nat, natBest := measure(func() { kernels.Sgemm(threads, s.tA, s.tB, s.m, s.n, s.k, a, ca, b, cb, c, s.n, false) })
	tA, tB := blas.NoTrans, blas.NoTrans
	if s.tA {
		tA = blas.Trans
	}
	if s.tB {
		tB = blas.Trans
	}
	ga := blas32.General{Rows: ra, Cols: ca, Stride: ca, Data: a}
	gb := blas32.General{Rows: rb, Cols: cb, Stride: cb, Data: b}
	gc := blas32.General{Rows: s.m, Cols: s.n, Stride: s.n, Data: c}
	gon, _ := measure(func() { blas32.Gemm(tA, tB, 1, ga, gb, 0, gc) })
	return nat, natBest, gon
}

// trainStep returns the median samples/s and GFLOP/s of a full training step.
func trainStep(m *run.Manifest, n, threads, reps int) (float64, float64) {
	e := native.New(native.WithThreads(threads))
	sh, err := e.NewShard(m, 0)
	if err != nil {
		log.Fatal(err)
	}
	flops, _ := m.FLOPsPerSample(0)
	rng := rand.New(rand.NewPCG(2, 2))
	b := &engine.Batch{N: n}
	md := m.Model
	if md.Arch == run.ArchMLPMNIST {
		b.X = randSlice(n * md.Input)
		b.Targets = make([]int32, n)
		for i := range b.Targets {
			b.Targets[i] = int32(rng.IntN(md.Classes))
		}
	} else {
		b.Tokens, b.Targets = make([]int32, n*md.BlockSize), make([]int32, n*md.BlockSize)
		for i := range b.Tokens {
			b.Tokens[i], b.Targets[i] = int32(rng.IntN(md.Vocab)), int32(rng.IntN(md.Vocab))
		}
	}
	step := func() {
		_, _, tp, err := sh.Forward(b, nil, true)
		if err != nil {
			log.Fatal(err)
		}
		if _, err := sh.Backward(tp, nil); err != nil {
			log.Fatal(err)
		}
		if err := sh.Step(1e-4, 1); err != nil {
			log.Fatal(err)
		}
		sh.ZeroGrad()
	}
	step()
	step()
	steps := 10
	if strings.HasPrefix(md.Arch, "gpt") {
		steps = 3
	}
	var rs []float64
	for range reps {
		t0 := time.Now()
		for range steps {
			step()
		}
		rs = append(rs, float64(n*steps)/time.Since(t0).Seconds())
	}
	sps := median(rs)
	return sps, sps * flops / 1e9
}
