package sparseq

import (
	"fmt"
	"math"

	"github.com/swarm-train/swarm/internal/kth"
)

// Compressor sparsifies and quantizes successive vectors of one length with
// error feedback: what a vector loses (the values not kept, and the
// rounding of those kept) is added to the next vector before it is
// compressed, so nothing is lost for good, only delayed.
type Compressor struct {
	keep     float64
	bits     int
	residual []float32
	mag      []float32 // scratch for the selection
}

// NewCompressor keeps a fraction keep (0 < keep ≤ 1) of each vector's
// values, the largest in magnitude, quantized to bits (one of Bits).
func NewCompressor(keep float64, bits int) (*Compressor, error) {
	if !(keep > 0 && keep <= 1) {
		return nil, fmt.Errorf("sparseq: keep %v is outside (0, 1]", keep)
	}
	if !ValidBits(bits) {
		return nil, fmt.Errorf("sparseq: %d bits is not one of %v", bits, Bits)
	}
	return &Compressor{keep: keep, bits: bits}, nil
}

// Bits is the compressor's bit width.
func (c *Compressor) Bits() int { return c.bits }

// Kept is how many of n values a vector keeps.
func (c *Compressor) Kept(n int) int { return max(1, min(n, int(math.Ceil(c.keep*float64(n))))) }

// Compress replaces v by its compressed form, v + the residual of the
// previous vectors, sparsified to Kept(len(v)) values and quantized as
// Encode would; the difference becomes the new residual. A vector of
// another length than the last one's starts from a zero residual.
func (c *Compressor) Compress(v []float32) {
	n := len(v)
	if len(c.residual) != n {
		c.residual = make([]float32, n)
		c.mag = make([]float32, n)
	}
	for i := range v {
		v[i] += c.residual[i]
		c.mag[i] = float32(math.Abs(float64(v[i])))
	}
	thr := kth.Largest(c.mag, c.Kept(n))
	kept := 0
	limit := c.Kept(n)
	for i, x := range v {
		// Values above the threshold, and ties up to the budget; zeros
		// never (a zero threshold keeps only nonzero values).
		ax := float32(math.Abs(float64(x)))
		c.residual[i] = x
		if ax > thr || (ax == thr && ax > 0 && kept < limit) {
			kept++
			continue
		}
		v[i] = 0
	}
	Quantize(v, c.bits)
	for i, x := range v {
		c.residual[i] -= x
	}
}

// Residual is what has not been sent yet (read-only).
func (c *Compressor) Residual() []float32 { return c.residual }

// Reset forgets the residual (a node that took another's state).
func (c *Compressor) Reset() { clear(c.residual) }
