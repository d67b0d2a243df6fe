package pipeline

import (
	"errors"
	"math"
	"math/bits"

	"github.com/swarm-train/swarm/internal/bf16"
	"github.com/swarm-train/swarm/internal/kth"
)

// Mask marks the values of a TOPK or MASKED block that are on the wire:
// value i when bit i%8 of byte i/8 is set; the values it leaves out are
// zero. Bits past the block's last value are clear.
type Mask []byte

// maskLen is the bytes of a mask over n values.
func maskLen(n int) int { return (n + 7) / 8 }

// Has reports whether value i is marked.
func (m Mask) Has(i int) bool { return m[i>>3]>>(i&7)&1 != 0 }

// Ones is the number of marked values.
func (m Mask) Ones() int {
	n := 0
	for _, b := range m {
		n += bits.OnesCount8(b)
	}
	return n
}

// check refuses a mask over n values with bits set past the last value.
func (m Mask) check(n int) error {
	if n%8 != 0 && m[len(m)-1]>>(n%8) != 0 {
		return errors.New("bitmap marks values past the block's end")
	}
	return nil
}

// fits reports whether m is a mask over exactly n values.
func (m Mask) fits(n int) bool { return len(m) == maskLen(n) && (n == 0 || m.check(n) == nil) }

// TopMask marks, in each row of width values of v, the keep values of
// largest magnitude among the non-zero ones (all of them when a row has
// no more than keep). NaN and Inf count as largest, so a sender's broken
// activations still reach the receiver, which refuses them. Ties at the
// threshold go to the earlier values. It costs O(len(v)) on average
// (quickselect on a scratch row).
func TopMask(v []float32, width, keep int) Mask {
	m := make(Mask, maskLen(len(v)))
	if width <= 0 || keep <= 0 {
		return m
	}
	mag := make([]uint32, width)
	for start := 0; start < len(v); start += width {
		row := v[start:min(start+width, len(v))]
		// The loops below are branch-free on the values, which are
		// zero or not, kept or not, at random: magnitudes are at most
		// 2³¹−1, so (a | −a) >> 31 is 1 for a non-zero a, and
		// (t − a) >> 31 is 1 for a > t.
		nz := 0
		for _, x := range row {
			a := magnitude(x)
			mag[nz] = a
			nz += int((a | -a) >> 31)
		}
		thr := uint32(0) // mark every non-zero value
		if nz > keep {
			thr = kth.Largest(mag[:nz], keep)
			// Values above the keep-th largest are marked below; values
			// equal to it, from the first, until keep are.
			ties := keep
			for _, x := range row {
				ties -= int((thr - magnitude(x)) >> 31)
			}
			for i, x := range row {
				if ties == 0 {
					break
				}
				if magnitude(x) == thr {
					j := start + i
					m[j>>3] |= 1 << (j & 7)
					ties--
				}
			}
		}
		for i, x := range row {
			j := start + i
			m[j>>3] |= byte((thr-magnitude(x))>>31) << (j & 7)
		}
	}
	return m
}

// magnitude orders values by |x| as their bits without the sign do: for
// non-negative floats the bit patterns sort as the values, Inf above every
// finite value and NaN above Inf. Zero (either sign) is 0.
func magnitude(x float32) uint32 { return math.Float32bits(x) &^ (1 << 31) }

// Received turns v, in place, into what the next stage receives of a TOPK
// block marking each row's keep largest values: the marked values rounded
// to bf16, the rest zero. A model trained with topk activations expects
// its boundaries so; running its shards in one process (sampling) applies
// this between them.
func Received(v []float32, width, keep int) {
	m := TopMask(v, width, keep)
	for i, x := range v {
		if m.Has(i) {
			v[i] = bf16.To32(bf16.From32(x))
		} else {
			v[i] = 0
		}
	}
}
