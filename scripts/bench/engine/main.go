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
	"time"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"

	"github.com/swarm-train/swarm/gpu/engine"
	"github.com/swarm-train/swarm/gpu/native"
	"github.com/swarm-train/swarm/gpu/native/kernels"
	"github.com/swarm-train/swarm/swarm/run"
)

// Charset is an 80-character set, about the size of an English text's.
const Charset = "\n !\"'(),-.0123456789:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz[]_*"

type torchResult struct {
	Model       string  `json:"model"`
	Batch       int     `json:"batch"`
	Threads     int     `json:"threads"`
	SamplesPerS float64 `json:"samples_per_s"`
}

func main() {
	threads := flag.Int("threads", runtime.GOMAXPROCS(0), "goroutines per operation (and PyTorch threads)")
	torchFile := flag.String("torch", "", "JSON lines from torch_bench.py")
	torchNote := flag.String("torch-note", "", "why there are no PyTorch numbers")
	blasNote := flag.String("blas-note", "", "which BLAS PyTorch used")
	reps := flag.Int("reps", 5, "repetitions; medians are reported")
	flag.Parse()

	type torchBest struct {
		sps     float64
		threads int
	}
	torch := map[string]torchBest{} // best over the thread counts tried
	if *torchFile != "" {
		f, err := os.Open(*torchFile)
		if err != nil {
			log.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var r torchResult
			if json.Unmarshal(sc.Bytes(), &r) == nil {
				key := fmt.Sprintf("%s/%d", r.Model, r.Batch)
				if r.SamplesPerS > torch[key].sps {
					torch[key] = torchBest{r.SamplesPerS, r.Threads}
				}
			}
		}
		f.Close()
	}

	peak := kernels.FMAPeak(*threads, 1500*time.Millisecond)
	peak1 := kernels.FMAPeak(1, 1000*time.Millisecond)

	fmt.Println("## Native engine (gpu/native)")
	fmt.Println()
	fmt.Printf("Training step = forward, backward and AdamW step of the whole model on one shard, %d threads. PyTorch runs the same model, batch and optimizer with `torch.set_num_threads` at %d and at 1, and the better of the two is compared. ", *threads, *threads)
	fmt.Printf("GFLOP/s count 6 FLOPs per weight use (`run.Manifest.FLOPsPerSample`). Micro-kernel: `%s`. ", kernels.Accelerated())
	fmt.Printf("Measured FMA peak (register-only AVX2 FMA loop on every thread, fastest of many 10 ms rounds): **%.0f GFLOP/s** on %d threads, %.0f on one. Medians of %d repetitions.\n\n", peak, *threads, peak1, *reps)
	if *blasNote != "" {
		fmt.Println(*blasNote)
		fmt.Println()
	}
	if *torchNote != "" {
		fmt.Println(*torchNote)
		fmt.Println()
	}

	fmt.Println("| model | batch | native samples/s | native GFLOP/s | % of FMA peak | PyTorch samples/s | native / PyTorch |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|")
	type stepCase struct {
		m *run.Manifest
		n int
	}
	for _, c := range []stepCase{{run.NewMLPMNIST(1), 64}, {run.NewMLPMNIST(1), 128}, {run.NewGPTChar(Charset, 1), 32}} {
		sps, gflops := trainStep(c.m, c.n, *threads, *reps)
		key := fmt.Sprintf("%s/%d", c.m.Model.Arch, c.n)
		tcol, ratio := "–", "–"
		if t, ok := torch[key]; ok {
			tcol, ratio = fmt.Sprintf("%.0f (%d thr)", t.sps, t.threads), fmt.Sprintf("%.2f×", sps/t.sps)
		}
		fmt.Printf("| %s | %d | %.0f | %.1f | %.0f%% | %s | %s |\n", c.m.Model.Arch, c.n, sps, gflops, 100*gflops/peak, tcol, ratio)
	}
	fmt.Println()

	fmt.Println("GEMM shapes of those steps (m×n×k; N = plain, T = transposed operand), native kernels against gonum's `blas32.Gemm` (pure-Go Sgemm):")
	fmt.Println()
	fmt.Println("| shape | use | native GFLOP/s | % of FMA peak | native best | best % of peak | gonum GFLOP/s | native / gonum |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|---:|")
	for _, s := range gemmShapes {
		nat, natBest, gon := gemm(s, *threads, *reps)
		fmt.Printf("| %d×%d×%d %s%s | %s | %.1f | %.0f%% | %.1f | %.0f%% | %.1f | %.1f× |\n", s.m, s.n, s.k, tr(s.tA), tr(s.tB), s.use, nat, 100*nat/peak, natBest, 100*natBest/peak, gon, nat/gon)
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
