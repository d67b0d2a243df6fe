//go:build amd64 && !purego

#include "textflag.h"

// One k step on a packed A panel: load 16 values of B, broadcast each of the
// 6 values of A and multiply-add into the 12 accumulators Y0..Y11 (row r in
// Y(2r), Y(2r+1)).
#define STEP(aoff, boff) \
	VMOVUPS boff(BX), Y12; \
	VMOVUPS (boff+32)(BX), Y13; \
	VBROADCASTSS (aoff+0)(AX), Y14; \
	VFMADD231PS Y12, Y14, Y0; \
	VFMADD231PS Y13, Y14, Y1; \
	VBROADCASTSS (aoff+4)(AX), Y15; \
	VFMADD231PS Y12, Y15, Y2; \
	VFMADD231PS Y13, Y15, Y3; \
	VBROADCASTSS (aoff+8)(AX), Y14; \
	VFMADD231PS Y12, Y14, Y4; \
	VFMADD231PS Y13, Y14, Y5; \
	VBROADCASTSS (aoff+12)(AX), Y15; \
	VFMADD231PS Y12, Y15, Y6; \
	VFMADD231PS Y13, Y15, Y7; \
	VBROADCASTSS (aoff+16)(AX), Y14; \
	VFMADD231PS Y12, Y14, Y8; \
	VFMADD231PS Y13, Y14, Y9; \
	VBROADCASTSS (aoff+20)(AX), Y15; \
	VFMADD231PS Y12, Y15, Y10; \
	VFMADD231PS Y13, Y15, Y11

// One k step reading A in place: six rows at AX, AX+R9, AX+2·R9, R11,
// R11+R9, R11+2·R9 (R9 = lda in bytes, R11 = AX + 3·R9).
#define STEPD(aoff, boff) \
	VMOVUPS boff(BX), Y12; \
	VMOVUPS (boff+32)(BX), Y13; \
	VBROADCASTSS aoff(AX), Y14; \
	VFMADD231PS Y12, Y14, Y0; \
	VFMADD231PS Y13, Y14, Y1; \
	VBROADCASTSS aoff(AX)(R9*1), Y15; \
	VFMADD231PS Y12, Y15, Y2; \
	VFMADD231PS Y13, Y15, Y3; \
	VBROADCASTSS aoff(AX)(R9*2), Y14; \
	VFMADD231PS Y12, Y14, Y4; \
	VFMADD231PS Y13, Y14, Y5; \
	VBROADCASTSS aoff(R11), Y15; \
	VFMADD231PS Y12, Y15, Y6; \
	VFMADD231PS Y13, Y15, Y7; \
	VBROADCASTSS aoff(R11)(R9*1), Y14; \
	VFMADD231PS Y12, Y14, Y8; \
	VFMADD231PS Y13, Y14, Y9; \
	VBROADCASTSS aoff(R11)(R9*2), Y15; \
	VFMADD231PS Y12, Y15, Y10; \
	VFMADD231PS Y13, Y15, Y11

// STORE writes the 6×16 tile to C at DI (row stride DX bytes): added to C
// when R8 is non-zero, over it otherwise.
#define STORE(lbl) \
	TESTQ R8, R8; \
	JEQ lbl; \
	VADDPS (DI), Y0, Y0; \
	VMOVUPS Y0, (DI); \
	VADDPS 32(DI), Y1, Y1; \
	VMOVUPS Y1, 32(DI); \
	ADDQ DX, DI; \
	VADDPS (DI), Y2, Y2; \
	VMOVUPS Y2, (DI); \
	VADDPS 32(DI), Y3, Y3; \
	VMOVUPS Y3, 32(DI); \
	ADDQ DX, DI; \
	VADDPS (DI), Y4, Y4; \
	VMOVUPS Y4, (DI); \
	VADDPS 32(DI), Y5, Y5; \
	VMOVUPS Y5, 32(DI); \
	ADDQ DX, DI; \
	VADDPS (DI), Y6, Y6; \
	VMOVUPS Y6, (DI); \
	VADDPS 32(DI), Y7, Y7; \
	VMOVUPS Y7, 32(DI); \
	ADDQ DX, DI; \
	VADDPS (DI), Y8, Y8; \
	VMOVUPS Y8, (DI); \
	VADDPS 32(DI), Y9, Y9; \
	VMOVUPS Y9, 32(DI); \
	ADDQ DX, DI; \
	VADDPS (DI), Y10, Y10; \
	VMOVUPS Y10, (DI); \
	VADDPS 32(DI), Y11, Y11; \
	VMOVUPS Y11, 32(DI); \
	VZEROUPPER; \
	RET; \
lbl: \
	VMOVUPS Y0, (DI); \
	VMOVUPS Y1, 32(DI); \
	ADDQ DX, DI; \
	VMOVUPS Y2, (DI); \
	VMOVUPS Y3, 32(DI); \
	ADDQ DX, DI; \
	VMOVUPS Y4, (DI); \
	VMOVUPS Y5, 32(DI); \
	ADDQ DX, DI; \
	VMOVUPS Y6, (DI); \
	VMOVUPS Y7, 32(DI); \
	ADDQ DX, DI; \
	VMOVUPS Y8, (DI); \
	VMOVUPS Y9, 32(DI); \
	ADDQ DX, DI; \
	VMOVUPS Y10, (DI); \
	VMOVUPS Y11, 32(DI); \
	VZEROUPPER; \
	RET

// func kern6x16(k int, a, b, c *float32, ldc int, add bool)
TEXT ·kern6x16(SB), NOSPLIT, $0-41
	MOVQ k+0(FP), CX
	MOVQ a+8(FP), AX
	MOVQ b+16(FP), BX
	MOVQ c+24(FP), DI
	MOVQ ldc+32(FP), DX
	MOVBQZX add+40(FP), R8
	SHLQ $2, DX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	VXORPS Y8, Y8, Y8
	VXORPS Y9, Y9, Y9
	VXORPS Y10, Y10, Y10
	VXORPS Y11, Y11, Y11
	CMPQ CX, $4
	JLT tail
loop4:
	STEP(0, 0)
	STEP(24, 64)
	STEP(48, 128)
	STEP(72, 192)
	ADDQ $96, AX
	ADDQ $256, BX
	SUBQ $4, CX
	CMPQ CX, $4
	JGE loop4
tail:
	TESTQ CX, CX
	JEQ store
loop1:
	STEP(0, 0)
	ADDQ $24, AX
	ADDQ $64, BX
	DECQ CX
	JNZ loop1
store:
	STORE(overwrite)

// func kern6x16Direct(k int, a *float32, lda int, b, c *float32, ldc int, add bool)
TEXT ·kern6x16Direct(SB), NOSPLIT, $0-49
	MOVQ k+0(FP), CX
	MOVQ a+8(FP), AX
	MOVQ lda+16(FP), R9
	SHLQ $2, R9
	LEAQ (AX)(R9*2), R11
	ADDQ R9, R11
	MOVQ b+24(FP), BX
	MOVQ c+32(FP), DI
	MOVQ ldc+40(FP), DX
	MOVBQZX add+48(FP), R8
	SHLQ $2, DX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	VXORPS Y8, Y8, Y8
	VXORPS Y9, Y9, Y9
	VXORPS Y10, Y10, Y10
	VXORPS Y11, Y11, Y11
	CMPQ CX, $4
	JLT dtail
dloop4:
	STEPD(0, 0)
	STEPD(4, 64)
	STEPD(8, 128)
	STEPD(12, 192)
	ADDQ $16, AX
	ADDQ $16, R11
	ADDQ $256, BX
	SUBQ $4, CX
	CMPQ CX, $4
	JGE dloop4
dtail:
	TESTQ CX, CX
	JEQ dstore
dloop:
	STEPD(0, 0)
	ADDQ $4, AX
	ADDQ $4, R11
	ADDQ $64, BX
	DECQ CX
	JNZ dloop
dstore:
	STORE(doverwrite)
