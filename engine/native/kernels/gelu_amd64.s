//go:build amd64 && !purego

#include "textflag.h"

// Vectorised GELU (tanh form) as x·σ(−v), v = −2·√(2/π)·(x + 0.044715·x³),
// with e^v from a Cody-Waite reduction and a degree-7 polynomial.

DATA gA<>+0(SB)/4, $0xbfcc422a
DATA gA<>+4(SB)/4, $0xbfcc422a
DATA gA<>+8(SB)/4, $0xbfcc422a
DATA gA<>+12(SB)/4, $0xbfcc422a
DATA gA<>+16(SB)/4, $0xbfcc422a
DATA gA<>+20(SB)/4, $0xbfcc422a
DATA gA<>+24(SB)/4, $0xbfcc422a
DATA gA<>+28(SB)/4, $0xbfcc422a
GLOBL gA<>(SB), RODATA|NOPTR, $32
DATA gB<>+0(SB)/4, $0xbd922279
DATA gB<>+4(SB)/4, $0xbd922279
DATA gB<>+8(SB)/4, $0xbd922279
DATA gB<>+12(SB)/4, $0xbd922279
DATA gB<>+16(SB)/4, $0xbd922279
DATA gB<>+20(SB)/4, $0xbd922279
DATA gB<>+24(SB)/4, $0xbd922279
DATA gB<>+28(SB)/4, $0xbd922279
GLOBL gB<>(SB), RODATA|NOPTR, $32
DATA dA<>+0(SB)/4, $0x3fcc422a
DATA dA<>+4(SB)/4, $0x3fcc422a
DATA dA<>+8(SB)/4, $0x3fcc422a
DATA dA<>+12(SB)/4, $0x3fcc422a
DATA dA<>+16(SB)/4, $0x3fcc422a
DATA dA<>+20(SB)/4, $0x3fcc422a
DATA dA<>+24(SB)/4, $0x3fcc422a
DATA dA<>+28(SB)/4, $0x3fcc422a
GLOBL dA<>(SB), RODATA|NOPTR, $32
DATA dB<>+0(SB)/4, $0x3e5b33b6
DATA dB<>+4(SB)/4, $0x3e5b33b6
DATA dB<>+8(SB)/4, $0x3e5b33b6
DATA dB<>+12(SB)/4, $0x3e5b33b6
DATA dB<>+16(SB)/4, $0x3e5b33b6
DATA dB<>+20(SB)/4, $0x3e5b33b6
DATA dB<>+24(SB)/4, $0x3e5b33b6
DATA dB<>+28(SB)/4, $0x3e5b33b6
GLOBL dB<>(SB), RODATA|NOPTR, $32
DATA vhi<>+0(SB)/4, $0x42ae0000
DATA vhi<>+4(SB)/4, $0x42ae0000
DATA vhi<>+8(SB)/4, $0x42ae0000
DATA vhi<>+12(SB)/4, $0x42ae0000
DATA vhi<>+16(SB)/4, $0x42ae0000
DATA vhi<>+20(SB)/4, $0x42ae0000
DATA vhi<>+24(SB)/4, $0x42ae0000
DATA vhi<>+28(SB)/4, $0x42ae0000
GLOBL vhi<>(SB), RODATA|NOPTR, $32
DATA vlo<>+0(SB)/4, $0xc2ae0000
DATA vlo<>+4(SB)/4, $0xc2ae0000
DATA vlo<>+8(SB)/4, $0xc2ae0000
DATA vlo<>+12(SB)/4, $0xc2ae0000
DATA vlo<>+16(SB)/4, $0xc2ae0000
DATA vlo<>+20(SB)/4, $0xc2ae0000
DATA vlo<>+24(SB)/4, $0xc2ae0000
DATA vlo<>+28(SB)/4, $0xc2ae0000
GLOBL vlo<>(SB), RODATA|NOPTR, $32
DATA log2e<>+0(SB)/4, $0x3fb8aa3b
DATA log2e<>+4(SB)/4, $0x3fb8aa3b
DATA log2e<>+8(SB)/4, $0x3fb8aa3b
DATA log2e<>+12(SB)/4, $0x3fb8aa3b
DATA log2e<>+16(SB)/4, $0x3fb8aa3b
DATA log2e<>+20(SB)/4, $0x3fb8aa3b
DATA log2e<>+24(SB)/4, $0x3fb8aa3b
DATA log2e<>+28(SB)/4, $0x3fb8aa3b
GLOBL log2e<>(SB), RODATA|NOPTR, $32
DATA ln2hi<>+0(SB)/4, $0x3f318000
DATA ln2hi<>+4(SB)/4, $0x3f318000
DATA ln2hi<>+8(SB)/4, $0x3f318000
DATA ln2hi<>+12(SB)/4, $0x3f318000
DATA ln2hi<>+16(SB)/4, $0x3f318000
DATA ln2hi<>+20(SB)/4, $0x3f318000
DATA ln2hi<>+24(SB)/4, $0x3f318000
DATA ln2hi<>+28(SB)/4, $0x3f318000
GLOBL ln2hi<>(SB), RODATA|NOPTR, $32
DATA ln2lo<>+0(SB)/4, $0xb95e8083
DATA ln2lo<>+4(SB)/4, $0xb95e8083
DATA ln2lo<>+8(SB)/4, $0xb95e8083
DATA ln2lo<>+12(SB)/4, $0xb95e8083
DATA ln2lo<>+16(SB)/4, $0xb95e8083
DATA ln2lo<>+20(SB)/4, $0xb95e8083
DATA ln2lo<>+24(SB)/4, $0xb95e8083
DATA ln2lo<>+28(SB)/4, $0xb95e8083
GLOBL ln2lo<>(SB), RODATA|NOPTR, $32
DATA one<>+0(SB)/4, $0x3f800000
DATA one<>+4(SB)/4, $0x3f800000
DATA one<>+8(SB)/4, $0x3f800000
DATA one<>+12(SB)/4, $0x3f800000
DATA one<>+16(SB)/4, $0x3f800000
DATA one<>+20(SB)/4, $0x3f800000
DATA one<>+24(SB)/4, $0x3f800000
DATA one<>+28(SB)/4, $0x3f800000
GLOBL one<>(SB), RODATA|NOPTR, $32
DATA p0<>+0(SB)/4, $0x3f800000
DATA p0<>+4(SB)/4, $0x3f800000
DATA p0<>+8(SB)/4, $0x3f800000
DATA p0<>+12(SB)/4, $0x3f800000
DATA p0<>+16(SB)/4, $0x3f800000
DATA p0<>+20(SB)/4, $0x3f800000
DATA p0<>+24(SB)/4, $0x3f800000
DATA p0<>+28(SB)/4, $0x3f800000
GLOBL p0<>(SB), RODATA|NOPTR, $32
DATA p1<>+0(SB)/4, $0x3f800000
DATA p1<>+4(SB)/4, $0x3f800000
DATA p1<>+8(SB)/4, $0x3f800000
DATA p1<>+12(SB)/4, $0x3f800000
DATA p1<>+16(SB)/4, $0x3f800000
DATA p1<>+20(SB)/4, $0x3f800000
DATA p1<>+24(SB)/4, $0x3f800000
DATA p1<>+28(SB)/4, $0x3f800000
GLOBL p1<>(SB), RODATA|NOPTR, $32
DATA p2<>+0(SB)/4, $0x3f000000
DATA p2<>+4(SB)/4, $0x3f000000
DATA p2<>+8(SB)/4, $0x3f000000
DATA p2<>+12(SB)/4, $0x3f000000
DATA p2<>+16(SB)/4, $0x3f000000
DATA p2<>+20(SB)/4, $0x3f000000
DATA p2<>+24(SB)/4, $0x3f000000
DATA p2<>+28(SB)/4, $0x3f000000
GLOBL p2<>(SB), RODATA|NOPTR, $32
DATA p3<>+0(SB)/4, $0x3e2aaaab
DATA p3<>+4(SB)/4, $0x3e2aaaab
DATA p3<>+8(SB)/4, $0x3e2aaaab
DATA p3<>+12(SB)/4, $0x3e2aaaab
DATA p3<>+16(SB)/4, $0x3e2aaaab
DATA p3<>+20(SB)/4, $0x3e2aaaab
DATA p3<>+24(SB)/4, $0x3e2aaaab
DATA p3<>+28(SB)/4, $0x3e2aaaab
GLOBL p3<>(SB), RODATA|NOPTR, $32
DATA p4<>+0(SB)/4, $0x3d2aaaab
DATA p4<>+4(SB)/4, $0x3d2aaaab
DATA p4<>+8(SB)/4, $0x3d2aaaab
DATA p4<>+12(SB)/4, $0x3d2aaaab
DATA p4<>+16(SB)/4, $0x3d2aaaab
DATA p4<>+20(SB)/4, $0x3d2aaaab
DATA p4<>+24(SB)/4, $0x3d2aaaab
DATA p4<>+28(SB)/4, $0x3d2aaaab
GLOBL p4<>(SB), RODATA|NOPTR, $32
DATA p5<>+0(SB)/4, $0x3c088889
DATA p5<>+4(SB)/4, $0x3c088889
DATA p5<>+8(SB)/4, $0x3c088889
DATA p5<>+12(SB)/4, $0x3c088889
DATA p5<>+16(SB)/4, $0x3c088889
DATA p5<>+20(SB)/4, $0x3c088889
DATA p5<>+24(SB)/4, $0x3c088889
DATA p5<>+28(SB)/4, $0x3c088889
GLOBL p5<>(SB), RODATA|NOPTR, $32
DATA p6<>+0(SB)/4, $0x3ab60b61
DATA p6<>+4(SB)/4, $0x3ab60b61
DATA p6<>+8(SB)/4, $0x3ab60b61
DATA p6<>+12(SB)/4, $0x3ab60b61
DATA p6<>+16(SB)/4, $0x3ab60b61
DATA p6<>+20(SB)/4, $0x3ab60b61
DATA p6<>+24(SB)/4, $0x3ab60b61
DATA p6<>+28(SB)/4, $0x3ab60b61
GLOBL p6<>(SB), RODATA|NOPTR, $32
DATA p7<>+0(SB)/4, $0x39500d01
DATA p7<>+4(SB)/4, $0x39500d01
DATA p7<>+8(SB)/4, $0x39500d01
DATA p7<>+12(SB)/4, $0x39500d01
DATA p7<>+16(SB)/4, $0x39500d01
DATA p7<>+20(SB)/4, $0x39500d01
DATA p7<>+24(SB)/4, $0x39500d01
DATA p7<>+28(SB)/4, $0x39500d01
GLOBL p7<>(SB), RODATA|NOPTR, $32
DATA bias<>+0(SB)/4, $127
DATA bias<>+4(SB)/4, $127
DATA bias<>+8(SB)/4, $127
DATA bias<>+12(SB)/4, $127
DATA bias<>+16(SB)/4, $127
DATA bias<>+20(SB)/4, $127
DATA bias<>+24(SB)/4, $127
DATA bias<>+28(SB)/4, $127
GLOBL bias<>(SB), RODATA|NOPTR, $32

// EXPV: Y2 holds v (clamped); leaves 1 + e^v in Y5. Uses Y3, Y4, Y6.
#define EXPV \
	VMULPS log2e<>(SB), Y2, Y3; \
	VROUNDPS $0, Y3, Y3; \
	VMOVAPS Y2, Y4; \
	VFNMADD231PS ln2hi<>(SB), Y3, Y4; \
	VFNMADD231PS ln2lo<>(SB), Y3, Y4; \
	VMOVUPS p7<>(SB), Y5; \
	VFMADD213PS p6<>(SB), Y4, Y5; \
	VFMADD213PS p5<>(SB), Y4, Y5; \
	VFMADD213PS p4<>(SB), Y4, Y5; \
	VFMADD213PS p3<>(SB), Y4, Y5; \
	VFMADD213PS p2<>(SB), Y4, Y5; \
	VFMADD213PS p1<>(SB), Y4, Y5; \
	VFMADD213PS p0<>(SB), Y4, Y5; \
	VCVTPS2DQ Y3, Y6; \
	VPADDD bias<>(SB), Y6, Y6; \
	VPSLLD $23, Y6, Y6; \
	VMULPS Y6, Y5, Y5; \
	VADDPS one<>(SB), Y5, Y5

// VARG: x in Y0; sets Y1 = x², Y2 = clamp(x·(A + B·x²)).
#define VARG \
	VMULPS Y0, Y0, Y1; \
	VMOVUPS gB<>(SB), Y2; \
	VFMADD213PS gA<>(SB), Y1, Y2; \
	VMULPS Y0, Y2, Y2; \
	VMINPS vhi<>(SB), Y2, Y2; \
	VMAXPS vlo<>(SB), Y2, Y2

// func geluAVX2(dst, src *float32, n int)  (n a multiple of 8)
TEXT ·geluAVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $3, CX
	JEQ gdone
gloop:
	VMOVUPS (SI), Y0
	VARG
	EXPV
	VDIVPS Y5, Y0, Y7
	VMOVUPS Y7, (DI)
	ADDQ $32, SI
	ADDQ $32, DI
	DECQ CX
	JNZ gloop
gdone:
	VZEROUPPER
	RET

// func geluBackwardAVX2(d, x *float32, n int)  (n a multiple of 8)
TEXT ·geluBackwardAVX2(SB), NOSPLIT, $0-24
	MOVQ d+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $3, CX
	JEQ bdone
bloop:
	VMOVUPS (SI), Y0
	VARG
	EXPV
	VMOVUPS one<>(SB), Y7
	VDIVPS Y5, Y7, Y7
	VMOVUPS dB<>(SB), Y8
	VFMADD213PS dA<>(SB), Y1, Y8
	VMOVUPS one<>(SB), Y9
	VSUBPS Y7, Y9, Y9
	VMULPS Y7, Y9, Y9
	VMULPS Y0, Y9, Y9
	VFMADD213PS Y7, Y8, Y9
	VMULPS (DI), Y9, Y9
	VMOVUPS Y9, (DI)
	ADDQ $32, SI
	ADDQ $32, DI
	DECQ CX
	JNZ bloop
bdone:
	VZEROUPPER
	RET

// func expShiftAVX2(x *float32, n int, scale, shift float32) float32
// x[i] = e^(x[i]·scale − shift) in place for n a multiple of 8; returns the sum.
TEXT ·expShiftAVX2(SB), NOSPLIT, $0-28
	MOVQ x+0(FP), SI
	MOVQ n+8(FP), CX
	VBROADCASTSS scale+16(FP), Y8
	VBROADCASTSS shift+20(FP), Y9
	VXORPS Y10, Y10, Y10
	SHRQ $3, CX
	JEQ edone
eloop:
	VMOVUPS (SI), Y2
	VMULPS Y8, Y2, Y2
	VSUBPS Y9, Y2, Y2
	VMINPS vhi<>(SB), Y2, Y2
	VMAXPS vlo<>(SB), Y2, Y2
	EXPV
	VSUBPS one<>(SB), Y5, Y5
	VMOVUPS Y5, (SI)
	VADDPS Y5, Y10, Y10
	ADDQ $32, SI
	DECQ CX
	JNZ eloop
edone:
	VEXTRACTF128 $1, Y10, X11
	VADDPS X11, X10, X10
	VHADDPS X10, X10, X10
	VHADDPS X10, X10, X10
	MOVSS X10, ret+24(FP)
	VZEROUPPER
	RET
