package averaging

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"
	"unsafe"

	"github.com/swarm-train/swarm/internal/bf16"
	"github.com/swarm-train/swarm/internal/fvec"
	"github.com/swarm-train/swarm/internal/sparseq"
)

// littleEndian: raw float32 memory is already the CodecNone wire format.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// rawBytes views a float32 slice as its bytes (no copy).
func rawBytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
}

// halves views b as 16-bit wire values in memory order, where that is the
// wire's (little-endian) and b is 2-aligned; nil otherwise (and for an
// empty b). The bf16 codec's loops then move whole values with no byte
// shuffling or bounds check per value (encode 1.4x, decode 1.7x faster,
// BenchmarkCodec).
func halves(b []byte) []uint16 {
	if !littleEndian || len(b) < 2 || uintptr(unsafe.Pointer(&b[0]))%2 != 0 {
		return nil
	}
	return unsafe.Slice((*uint16)(unsafe.Pointer(&b[0])), len(b)/2)
}

// Codec selects how float32 values are encoded on the wire.
type Codec uint8

const (
	// CodecNone sends raw little-endian float32 (4 bytes per value, exact).
	CodecNone Codec = 0
	// CodecFP16 sends IEEE 754 half precision (2 bytes per value). Values are
	// rounded to nearest-even and clamped to ±65504; relative error ≤ 2^-11 for
	// |x| ≥ 2^-14, absolute error ≤ 2^-25 below that.
	CodecFP16 Codec = 1
	// CodecInt8 sends blockwise 8-bit quantisation: each block of Int8Block
	// values carries a float32 scale (absmax/127) and one int8 per value. The
	// error of each value is at most absmax(block)/254.
	CodecInt8 Codec = 2
	// CodecBF16 sends bfloat16 (2 bytes per value): float32's range, rounded
	// to nearest-even with relative error ≤ 2^-8 for every normal value.
	// Unlike fp16 and int8 it keeps the tiny gradient entries that Adam
	// rescales to full-size steps, so it is the one to use for gradients.
	CodecBF16 Codec = 3
	// CodecSparse8, CodecSparse4 and CodecSparse2 send sparse vectors
	// (package internal/sparseq): the nonzero values and their indices,
	// each value quantized to 8, 4 or 2 bits on a grid of its block's
	// largest magnitude (one float32 scale per sparseq.Block coordinates).
	// They are for local mode's compressed deltas (WithCompression): a
	// part's message grows with its nonzero values, up to about twice
	// CodecNone's size for a dense part. The all-reduce starts every share
	// on a multiple of sparseq.Block, so that, with a part size that is a
	// multiple of it too, every part's blocks are the vector's and values
	// quantized by sparseq.Compressor pass unchanged.
	CodecSparse8 Codec = 4
	CodecSparse4 Codec = 5
	CodecSparse2 Codec = 6
)

// SparseCodec is the sparse codec of the given bit width (sparseq.Bits).
func SparseCodec(bits int) (Codec, error) {
	switch bits {
	case 8:
		return CodecSparse8, nil
	case 4:
		return CodecSparse4, nil
	case 2:
		return CodecSparse2, nil
	}
	return 0, fmt.Errorf("%w: %d-bit sparse values (want one of %v)", ErrBadInput, bits, sparseq.Bits)
}

// sparseBits is the bit width of a sparse codec, or 0.
func (c Codec) sparseBits() int {
	switch c {
	case CodecSparse8:
		return 8
	case CodecSparse4:
		return 4
	case CodecSparse2:
		return 2
	}
	return 0
}

// Int8Block is the number of values sharing one scale in CodecInt8.
const Int8Block = 256

var errCodec = errors.New("averaging: bad encoded data")

func (c Codec) String() string {
	switch c {
	case CodecNone:
		return "none"
	case CodecFP16:
		return "fp16"
	case CodecInt8:
		return "int8"
	case CodecBF16:
		return "bf16"
	case CodecSparse8, CodecSparse4, CodecSparse2:
		return fmt.Sprintf("sparse%d", c.sparseBits())
	}
	return fmt.Sprintf("codec(%d)", uint8(c))
}

// ParseCodec maps "none", "bf16", "fp16" and "int8" to a Codec.
func ParseCodec(s string) (Codec, error) {
	switch s {
	case "", "none":
		return CodecNone, nil
	case "fp16":
		return CodecFP16, nil
	case "int8", "8bit":
		return CodecInt8, nil
	case "bf16":
		return CodecBF16, nil
	}
	return 0, fmt.Errorf("averaging: unknown compression %q (want none, bf16, fp16 or int8)", s)
}

func (c Codec) valid() bool { return c <= CodecSparse2 }

// EncodedLen is the number of bytes n values take in codec c; for the
// sparse codecs, the most they take.
func (c Codec) EncodedLen(n int) int {
	if b := c.sparseBits(); b > 0 {
		return sparseq.MaxLen(n, b)
	}
	switch c {
	case CodecFP16, CodecBF16:
		return 2 * n
	case CodecInt8:
		blocks := (n + Int8Block - 1) / Int8Block
		return 4*blocks + n
	}
	return 4 * n
}

// Encode appends the encoding of src to dst.
func (c Codec) Encode(dst []byte, src []float32) []byte {
	if b := c.sparseBits(); b > 0 {
		return sparseq.Encode(dst, src, b)
	}
	start := len(dst)
	need := c.EncodedLen(len(src))
	if cap(dst)-start < need {
		nd := make([]byte, start, start+need)
		copy(nd, dst)
		dst = nd
	}
	dst = dst[:start+need]
	out := dst[start:]
	switch c {
	case CodecFP16:
		for i, v := range src {
			binary.LittleEndian.PutUint16(out[2*i:], f32to16(v))
		}
	case CodecBF16:
		if o := halves(out); o != nil {
			o = o[:len(src)]
			for i, v := range src {
				o[i] = bf16.From32(v)
			}
			break
		}
		for i, v := range src {
			binary.LittleEndian.PutUint16(out[2*i:], bf16.From32(v))
		}
	case CodecInt8:
		for b := 0; b < len(src); b += Int8Block {
			blk := src[b:min(b+Int8Block, len(src))]
			var amax float32
			for _, v := range blk {
				amax = max(amax, v, -v)
			}
			scale := amax / 127
			binary.LittleEndian.PutUint32(out, math.Float32bits(scale))
			q := out[4 : 4+len(blk)]
			var inv float32
			if scale > 0 {
				inv = 1 / scale
			}
			for i, v := range blk {
				// Within [-127, 127] up to rounding; rounded here so that it is
				// never fused with the + 0.5 below (audits compare re-encoded bits).
				r := float32(v * inv)
				// Round half away from zero without math.Round's float64 trip.
				var n int32
				if r >= 0 {
					n = int32(r + 0.5)
				} else {
					n = int32(r - 0.5)
				}
				q[i] = byte(int8(max(-127, min(127, n))))
			}
			out = out[4+len(blk):]
		}
	default:
		if littleEndian {
			copy(out, rawBytes(src))
			break
		}
		for i, v := range src {
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(v))
		}
	}
	return dst
}

// Decode decodes exactly len(dst) values from src into dst. It fails if src
// has the wrong length or decodes to a non-finite value.
func (c Codec) Decode(dst []float32, src []byte) error {
	if !c.valid() {
		return fmt.Errorf("%w: unknown codec %d", errCodec, c)
	}
	if b := c.sparseBits(); b > 0 {
		// Every declared size is checked against len(dst) before a write.
		if err := sparseq.Decode(dst, src, b); err != nil {
			return fmt.Errorf("%w: %s: %v", errCodec, c, err)
		}
		return nil
	}
	if len(src) != c.EncodedLen(len(dst)) {
		return fmt.Errorf("%w: %d bytes for %d values in %s", errCodec, len(src), len(dst), c)
	}
	switch c {
	case CodecFP16:
		tab := halfTable()
		for i := range dst {
			dst[i] = tab[binary.LittleEndian.Uint16(src[2*i:])]
		}
	case CodecBF16:
		if h := halves(src); h != nil {
			h = h[:len(dst)]
			for i, v := range h {
				dst[i] = bf16.To32(v)
			}
			break
		}
		for i := range dst {
			dst[i] = bf16.To32(binary.LittleEndian.Uint16(src[2*i:]))
		}
	case CodecInt8:
		for b := 0; b < len(dst); b += Int8Block {
			blk := dst[b:min(b+Int8Block, len(dst))]
			scale := math.Float32frombits(binary.LittleEndian.Uint32(src))
			if !finite32(scale) || scale < 0 {
				return fmt.Errorf("%w: int8 block scale %v", errCodec, scale)
			}
			q := src[4 : 4+len(blk)]
			for i := range blk {
				blk[i] = float32(int8(q[i])) * scale
			}
			src = src[4+len(blk):]
		}
	default:
		if littleEndian {
			copy(rawBytes(dst), src)
			break
		}
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	}
	if i := fvec.FirstNonFinite(dst); i >= 0 {
		return fmt.Errorf("%w: value %d is %v", errNotFinite, i, dst[i])
	}
	return nil
}

var halfTab = sync.OnceValue(func() *[1 << 16]float32 {
	var t [1 << 16]float32
	for h := range t {
		t[h] = f16to32(uint16(h))
	}
	return &t
})

func halfTable() *[1 << 16]float32 { return halfTab() }

var errNotFinite = errors.New("averaging: non-finite value")

func finite32(v float32) bool {
	return !math.IsNaN(float64(v)) && !math.IsInf(float64(v), 0)
}

// f32to16 converts to IEEE half precision, rounding to nearest even and
// clamping finite values beyond the half range to ±65504.
func f32to16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff { // Inf or NaN
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7bff // clamp to max finite
	}
	if e <= 0 {
		if e < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint32(14 - e)
		half := mant >> shift
		rem := mant & (1<<shift - 1)
		mid := uint32(1) << (shift - 1)
		if rem > mid || (rem == mid && half&1 == 1) {
			half++
		}
		return sign | uint16(half)
	}
	half := uint32(e)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && half&1 == 1) {
		half++
	}
	if half >= 0x7c00 {
		return sign | 0x7bff
	}
	return sign | uint16(half)
}

func f16to32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp == 0:
		if mant == 0 {
			return math.Float32frombits(sign)
		}
		v := float32(mant) * (1.0 / (1 << 24))
		if sign != 0 {
			return -v
		}
		return v
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}
