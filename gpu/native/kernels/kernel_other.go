//go:build !amd64 || purego

package kernels

func microKernel(k int, a, b, c []float32, ldc int) { microKernelGo(k, a, b, c, ldc) }

func microKernelDirect(k int, a []float32, lda int, b, c []float32, ldc int) {
	microKernelDirectGo(k, a, lda, b, c, ldc)
}

// Accelerated reports which micro-kernel Sgemm uses.
func Accelerated() string { return "go" }

const peakFLOPsPerIter = 12 * 8 * 2

func peakLoop(n int) { peakLoopGo(n) }

func vectorGELU(dst, src []float32) int     { return 0 }
func vectorGELUBackward(d, x []float32) int { return 0 }

func vectorAdamW(p, g, m, v []float32, c *AdamWParams) int { return 0 }
