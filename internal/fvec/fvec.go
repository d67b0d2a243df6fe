// Package fvec holds the checks and sums over float32 vectors that the
// engine, the averaging and the trainer share: NaN and ±Inf (every value a
// peer sends passes through them, so they run several values a cycle) and
// the sum of squares behind gradient and part norms.
package fvec

import (
	"math"
	"unsafe"
)

// A float32 is NaN or ±Inf when its exponent bits are all ones. Masked to
// its exponent and added 1<<23, such a value carries into bit 31 and no other
// does; two values side by side in a uint64 do not carry into each other.
const (
	exp  = 0x7f800000
	one  = 0x00800000
	exp2 = exp<<32 | exp
	one2 = one<<32 | one
	top2 = 1<<63 | 1<<31
)

// block is how many values AllFinite checks between early exits.
const block = 1024

// AllFinite reports whether every value of v is finite.
func AllFinite(v []float32) bool {
	for len(v) > 0 {
		n := min(len(v), block)
		if !allFinite(v[:n]) {
			return false
		}
		v = v[n:]
	}
	return true
}

// FirstNonFinite returns the index of the first NaN or ±Inf in v, or -1.
func FirstNonFinite(v []float32) int {
	for i := 0; i < len(v); i += block {
		b := v[i:min(i+block, len(v))]
		if allFinite(b) {
			continue
		}
		for j, x := range b {
			if math.Float32bits(x)&exp == exp {
				return i + j
			}
		}
	}
	return -1
}

func allFinite(v []float32) bool {
	var acc uint64
	n := len(v) &^ 7
	if n > 0 {
		// Pairs of values as uint64s: amd64 and arm64 load them at any
		// alignment; elsewhere the loop below takes every value.
		if unaligned {
			w := unsafe.Slice((*uint64)(unsafe.Pointer(&v[0])), n/2)
			for k := 0; k < len(w); k += 4 {
				acc |= (w[k]&exp2 + one2) | (w[k+1]&exp2 + one2) | (w[k+2]&exp2 + one2) | (w[k+3]&exp2 + one2)
			}
		} else {
			n = 0
		}
	}
	for _, x := range v[n:] {
		acc |= uint64(math.Float32bits(x)&exp + one)
	}
	return acc&top2 == 0
}

// SumSquares is Σ x² in float64, in four independent sums (one chain of
// additions would wait on each add's latency), combined as (s0+s1)+(s2+s3).
// Each product is converted explicitly so that no architecture fuses it into
// the addition: every peer gets the same bits, which audits compare.
func SumSquares(x []float32) float64 {
	var s0, s1, s2, s3 float64
	j := 0
	for ; j+4 <= len(x); j += 4 {
		a, b, c, d := float64(x[j]), float64(x[j+1]), float64(x[j+2]), float64(x[j+3])
		s0 += float64(a * a)
		s1 += float64(b * b)
		s2 += float64(c * c)
		s3 += float64(d * d)
	}
	for ; j < len(x); j++ {
		s0 += float64(float64(x[j]) * float64(x[j]))
	}
	return (s0 + s1) + (s2 + s3)
}
