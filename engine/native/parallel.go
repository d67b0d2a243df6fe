package native

import "sync"

// forRange calls fn on contiguous sub-ranges of [0, n) from up to threads
// goroutines, giving each at least grain items. Callers only ever write
// disjoint outputs from fn, so results do not depend on how [0, n) is split.
func forRange(threads, n, grain int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	parts := threads
	if grain < 1 {
		grain = 1
	}
	if p := (n + grain - 1) / grain; p < parts {
		parts = p
	}
	if parts <= 1 {
		fn(0, n)
		return
	}
	step := (n + parts - 1) / parts
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += step {
		hi := min(lo+step, n)
		if hi == n {
			fn(lo, hi) // the last part runs on the calling goroutine
			break
		}
		wg.Add(1)
		go func() { defer wg.Done(); fn(lo, hi) }()
	}
	wg.Wait()
}
