//go:build amd64 && !purego

package kernels

import "golang.org/x/sys/cpu"

// hasFMA reports whether the AVX2/FMA micro-kernel can run here.
var hasFMA = cpu.X86.HasAVX2 && cpu.X86.HasFMA

// kern6x16 is microKernelGo in AVX2/FMA assembly (kernel_amd64.s).
//
//go:noescape
func kern6x16(k int, a, b, c *float32, ldc int, add bool)

//go:noescape
func kern6x16Direct(k int, a *float32, lda int, b, c *float32, ldc int, add bool)

// microKernelDirect is microKernel reading an mr×k block of row-major A in
// place (row stride lda) instead of a packed panel.
func microKernelDirect(k int, a []float32, lda int, b, c []float32, ldc int, add bool) {
	if !hasFMA {
		microKernelDirectGo(k, a, lda, b, c, ldc, add)
		return
	}
	_ = a[(mr-1)*lda+k-1]
	_ = b[k*nr-1]
	_ = c[(mr-1)*ldc+nr-1]
	kern6x16Direct(k, &a[0], lda, &b[0], &c[0], ldc, add)
}

func microKernel(k int, a, b, c []float32, ldc int, add bool) {
	if !hasFMA {
		microKernelGo(k, a, b, c, ldc, add)
		return
	}
	// Bounds are checked here so the assembly can trust them.
	_ = a[k*mr-1]
	_ = b[k*nr-1]
	_ = c[(mr-1)*ldc+nr-1]
	kern6x16(k, &a[0], &b[0], &c[0], ldc, add)
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

//go:noescape
func geluAVX2(dst, src *float32, n int)

//go:noescape
func geluBackwardAVX2(d, x *float32, n int)

// vectorGELU handles the first multiple of 8 values and returns how many.
func vectorGELU(dst, src []float32) int {
	n := len(src) &^ 7
	if !hasFMA || n == 0 {
		return 0
	}
	geluAVX2(&dst[0], &src[0], n)
	return n
}

func vectorGELUBackward(d, x []float32) int {
	n := len(x) &^ 7
	if !hasFMA || n == 0 {
		return 0
	}
	geluBackwardAVX2(&d[0], &x[0], n)
	return n
}

//go:noescape
func adamwAVX2(p, grad, m, v *float32, n int, c *AdamWParams)

func vectorAdamW(p, g, m, v []float32, c *AdamWParams) int {
	n := len(p) &^ 7
	if !hasFMA || n == 0 {
		return 0
	}
	_, _, _ = g[n-1], m[n-1], v[n-1]
	adamwAVX2(&p[0], &g[0], &m[0], &v[0], n, c)
	return n
}

//go:noescape
func expShiftAVX2(x *float32, n int, scale, shift float32) float32

func vectorExpShift(x []float32, scale, shift float32) (int, float32) {
	n := len(x) &^ 7
	if !hasFMA || n == 0 {
		return 0, 0
	}
	return n, expShiftAVX2(&x[0], n, scale, shift)
}
