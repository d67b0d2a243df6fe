package kernels

import (
	"sync"
	"time"
)

// FMAPeak measures the machine's float32 multiply-add throughput in GFLOP/s:
// threads goroutines each run a register-only loop of independent FMAs (the
// micro-kernel's arithmetic without its loads). It times many short rounds
// over about d and returns the fastest, so that other work on a shared
// machine lowers it as little as possible: it is the ceiling that Sgemm's
// GFLOP/s are compared against.
func FMAPeak(threads int, d time.Duration) float64 {
	threads = max(threads, 1)
	// Calibrate one round to ~10 ms on one goroutine.
	n := 1 << 12
	for {
		t0 := time.Now()
		peakLoop(n)
		if el := time.Since(t0); el > 2*time.Millisecond {
			n = int(float64(n) * float64(10*time.Millisecond) / float64(el))
			break
		}
		n *= 2
	}
	best := 0.0
	for start := time.Now(); time.Since(start) < d; {
		var wg sync.WaitGroup
		t0 := time.Now()
		for range threads {
			wg.Add(1)
			go func() { defer wg.Done(); peakLoop(n) }()
		}
		wg.Wait()
		best = max(best, float64(threads)*float64(n)*peakFLOPsPerIter/time.Since(t0).Seconds()/1e9)
	}
	return best
}

var peakSink float32

// peakLoopGo is the pure-Go stand-in: the same 192 FLOPs per iteration as
// scalar multiply-adds on 96 independent accumulators.
func peakLoopGo(n int) {
	var acc [96]float32
	x, y := float32(1), float32(1e-9)
	for i := 0; i < n; i++ {
		for j := range acc {
			acc[j] = acc[j]*x + y
		}
	}
	peakSink += acc[0]
}
