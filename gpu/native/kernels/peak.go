package kernels

import (
	"sync"
	"time"
)

// FMAPeak measures the machine's float32 multiply-add throughput in GFLOP/s:
// threads goroutines each run a register-only loop of independent FMAs (the
// micro-kernel's instruction mix without its loads) for about d. It is the
// ceiling Sgemm's GFLOP/s are compared against.
func FMAPeak(threads int, d time.Duration) float64 {
	threads = max(threads, 1)
	const chunk = 1 << 16 // iterations between clock reads
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total float64
	)
	start := time.Now()
	for range threads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var iters int
			for time.Since(start) < d {
				peakLoop(chunk)
				iters += chunk
			}
			mu.Lock()
			total += float64(iters) * peakFLOPsPerIter
			mu.Unlock()
		}()
	}
	wg.Wait()
	return total / time.Since(start).Seconds() / 1e9
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
