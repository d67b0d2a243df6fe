//go:build amd64 && !purego

#include "textflag.h"

// func adamwAVX2(p, grad, m, v *float32, n int, c *AdamWParams)  (n a multiple of 8)
// AdamWParams: Scale 0, Beta1 4, Beta2 8, Decay 12, StepSize 16, InvSqrtBC2 20, Eps 24.
TEXT ·adamwAVX2(SB), NOSPLIT, $0-48
	MOVQ p+0(FP), AX
	MOVQ grad+8(FP), BX
	MOVQ m+16(FP), CX
	MOVQ v+24(FP), DX
	MOVQ n+32(FP), SI
	MOVQ c+40(FP), R8
	VBROADCASTSS 0(R8), Y8   // scale
	VBROADCASTSS 4(R8), Y9   // β1
	VBROADCASTSS 8(R8), Y11  // β2
	VBROADCASTSS 12(R8), Y13 // decay
	VBROADCASTSS 16(R8), Y7  // step size
	VBROADCASTSS 20(R8), Y15 // 1/√bc2
	VBROADCASTSS 24(R8), Y14 // eps
	VBROADCASTSS adamOne<>(SB), Y10
	VSUBPS Y9, Y10, Y10      // 1−β1
	VBROADCASTSS adamOne<>(SB), Y12
	VSUBPS Y11, Y12, Y12     // 1−β2
	SHRQ $3, SI
	JEQ done
loop:
	VMOVUPS (BX), Y0
	VMULPS Y8, Y0, Y0        // g·scale
	VMULPS (CX), Y9, Y1      // β1·m
	VFMADD231PS Y10, Y0, Y1  // + (1−β1)·g
	VMOVUPS Y1, (CX)
	VMULPS Y0, Y0, Y2        // g²
	VMULPS (DX), Y11, Y3     // β2·v
	VFMADD231PS Y12, Y2, Y3  // + (1−β2)·g²
	VMOVUPS Y3, (DX)
	VSQRTPS Y3, Y3
	VMULPS Y15, Y3, Y3
	VADDPS Y14, Y3, Y3       // denominator
	VDIVPS Y3, Y1, Y1        // m / denominator
	VMULPS (AX), Y13, Y4     // p·decay
	VFNMADD231PS Y7, Y1, Y4  // − step·m/denominator
	VMOVUPS Y4, (AX)
	ADDQ $32, AX
	ADDQ $32, BX
	ADDQ $32, CX
	ADDQ $32, DX
	DECQ SI
	JNZ loop
done:
	VZEROUPPER
	RET

DATA adamOne<>+0(SB)/4, $0x3f800000
GLOBL adamOne<>(SB), RODATA|NOPTR, $4
