//go:build amd64 && !purego

package averaging

import (
	"math"

	"golang.org/x/sys/cpu"
)

// hasMeanDistAVX2 reports whether meanDist8AVX2 can run here.
var hasMeanDistAVX2 = cpu.X86.HasAVX2

// meanDist8AVX2 is meanBlock and sqDist32's sums for up to 8 inputs in one
// pass, four coordinates at a time (meandist_amd64.s); n is a multiple of
// 4, every pointer valid for n values.
//
//go:noescape
func meanDist8AVX2(m *float32, xs *[8]*float32, wb *[10][4]float64, n int, acc *[8][4]float64)

// meanDistAsm does what meanDistBlock does for the first len(m)&^3 values
// with the assembly kernel, and reports how many it did (0 where the kernel
// cannot run). Fewer than 8 inputs are padded with weight 0 (the first
// input's values, so every pointer is valid): a product 0·x is ±0, and the
// loop's sum, started from +0, is never −0, so adding ±0 leaves it as it is.
func meanDistAsm(m []float32, xs [][]float32, w []float64, b int, W float64, acc *[8][4]float64) int {
	n := len(m) &^ 3
	if !hasMeanDistAVX2 || n == 0 || len(xs) < 2 || len(xs) > 8 {
		return 0
	}
	var ps [8]*float32
	var wb [10][4]float64
	for i := range ps {
		if i >= len(xs) {
			ps[i] = ps[0]
			continue
		}
		x := xs[i][b : b+n] // bounds checked here so the assembly can trust them
		ps[i] = &x[0]
		wb[i] = [4]float64{w[i], w[i], w[i], w[i]}
	}
	wb[8] = [4]float64{W, W, W, W}
	if len(xs) == 8 {
		z := math.Copysign(0, -1) // mean8 starts from the first product
		wb[9] = [4]float64{z, z, z, z}
	}
	meanDist8AVX2(&m[0], &ps, &wb, n, acc)
	return n
}
