//go:build !amd64 || purego

package kernels

func microKernel(k int, a, b, c []float32, ldc int, add bool) { microKernelGo(k, a, b, c, ldc, add) }

func microKernelDirect(k int, a []float32, lda int, b, c []float32, ldc int, add bool) {
	microKernelDirectGo(k, a, lda, b, c, ldc, add)
}

// Accelerated reports which micro-kernel Sgemm uses.
func Accelerated() string { return "go" }

const peakFLOPsPerIter = 12 * 8 * 2

func peakLoop(n int) { peakLoopGo(n) }

func vectorGELU(dst, src []float32) int     { return 0 }
func vectorGELUBackward(d, x []float32) int { return 0 }

func vectorAdamW(p, g, m, v []float32, c *AdamWParams) int { return 0 }

func vectorExpShift(x []float32, scale, shift float32) (int, float32) { return 0, 0 }
