// Package kernels holds the dense float32 kernels of the native engine: a
// blocked, packed matrix product (the GEMM every Linear layer and attention
// product goes through) with an AVX2/FMA micro-kernel on amd64 and a pure-Go
// micro-kernel everywhere else.
//
// The product is computed the classic way (Goto and van de Geijn): B is
// packed into column panels of width nr, A into row panels of height mr, and
// a micro-kernel keeps one mr×nr tile of C in registers while it walks a kc
// long slice of both panels. The k dimension is cut into fixed blocks of kc,
// visited in order, so every element of C is summed in the same order however
// the work is split between goroutines: results do not depend on the thread
// count.
package kernels

import (
	"fmt"
	"sync"
)

// Tile and block sizes. mr×nr is the register tile of the micro-kernel; a
// kc×nr panel of B (16 KiB) stays in L1, an mc×kc block of A (72 KiB) in L2.
const (
	mr = 6
	nr = 16
	kc = 256
	mc = 72
	nc = 1024
)

// Sgemm computes C = op(A)·op(B), or C += op(A)·op(B) when accumulate is set,
// where op(A) is m×k and op(B) is k×n, all row-major: A is m×k with row
// stride lda (k×m when transA), B is k×n with row stride ldb (n×k when
// transB), C is m×n with row stride ldc. threads ≤ 1 runs on the calling
// goroutine; otherwise C is cut into up to threads parts computed at once.
// It panics if a slice is too short for its shape, like a slice index would.
func Sgemm(threads int, transA, transB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, accumulate bool) {
	if m <= 0 || n <= 0 {
		return
	}
	checkShape("A", transA, m, k, a, lda)
	checkShape("B", transB, k, n, b, ldb)
	checkShape("C", false, m, n, c, ldc)
	if k <= 0 {
		if !accumulate {
			for i := 0; i < m; i++ {
				clear(c[i*ldc : i*ldc+n])
			}
		}
		return
	}
	g := gemm{transA: transA, transB: transB, k: k, a: a, lda: lda, b: b, ldb: ldb, c: c, ldc: ldc, acc: accumulate}
	// Split C into parts along its longer side, in whole register tiles, and
	// only when each part still has real work (≥ ~1 MFLOP).
	parts := threads
	if work := 2 * m * n * k; parts > work/(1<<20) {
		parts = work / (1 << 20)
	}
	if parts <= 1 {
		g.run(0, m, 0, n)
		return
	}
	var wg sync.WaitGroup
	if m >= n {
		step := roundUp(ceilDiv(m, parts), mr)
		for i0 := 0; i0 < m; i0 += step {
			wg.Add(1)
			go func(i0, i1 int) { defer wg.Done(); g.run(i0, i1, 0, n) }(i0, min(i0+step, m))
		}
	} else {
		step := roundUp(ceilDiv(n, parts), nr)
		for j0 := 0; j0 < n; j0 += step {
			wg.Add(1)
			go func(j0, j1 int) { defer wg.Done(); g.run(0, m, j0, j1) }(j0, min(j0+step, n))
		}
	}
	wg.Wait()
}

func checkShape(name string, trans bool, rows, cols int, s []float32, ld int) {
	if trans {
		rows, cols = cols, rows
	}
	if rows <= 0 || cols <= 0 {
		return
	}
	if ld < cols || len(s) < (rows-1)*ld+cols {
		panic(fmt.Sprintf("kernels: %s is %d×%d with stride %d but has %d elements", name, rows, cols, ld, len(s)))
	}
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }
func roundUp(a, b int) int { return ceilDiv(a, b) * b }

type gemm struct {
	transA, transB bool
	k              int
	a, b, c        []float32
	lda, ldb, ldc  int
	acc            bool
}

type packBufs struct {
	a    [mc * kc]float32
	b    [kc * nc]float32
	tile [mr * nr]float32
}

var bufPool = sync.Pool{New: func() any { return new(packBufs) }}

// run computes the block C[i0:i1, j0:j1] on the calling goroutine.
func (g *gemm) run(i0, i1, j0, j1 int) {
	bufs := bufPool.Get().(*packBufs)
	defer bufPool.Put(bufs)
	for jc := j0; jc < j1; jc += nc {
		nb := min(nc, j1-jc)
		for pc := 0; pc < g.k; pc += kc {
			kb := min(kc, g.k-pc)
			// The first k block overwrites C unless accumulating, so C
			// needs no clearing.
			add := g.acc || pc > 0
			g.packB(bufs.b[:], pc, kb, jc, nb)
			for ic := i0; ic < i1; ic += mc {
				mb := min(mc, i1-ic)
				// For short k (attention's per-head products) packing A costs
				// as much as the product: non-transposed A is then read in place
				// for full panels of mr rows, and only a partial last panel is
				// packed. (For long k, reading six strided rows in place was
				// slower on some layouts than packing.)
				direct := !g.transA && g.k <= directMaxK
				if direct {
					if full := mb / mr * mr; full < mb {
						g.packA(bufs.a[:], ic+full, mb-full, pc, kb)
					}
				} else {
					g.packA(bufs.a[:], ic, mb, pc, kb)
				}
				for jr := 0; jr < nb; jr += nr {
					bp := bufs.b[jr*kb:]
					for ir := 0; ir < mb; ir += mr {
						ci := (ic+ir)*g.ldc + jc + jr
						fullRows := ir+mr <= mb
						var ap []float32
						if direct && fullRows {
							ap = g.a[(ic+ir)*g.lda+pc:]
						} else if direct {
							ap = bufs.a[(ir-mb/mr*mr)*kb:]
						} else {
							ap = bufs.a[ir*kb:]
						}
						if fullRows && jr+nr <= nb {
							if direct {
								microKernelDirect(kb, ap, g.lda, bp, g.c[ci:], g.ldc, add)
							} else {
								microKernel(kb, ap, bp, g.c[ci:], g.ldc, add)
							}
							continue
						}
						// Edge tile: compute into a scratch tile, then add or
						// copy the valid part.
						t := bufs.tile[:]
						if direct && fullRows {
							microKernelDirect(kb, ap, g.lda, bp, t, nr, false)
						} else {
							microKernel(kb, ap, bp, t, nr, false)
						}
						rows, cols := min(mr, mb-ir), min(nr, nb-jr)
						for r := 0; r < rows; r++ {
							crow := g.c[ci+r*g.ldc : ci+r*g.ldc+cols]
							if !add {
								copy(crow, t[r*nr:r*nr+cols])
								continue
							}
							for j, v := range t[r*nr : r*nr+cols] {
								crow[j] += v
							}
						}
					}
				}
			}
		}
	}
}

// packA copies A[i0:i0+mb, p0:p0+kb] into row panels of height mr: panel q
// holds, for each p, the mr values of rows q*mr.. (zero past the edge).
func (g *gemm) packA(dst []float32, i0, mb, p0, kb int) {
	if g.transA {
		// A(i,p) = a[p*lda+i]: row p of a holds all mb values for this p.
		if mb%mr != 0 {
			clear(dst[(mb/mr)*mr*kb : roundUp(mb, mr)*kb])
		}
		for p := 0; p < kb; p++ {
			src := g.a[(p0+p)*g.lda+i0 : (p0+p)*g.lda+i0+mb]
			for ir := 0; ir < mb; ir += mr {
				rows := min(mr, mb-ir)
				copy(dst[ir*kb+p*mr:ir*kb+p*mr+rows], src[ir:ir+rows])
			}
		}
		return
	}
	for ir := 0; ir < mb; ir += mr {
		panel := dst[ir*kb : ir*kb+mr*kb]
		rows := min(mr, mb-ir)
		if rows == mr {
			// Six rows at once: contiguous writes, six read streams.
			i := i0 + ir
			a0 := g.a[i*g.lda+p0 : i*g.lda+p0+kb]
			a1 := g.a[(i+1)*g.lda+p0:][:len(a0)]
			a2 := g.a[(i+2)*g.lda+p0:][:len(a0)]
			a3 := g.a[(i+3)*g.lda+p0:][:len(a0)]
			a4 := g.a[(i+4)*g.lda+p0:][:len(a0)]
			a5 := g.a[(i+5)*g.lda+p0:][:len(a0)]
			for p := range a0 {
				d := (*[mr]float32)(panel[p*mr:])
				d[0], d[1], d[2], d[3], d[4], d[5] = a0[p], a1[p], a2[p], a3[p], a4[p], a5[p]
			}
			continue
		}
		clear(panel)
		for r := 0; r < rows; r++ {
			i := i0 + ir + r
			src := g.a[i*g.lda+p0 : i*g.lda+p0+kb]
			for p, v := range src {
				panel[p*mr+r] = v
			}
		}
	}
}

// packB copies B[p0:p0+kb, j0:j0+nb] into column panels of width nr: panel q
// holds, for each p, the nr values of columns q*nr.. (zero past the edge).
func (g *gemm) packB(dst []float32, p0, kb, j0, nb int) {
	if !g.transB {
		if nb%nr != 0 {
			clear(dst[(nb/nr)*nr*kb : roundUp(nb, nr)*kb])
		}
		for p := 0; p < kb; p++ {
			src := g.b[(p0+p)*g.ldb+j0 : (p0+p)*g.ldb+j0+nb]
			for jr := 0; jr < nb; jr += nr {
				cols := min(nr, nb-jr)
				copy(dst[jr*kb+p*nr:jr*kb+p*nr+cols], src[jr:jr+cols])
			}
		}
		return
	}
	// B(p,j) = b[j*ldb+p]: each column of a panel is a contiguous row of b.
	for jr := 0; jr < nb; jr += nr {
		panel := dst[jr*kb : jr*kb+nr*kb]
		cols := min(nr, nb-jr)
		if cols < nr {
			clear(panel)
		}
		cc := 0
		for ; cc+4 <= cols; cc += 4 { // four columns at a time: 16-byte writes
			j := j0 + jr + cc
			b0 := g.b[j*g.ldb+p0 : j*g.ldb+p0+kb]
			b1 := g.b[(j+1)*g.ldb+p0:][:len(b0)]
			b2 := g.b[(j+2)*g.ldb+p0:][:len(b0)]
			b3 := g.b[(j+3)*g.ldb+p0:][:len(b0)]
			for p := range b0 {
				d := (*[4]float32)(panel[p*nr+cc:])
				d[0], d[1], d[2], d[3] = b0[p], b1[p], b2[p], b3[p]
			}
		}
		for ; cc < cols; cc++ {
			src := g.b[(j0+jr+cc)*g.ldb+p0 : (j0+jr+cc)*g.ldb+p0+kb]
			for p, v := range src {
				panel[p*nr+cc] = v
			}
		}
	}
}

// microKernelGo adds the product of an mr×k packed panel of A and a k×nr
// packed panel of B into the mr×nr tile of C at c (row stride ldc), or
// stores it there when add is false.
func microKernelGo(k int, a, b, c []float32, ldc int, add bool) {
	var acc [mr][nr]float32
	a = a[:k*mr]
	b = b[:k*nr]
	for p := 0; p < k; p++ {
		bp := (*[nr]float32)(b[p*nr:])
		ap := (*[mr]float32)(a[p*mr:])
		for r := 0; r < mr; r++ {
			av := ap[r]
			row := &acc[r]
			for j := 0; j < nr; j++ {
				row[j] += av * bp[j]
			}
		}
	}
	for r := 0; r < mr; r++ {
		crow := c[r*ldc : r*ldc+nr]
		if !add {
			copy(crow, acc[r][:])
			continue
		}
		for j := range crow {
			crow[j] += acc[r][j]
		}
	}
}

// microKernelDirectGo is microKernelGo reading six rows of row-major A in
// place (row stride lda).
func microKernelDirectGo(k int, a []float32, lda int, b, c []float32, ldc int, add bool) {
	var acc [mr][nr]float32
	b = b[:k*nr]
	for p := 0; p < k; p++ {
		bp := (*[nr]float32)(b[p*nr:])
		for r := 0; r < mr; r++ {
			av := a[r*lda+p]
			row := &acc[r]
			for j := 0; j < nr; j++ {
				row[j] += av * bp[j]
			}
		}
	}
	for r := 0; r < mr; r++ {
		crow := c[r*ldc : r*ldc+nr]
		if !add {
			copy(crow, acc[r][:])
			continue
		}
		for j := range crow {
			crow[j] += acc[r][j]
		}
	}
}

// directMaxK is the longest k for which A is read in place.
var directMaxK = 64
