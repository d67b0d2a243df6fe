// Package fvec checks float32 vectors for NaN and ±Inf: the engines'
// gradients, the averaging's inputs and parts, the trainer's averaged
// gradient. Every value a peer sends passes through it, so it is written to
// run several values a cycle.
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
