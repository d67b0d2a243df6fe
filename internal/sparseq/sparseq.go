// Package sparseq compresses pseudo-gradients (local mode's parameter
// deltas) for averaging: top-k sparsification with error feedback
// (Compressor) and a wire format for sparse vectors whose kept values are
// quantized to a few bits with one scale per block of coordinates (Encode,
// Decode).
//
// The format of n values, b bits a value (b in Bits), q = 2^(b-1) − 1:
//
//	uvarint K                    values sent (K ≤ n)
//	K × uvarint gap              first the index, then index − previous − 1
//	S × float32 scale            one per Block of coordinates holding a value, in order
//	⌈K·b/8⌉ bytes                codes c = v/scale + q in [0, 2q], b bits each, LSB first
//
// A value is (c − q) × scale. Blocks count from the first value of the
// encoded slice: callers that encode parts of one vector start the parts on
// multiples of Block, so that the blocks are the vector's and re-encoding a
// vector that Compressor produced gives back the same values.
package sparseq

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Block is the number of coordinates that share a scale.
const Block = 4096

// Bits are the supported bit widths of a kept value.
var Bits = []int{2, 4, 8}

// ValidBits reports whether b is in Bits.
func ValidBits(b int) bool { return b == 2 || b == 4 || b == 8 }

// ErrFormat is the error of a message that does not decode.
var ErrFormat = errors.New("sparseq: bad encoded data")

func qmax(bits int) int { return 1<<(bits-1) - 1 }

// MaxLen is the most bytes n values take at bits (every value kept).
func MaxLen(n, bits int) int {
	// A gap of g costs at most g+1 bytes of varint and covers g+1
	// coordinates, so the gaps together take at most n bytes.
	return binary.MaxVarintLen64 + n + 4*((n+Block-1)/Block) + (n*bits+7)/8
}

// blockScale is the scale of one block: its largest magnitude over q, or 0.
func blockScale(v []float32, q int) float32 {
	var amax float32
	for _, x := range v {
		amax = max(amax, x, -x)
	}
	return amax / float32(q)
}

// code rounds x/scale half away from zero into [-q, q].
func code(x, inv float32, q int) int {
	r := float32(x * inv)
	var n int
	if r >= 0 {
		n = int(r + 0.5)
	} else {
		n = int(r - 0.5)
	}
	return max(-q, min(q, n))
}

// Quantize replaces every value of v by what Decode(Encode(v)) gives: per
// Block, the values rounded to a grid of the block's largest magnitude ÷ q.
func Quantize(v []float32, bits int) {
	q := qmax(bits)
	for b := 0; b < len(v); b += Block {
		blk := v[b:min(b+Block, len(v))]
		s := blockScale(blk, q)
		if s == 0 {
			continue
		}
		inv := 1 / s
		for i, x := range blk {
			if x != 0 {
				blk[i] = float32(code(x, inv, q)) * s
			}
		}
	}
}

// Encode appends the encoding of src's values that do not round to zero.
func Encode(dst []byte, src []float32, bits int) []byte {
	if !ValidBits(bits) {
		panic(fmt.Sprintf("sparseq: %d bits", bits))
	}
	q := qmax(bits)
	k := 0
	eachSent(src, q, func(int, float32, bool, int) { k++ })
	dst = binary.AppendUvarint(dst, uint64(k))
	// The gaps, then one scale per block that sends a value, then the codes.
	prev := -1
	eachSent(src, q, func(i int, _ float32, _ bool, _ int) {
		dst = binary.AppendUvarint(dst, uint64(i-prev-1))
		prev = i
	})
	eachSent(src, q, func(_ int, s float32, first bool, _ int) {
		if first {
			dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(s))
		}
	})
	var acc uint32
	nacc := 0
	eachSent(src, q, func(_ int, _ float32, _ bool, c int) {
		acc |= uint32(c+q) << nacc
		nacc += bits
		if nacc >= 8 {
			dst = append(dst, byte(acc))
			acc >>= 8
			nacc -= 8
		}
	})
	if nacc > 0 {
		dst = append(dst, byte(acc))
	}
	return dst
}

// eachSent calls f, in order, for every value of src that is sent (its
// code at q is not zero) with its index, its block's scale, whether it is
// the first sent in its block, and its code.
func eachSent(src []float32, q int, f func(i int, scale float32, first bool, c int)) {
	for b := 0; b < len(src); b += Block {
		blk := src[b:min(b+Block, len(src))]
		s := blockScale(blk, q)
		if s == 0 {
			continue
		}
		inv := 1 / s
		first := true
		for i, x := range blk {
			if x == 0 {
				continue
			}
			if c := code(x, inv, q); c != 0 {
				f(b+i, s, first, c)
				first = false
			}
		}
	}
}

// Decode decodes src into exactly len(dst) values (zero where none was
// sent). It checks every declared size against len(dst) and the length of
// src before it writes, and allocates nothing.
func Decode(dst []float32, src []byte, bits int) error {
	if !ValidBits(bits) {
		return fmt.Errorf("%w: %d bits", ErrFormat, bits)
	}
	n := len(dst)
	k, m := binary.Uvarint(src)
	if m <= 0 {
		return fmt.Errorf("%w: no value count", ErrFormat)
	}
	if k > uint64(n) {
		return fmt.Errorf("%w: %d values declared for a part of %d", ErrFormat, k, n)
	}
	gaps := src[m:]
	// Pass 1: the indices are in range and increasing; count the blocks.
	off, idx, blocks, lastBlock := 0, -1, 0, -1
	for range k {
		g, m := binary.Uvarint(gaps[off:])
		if m <= 0 {
			return fmt.Errorf("%w: truncated index", ErrFormat)
		}
		off += m
		if g >= uint64(n-idx-1) { // the next index, idx+1+g, must be below n
			return fmt.Errorf("%w: index past %d", ErrFormat, n)
		}
		idx += int(g) + 1
		if idx/Block != lastBlock {
			lastBlock = idx / Block
			blocks++
		}
	}
	rest := gaps[off:]
	codes := (int(k)*bits + 7) / 8
	if len(rest) != 4*blocks+codes {
		return fmt.Errorf("%w: %d bytes after the indices, want %d for %d values in %d blocks", ErrFormat, len(rest), 4*blocks+codes, k, blocks)
	}
	scales, packed := rest[:4*blocks], rest[4*blocks:]
	for i := range blocks {
		s := math.Float32frombits(binary.LittleEndian.Uint32(scales[4*i:]))
		if !(s > 0) || math.IsInf(float64(s), 0) {
			return fmt.Errorf("%w: block scale %v", ErrFormat, s)
		}
	}
	// Pass 2: write.
	clear(dst)
	q := qmax(bits)
	mask := uint32(1)<<bits - 1
	off, idx, lastBlock = 0, -1, -1
	si := -1
	var acc uint32
	nacc, pi := 0, 0
	for range k {
		g, m := binary.Uvarint(gaps[off:])
		off += m
		idx += int(g) + 1
		if idx/Block != lastBlock {
			lastBlock = idx / Block
			si++
		}
		if nacc < bits {
			acc |= uint32(packed[pi]) << nacc
			pi++
			nacc += 8
		}
		c := int(acc & mask)
		acc >>= bits
		nacc -= bits
		if c > 2*q {
			return fmt.Errorf("%w: code %d of a %d-bit value", ErrFormat, c, bits)
		}
		s := math.Float32frombits(binary.LittleEndian.Uint32(scales[4*si:]))
		v := float32(c-q) * s
		if math.IsInf(float64(v), 0) {
			return fmt.Errorf("%w: value %d overflows", ErrFormat, idx)
		}
		dst[idx] = v
	}
	return nil
}
