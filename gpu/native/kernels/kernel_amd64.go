//go:build amd64 && !purego

package kernels

import "golang.org/x/sys/cpu"

// hasFMA reports whether the AVX2/FMA micro-kernel can run here.
var hasFMA = cpu.X86.HasAVX2 && cpu.X86.HasFMA

// kern6x16 is microKernelGo in AVX2/FMA assembly (kernel_amd64.s).
//
//go:noescape
func kern6x16(k int, a, b, c *float32, ldc int)

func microKernel(k int, a, b, c []float32, ldc int) {
	if !hasFMA {
		microKernelGo(k, a, b, c, ldc)
		return
	}
	// Bounds are checked here so the assembly can trust them.
	_ = a[k*mr-1]
	_ = b[k*nr-1]
	_ = c[(mr-1)*ldc+nr-1]
	kern6x16(k, &a[0], &b[0], &c[0], ldc)
}

// Accelerated reports which micro-kernel Sgemm uses.
func Accelerated() string {
	if hasFMA {
		return "avx2-fma"
	}
	return "go"
}

//go:noescape
func fmaLoop(n int)

// peakFLOPsPerIter: 12 FMAs of 8 lanes, 2 FLOPs each.
const peakFLOPsPerIter = 12 * 8 * 2

func peakLoop(n int) {
	if hasFMA {
		fmaLoop(n)
		return
	}
	peakLoopGo(n)
}
