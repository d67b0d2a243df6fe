//go:build amd64 && !purego

#include "textflag.h"

// func meanDist8AVX2(m *float32, xs *[8]*float32, wb *[10][4]float64, n int, acc *[8][4]float64)
//
// For j in [0, n) (n a multiple of 4):
//   m[j] = float32(((((z + w0·x0[j]) + w1·x1[j]) + w2·x2[j]) + … + w7·x7[j]) / W)
// (products and sums in float64), then for every input i the float32
// difference d = xi[j] − m[j], its float32 square, added in float64 to lane
// j mod 4 of acc[i]. wb holds each weight, W and z broadcast to four lanes:
// z = −0 adds nothing (mean8's sum), z = +0 is the loop's sum from zero.
// Every lane is one chain of additions in the order of the Go loops
// (mean8, sqDist32), and no product is fused into an addition, so the bits
// are theirs. The loop takes eight coordinates at a time, as two groups of
// four whose means are independent chains; a last group of four follows.
//
// Registers: the inputs AX BX CX DX SI R8 R9 R13, m DI, wb R10, j R11, the
// values left R12; the sums Y0–Y7 (input i in Yi), the means Y8 and Y10, scratch Y9
// and Y11.

// ADDW(x, w, off, s, t): Ys += the four values at x[j+off/4] times the weight
// at w(R10), products and sum in float64.
#define ADDW(x, w, off, s, t) \
	VCVTPS2PD off(x)(R11*4), t; \
	VMULPD w(R10), t, t; \
	VADDPD t, s, s

// MEAN(off, s, t): Ys = the mean of the four coordinates from j+off/4. The
// first product is added to z (wb's last row), then the others in order.
#define MEAN(off, s, t) \
	VMOVUPD 288(R10), s; \
	ADDW(AX, 0, off, s, t); \
	ADDW(BX, 32, off, s, t); \
	ADDW(CX, 64, off, s, t); \
	ADDW(DX, 96, off, s, t); \
	ADDW(SI, 128, off, s, t); \
	ADDW(R8, 160, off, s, t); \
	ADDW(R9, 192, off, s, t); \
	ADDW(R13, 224, off, s, t); \
	VDIVPD 256(R10), s, s

// SQD(x, off, mx, t, ty, acc): Yacc += the float32 squares of x's four
// values at j+off/4 less the means in Xmx, in float64.
#define SQD(x, off, mx, t, ty, acc) \
	VMOVUPS off(x)(R11*4), t; \
	VSUBPS mx, t, t; \
	VMULPS t, t, t; \
	VCVTPS2PD t, ty; \
	VADDPD ty, acc, acc

// DIST(off, mx, t, ty): add each input's squared differences from the four
// means in Xmx (coordinates j+off/4 on) to its sums.
#define DIST(off, mx, t, ty) \
	SQD(AX, off, mx, t, ty, Y0); \
	SQD(BX, off, mx, t, ty, Y1); \
	SQD(CX, off, mx, t, ty, Y2); \
	SQD(DX, off, mx, t, ty, Y3); \
	SQD(SI, off, mx, t, ty, Y4); \
	SQD(R8, off, mx, t, ty, Y5); \
	SQD(R9, off, mx, t, ty, Y6); \
	SQD(R13, off, mx, t, ty, Y7)

TEXT ·meanDist8AVX2(SB), NOSPLIT, $0-40
	MOVQ m+0(FP), DI
	MOVQ xs+8(FP), R10
	MOVQ 0(R10), AX
	MOVQ 8(R10), BX
	MOVQ 16(R10), CX
	MOVQ 24(R10), DX
	MOVQ 32(R10), SI
	MOVQ 40(R10), R8
	MOVQ 48(R10), R9
	MOVQ 56(R10), R13
	MOVQ wb+16(FP), R10
	MOVQ n+24(FP), R12
	VXORPD Y0, Y0, Y0
	VXORPD Y1, Y1, Y1
	VXORPD Y2, Y2, Y2
	VXORPD Y3, Y3, Y3
	VXORPD Y4, Y4, Y4
	VXORPD Y5, Y5, Y5
	VXORPD Y6, Y6, Y6
	VXORPD Y7, Y7, Y7
	XORQ R11, R11

loop8:
	CMPQ R12, $8
	JLT last4
	MEAN(0, Y8, Y9)
	MEAN(16, Y10, Y11)
	VCVTPD2PSY Y8, X8
	VCVTPD2PSY Y10, X10
	VMOVUPS X8, (DI)(R11*4)
	VMOVUPS X10, 16(DI)(R11*4)
	DIST(0, X8, X9, Y9)
	DIST(16, X10, X11, Y11)
	ADDQ $8, R11
	SUBQ $8, R12
	JMP loop8

last4:
	CMPQ R12, $4
	JLT done
	MEAN(0, Y8, Y9)
	VCVTPD2PSY Y8, X8
	VMOVUPS X8, (DI)(R11*4)
	DIST(0, X8, X9, Y9)

done:
	MOVQ acc+32(FP), AX
	VMOVUPD Y0, 0(AX)
	VMOVUPD Y1, 32(AX)
	VMOVUPD Y2, 64(AX)
	VMOVUPD Y3, 96(AX)
	VMOVUPD Y4, 128(AX)
	VMOVUPD Y5, 160(AX)
	VMOVUPD Y6, 192(AX)
	VMOVUPD Y7, 224(AX)
	VZEROUPPER
	RET
