//go:build amd64 && !purego

package averaging

import "golang.org/x/sys/cpu"

// hasMeanDistAVX2 reports whether meanDist8AVX2 can run here.
var hasMeanDistAVX2 = cpu.X86.HasAVX2

// meanDist8AVX2 is mean8 and sqDist32's sums for 8 inputs in one pass, four
// coordinates at a time (meandist_amd64.s); n is a multiple of 4, every
// pointer valid for n values.
//
//go:noescape
func meanDist8AVX2(m *float32, xs *[8]*float32, wb *[9][4]float64, n int, acc *[8][4]float64)

// meanDist8Asm does what meanDist8Go does for the first n&^3 values of m
// with the assembly kernel, and reports how many it did (0 where the kernel
// cannot run).
func meanDist8Asm(m []float32, xs [][]float32, w []float64, b int, W float64, acc *[8][4]float64) int {
	n := len(m) &^ 3
	if !hasMeanDistAVX2 || n == 0 {
		return 0
	}
	var ps [8]*float32
	var wb [9][4]float64
	for i := range ps {
		x := xs[i][b : b+n] // bounds checked here so the assembly can trust them
		ps[i] = &x[0]
		wb[i] = [4]float64{w[i], w[i], w[i], w[i]}
	}
	wb[8] = [4]float64{W, W, W, W}
	meanDist8AVX2(&m[0], &ps, &wb, n, acc)
	return n
}
