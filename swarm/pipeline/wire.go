// Package pipeline moves micro-batches through the shards of a run, SWARM
// parallelism style: a holder of shard i sends its output activations to a
// holder of shard i+1 chosen by stochastic wiring, the last shard computes
// the loss, and the gradient comes back along the same path in the answer.
// This file is the wire format; balancer.go chooses peers.
package pipeline

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"

	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/swarm-train/swarm/internal/bf16"
	"github.com/swarm-train/swarm/internal/fvec"
	"github.com/swarm-train/swarm/internal/guard"
)

// Protocol: one request and one response per stream; after a training
// answer that carries a receipt (the stage credits the sender), the sender
// writes an acknowledgement (its own receipt crediting the stage, or an
// empty one) before it closes.
const Protocol protocol.ID = "/swarm/train/pipeline/1.2.0"

// MaxReceipt bounds a receipt in an answer or an acknowledgement (the
// swarm/credit wire form).
const MaxReceipt = 2048

// Precisions of a block of floats on the wire. Each block names its own,
// so a decoder reads either; senders use the run's (training.activations).
const (
	FP32 uint8 = 0 // 4 bytes a value, exact
	BF16 uint8 = 1 // 2 bytes a value: float32's range, 8 significant bits, rounded to nearest even
	// INT8: blocks of Int8Block values, each a float32 scale (the block's
	// largest magnitude / 127) and one signed byte a value, rounded to
	// nearest: 1.06 bytes a value, an error of at most half a step of the
	// block's scale.
	INT8 uint8 = 2
	// TOPK: a bitmap of the block's values that are sent (value i when bit
	// i%8 of byte i/8 is set), then those values in bf16; the others are
	// zero. Senders mark each sample's largest magnitudes (TopMask), so
	// the receiver's forward pass sees the sample with the rest zeroed,
	// and the gradient that comes back needs only the marked places
	// (MASKED). Post-ReLU activations, mostly zero, lose nothing else.
	TOPK uint8 = 3
	// MASKED: only in a response, for the gradient of a TOPK request: the
	// values at the places the request's bitmap marks, in bf16, the rest
	// zero. It is the exact gradient of the network the sender computed,
	// whose activations outside its mask were zeroed before they left.
	MASKED uint8 = 4
)

// Int8Block is how many values of an INT8 block share one scale.
const Int8Block = 64

// Kinds of request.
const (
	KindTrain = 1 // forward, then backward; the response carries the gradient
	KindEval  = 2 // forward only; the response carries the loss and correct count
)

// Response codes.
const (
	CodeOK         = 0
	CodeBusy       = 1 // overloaded or between epochs: try another peer
	CodeWrongRun   = 2 // the peer does not hold that shard of that run (anymore)
	CodeStale      = 3 // the request's epoch is behind the peer's
	CodeBadInput   = 4 // the request failed validation (the sender gets banned)
	CodeDownstream = 5 // a later stage failed
	CodeInternal   = 6
)

// Limits bound the values a request may declare, checked before its body
// is read: the receiving stage derives them from the run's layout (the
// micro-batch it accepts × the width of its input boundary), so a peer's
// declared count never sizes a buffer beyond what the run implies.
type Limits struct {
	Act     int // activation values
	Targets int // targets
	Kept    int // values a TOPK activation block may mark as sent
}

// ErrOversize marks a block that declares more values than allowed.
var ErrOversize = errors.New("pipeline: declared size over the limit")

// ErrNonFinite marks activations or gradients holding NaN or Inf.
var ErrNonFinite = errors.New("pipeline: non-finite value")

// Request carries a micro-batch to the holder of Shard.
type Request struct {
	Kind    uint8
	Shard   uint32 // the shard that should process it
	Epoch   uint64
	ID      uint64 // micro-batch id, for logs
	N       uint32 // samples
	Act     []float32
	Targets []int32
	// Precision of Act on the wire (FP32, BF16, INT8 or TOPK); after
	// decoding, the precision it was sent in.
	Precision uint8
	// Mask is, for TOPK, which values of Act are sent (TopMask; nil: the
	// non-zero ones); after decoding a TOPK block, the block's bitmap.
	Mask Mask
}

// Response answers a Request.
type Response struct {
	Code    uint8
	Msg     string
	Loss    float32
	Correct uint32    // eval: correctly classified samples
	Grad    []float32 // train: gradient w.r.t. the request's Act
	// Precision of Grad on the wire, as Request.Precision; TOPK sends
	// MASKED when Mask covers Grad.
	Precision uint8
	// Mask is the answered TOPK request's (Request.Mask): the places the
	// gradient is sent at.
	Mask Mask
	// Receipt is the stage's signed receipt crediting the sender with the
	// micro-batch (swarm/credit wire form; empty: none).
	Receipt []byte
}

// appendFloats writes a float block: precision, count, values. For TOPK,
// mask marks the values sent (nil or not fitting v: the non-zero ones); for
// MASKED it fits v (Response.Encode sees to it).
func appendFloats(b []byte, v []float32, precision uint8, mask Mask) []byte {
	if precision == TOPK && !mask.fits(len(v)) {
		mask = TopMask(v, len(v), len(v))
	}
	b = append(b, precision)
	b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
	switch precision {
	case TOPK:
		b = append(b, mask...)
		return appendMasked(b, v, mask)
	case MASKED:
		return appendMasked(b, v, mask)
	case BF16:
		for _, x := range v {
			b = binary.LittleEndian.AppendUint16(b, bf16.From32(x))
		}
		return b
	case INT8:
		return appendInt8(b, v)
	}
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
	}
	return b
}

// appendInt8 writes v as INT8 blocks. A block holding NaN or Inf gets a
// non-finite scale, which the receiver refuses as ErrNonFinite.
func appendInt8(b []byte, v []float32) []byte {
	for start := 0; start < len(v); start += Int8Block {
		blk := v[start:min(start+Int8Block, len(v))]
		var amax float32
		finite := true
		for _, x := range blk {
			a := float32(math.Abs(float64(x)))
			if a != a || math.IsInf(float64(a), 0) {
				finite = false
			} else if a > amax {
				amax = a
			}
		}
		scale := amax / 127
		if !finite {
			scale = float32(math.NaN())
		}
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(scale))
		for _, x := range blk {
			q := float32(0)
			if scale > 0 && !math.IsInf(float64(scale), 0) {
				q = float32(math.RoundToEven(float64(x / scale)))
			}
			b = append(b, byte(int8(max(-127, min(127, q)))))
		}
	}
	return b
}

// appendMasked writes the values mask marks, in bf16.
func appendMasked(b []byte, v []float32, mask Mask) []byte {
	for i, m := range mask {
		for ; m != 0; m &= m - 1 {
			x := v[i*8+bits.TrailingZeros8(m)]
			b = binary.LittleEndian.AppendUint16(b, bf16.From32(x))
		}
	}
	return b
}

// wireSize is the encoded size of n values in precision p. For TOPK (the
// bitmap and the values) and MASKED (the values) it counts the values mask
// marks; with a mask that does not fit n, every value.
func wireSize(n int, p uint8, mask Mask) int {
	switch p {
	case TOPK, MASKED:
		vals := 2 * n
		if mask.fits(n) {
			vals = 2 * mask.Ones()
		}
		if p == TOPK {
			return maskLen(n) + vals
		}
		return vals
	case BF16:
		return 2 * n
	case INT8:
		return n + 4*((n+Int8Block-1)/Int8Block)
	}
	return 4 * n
}

// Encode returns the request's wire form.
func (r *Request) Encode() []byte {
	b := make([]byte, 0, 40+wireSize(len(r.Act), r.Precision, r.Mask)+4*len(r.Targets))
	b = append(b, r.Kind)
	b = binary.BigEndian.AppendUint32(b, r.Shard)
	b = binary.BigEndian.AppendUint64(b, r.Epoch)
	b = binary.BigEndian.AppendUint64(b, r.ID)
	b = binary.BigEndian.AppendUint32(b, r.N)
	b = appendFloats(b, r.Act, r.Precision, r.Mask)
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.Targets)))
	for _, t := range r.Targets {
		b = binary.BigEndian.AppendUint32(b, uint32(t))
	}
	return b
}

// Encode returns the response's wire form.
func (r *Response) Encode() []byte {
	b := make([]byte, 0, 26+len(r.Msg)+wireSize(len(r.Grad), r.Precision, r.Mask)+len(r.Receipt))
	b = append(b, r.Code)
	b = binary.BigEndian.AppendUint16(b, uint16(min(len(r.Msg), math.MaxUint16)))
	b = append(b, r.Msg[:min(len(r.Msg), math.MaxUint16)]...)
	b = binary.BigEndian.AppendUint32(b, math.Float32bits(r.Loss))
	b = binary.BigEndian.AppendUint32(b, r.Correct)
	p, mask := r.Precision, r.Mask
	switch {
	case p == MASKED && !mask.fits(len(r.Grad)):
		p = TOPK // no mask to follow: the bitmap goes along
	case p == TOPK && mask.fits(len(r.Grad)) && len(r.Grad) > 0:
		p = MASKED
	}
	b = appendFloats(b, r.Grad, p, mask)
	rc := r.Receipt
	if len(rc) > MaxReceipt {
		rc = nil // never sent: the reader would refuse the whole answer
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(rc)))
	return append(b, rc...)
}

// AppendAck appends an acknowledgement: a receipt's length and bytes (an
// empty one says "no receipt").
func AppendAck(b, receipt []byte) []byte {
	if len(receipt) > MaxReceipt {
		receipt = nil
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(receipt)))
	return append(b, receipt...)
}

// ReadAck reads an acknowledgement (at most MaxReceipt bytes of receipt).
func ReadAck(r io.Reader) ([]byte, error) {
	d := &reader{r: r}
	return d.receipt("acknowledgement")
}

type reader struct {
	r   io.Reader
	buf [8]byte
	err error
}

func (d *reader) read(n int) []byte {
	if d.err != nil {
		return d.buf[:n]
	}
	_, d.err = io.ReadFull(d.r, d.buf[:n])
	return d.buf[:n]
}
func (d *reader) u8() uint8   { return d.read(1)[0] }
func (d *reader) u16() uint16 { return binary.BigEndian.Uint16(d.read(2)) }
func (d *reader) u32() uint32 { return binary.BigEndian.Uint32(d.read(4)) }
func (d *reader) u64() uint64 { return binary.BigEndian.Uint64(d.read(8)) }

// floats reads a float block of at most limit values; a TOPK block marks
// at most kept of them, and a MASKED one follows mask (nil: refused). Its
// buffer grows only as bytes arrive, so a sender that declares the limit
// and stalls costs little.
func (d *reader) floats(what string, limit, kept int, mask Mask) ([]float32, uint8, Mask) {
	p := d.u8()
	n := d.u32()
	if d.err != nil {
		return nil, p, nil
	}
	if p > MASKED {
		d.err = fmt.Errorf("%s: unknown precision %d", what, p)
		return nil, p, nil
	}
	if int64(n) > int64(limit) {
		d.err = fmt.Errorf("%s: %d values, limit %d: %w", what, n, max(limit, 0), ErrOversize)
		return nil, p, nil
	}
	size := wireSize(int(n), p, nil)
	switch p {
	case TOPK:
		m, err := guard.ReadFull(d.r, maskLen(int(n)))
		if err != nil {
			d.err = fmt.Errorf("%s: bitmap: %w", what, err)
			return nil, p, nil
		}
		if err := Mask(m).check(int(n)); err != nil {
			d.err = fmt.Errorf("%s: %w", what, err)
			return nil, p, nil
		}
		ones := Mask(m).Ones()
		if ones > kept {
			d.err = fmt.Errorf("%s: bitmap marks %d values, limit %d: %w", what, ones, max(kept, 0), ErrOversize)
			return nil, p, nil
		}
		mask, size = m, 2*ones
	case MASKED:
		if mask == nil {
			d.err = fmt.Errorf("%s: a masked block with no bitmap to follow (only the answer to a TOPK request sends one)", what)
			return nil, p, nil
		}
		if len(mask) != maskLen(int(n)) {
			d.err = fmt.Errorf("%s: %d values in a masked block, but the request's bitmap covers %d", what, n, 8*len(mask))
			return nil, p, nil
		}
		size = 2 * mask.Ones()
	}
	raw, err := guard.ReadFull(d.r, size)
	if err != nil {
		d.err = fmt.Errorf("%s: %w", what, err)
		return nil, p, nil
	}
	out := make([]float32, n)
	switch p {
	case TOPK, MASKED:
		for i, m := range mask {
			for ; m != 0; m &= m - 1 {
				out[i*8+bits.TrailingZeros8(m)] = bf16.To32(binary.LittleEndian.Uint16(raw))
				raw = raw[2:]
			}
		}
		return out, p, mask
	case BF16:
		for i := range out {
			out[i] = bf16.To32(binary.LittleEndian.Uint16(raw[2*i:]))
		}
		return out, p, nil
	case INT8:
		for start := 0; start < len(out); start += Int8Block {
			scale := math.Float32frombits(binary.LittleEndian.Uint32(raw))
			raw = raw[4:]
			// A scale beyond float32's largest / 127 would decode to Inf.
			if !(scale >= 0 && scale <= math.MaxFloat32/127) {
				d.err = fmt.Errorf("%s: block at value %d has scale %g: %w", what, start, scale, ErrNonFinite)
				return nil, p, nil
			}
			blk := out[start:min(start+Int8Block, len(out))]
			for i := range blk {
				blk[i] = float32(int8(raw[i])) * scale
			}
			raw = raw[len(blk):]
		}
		return out, p, nil
	}
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return out, p, nil
}

// ReadRequest decodes one request. After the fixed header (kind, shard,
// epoch, id, samples) it calls limit, which returns what the body may
// declare for that header, or an error that refuses the request before
// any of its body is read.
func ReadRequest(r io.Reader, limit func(*Request) (Limits, error)) (*Request, error) {
	d := &reader{r: r}
	q := &Request{Kind: d.u8(), Shard: d.u32(), Epoch: d.u64(), ID: d.u64(), N: d.u32()}
	if d.err != nil {
		return nil, fmt.Errorf("pipeline request: %w", d.err)
	}
	if q.Kind != KindTrain && q.Kind != KindEval {
		return nil, fmt.Errorf("pipeline request: unknown kind %d", q.Kind)
	}
	lim, err := limit(q)
	if err != nil {
		return nil, fmt.Errorf("pipeline request: %w", err)
	}
	q.Act, q.Precision, q.Mask = d.floats("activations", lim.Act, lim.Kept, nil)
	n := d.u32()
	if d.err == nil && int64(n) > int64(lim.Targets) {
		d.err = fmt.Errorf("targets: %d values, limit %d: %w", n, max(lim.Targets, 0), ErrOversize)
	}
	if d.err == nil {
		raw, err := guard.ReadFull(r, 4*int(n))
		if err != nil {
			d.err = fmt.Errorf("targets: %w", err)
		} else {
			q.Targets = make([]int32, n)
			for i := range q.Targets {
				q.Targets[i] = int32(binary.BigEndian.Uint32(raw[4*i:]))
			}
		}
	}
	if d.err != nil {
		return nil, fmt.Errorf("pipeline request: %w", d.err)
	}
	return q, nil
}

// ReadResponse decodes one response whose gradient holds at most maxGrad
// values (the caller knows: as many as the activations it sent).
func ReadResponse(r io.Reader, maxGrad int) (*Response, error) {
	return ReadMaskedResponse(r, maxGrad, nil)
}

// ReadMaskedResponse is ReadResponse for the answer to a request whose
// activations were sent TOPK with mask: a MASKED gradient follows it.
func ReadMaskedResponse(r io.Reader, maxGrad int, mask Mask) (*Response, error) {
	d := &reader{r: r}
	p := &Response{Code: d.u8()}
	n := d.u16()
	if d.err == nil {
		msg, err := guard.ReadFull(r, int(n))
		if err != nil {
			d.err = err
		}
		p.Msg = string(msg)
	}
	p.Loss = math.Float32frombits(d.u32())
	p.Correct = d.u32()
	p.Grad, p.Precision, p.Mask = d.floats("gradient", maxGrad, maxGrad, mask)
	if p.Precision != MASKED {
		p.Mask = nil // a TOPK gradient's own bitmap: not a request's
	}
	if p.Receipt, d.err = d.receipt("receipt"); d.err != nil {
		return nil, fmt.Errorf("pipeline response: %w", d.err)
	}
	return p, nil
}

// receipt reads a receipt block: u16 length (at most MaxReceipt), bytes.
func (d *reader) receipt(what string) ([]byte, error) {
	n := d.u16()
	if d.err != nil {
		return nil, d.err
	}
	if int(n) > MaxReceipt {
		return nil, fmt.Errorf("%w: %s of %d bytes (at most %d)", ErrOversize, what, n, MaxReceipt)
	}
	if n == 0 {
		return nil, nil
	}
	return guard.ReadFull(d.r, int(n))
}

// Shape is what a stage expects of a request for it.
type Shape struct {
	ActPerSample     int // activation values per sample (0 on the first shard)
	TargetsPerSample int // targets per sample the request must carry (0 if none)
	Classes          int // targets must lie in [0, Classes)
	MaxN             int // largest micro-batch accepted
}

// Validate checks a request against the stage's shape.
func (s Shape) Validate(q *Request) error {
	if q.N == 0 || int(q.N) > s.MaxN {
		return fmt.Errorf("micro-batch of %d samples, want 1..%d", q.N, s.MaxN)
	}
	if want := int(q.N) * s.ActPerSample; len(q.Act) != want {
		return fmt.Errorf("%d activation values for %d samples, want %d", len(q.Act), q.N, want)
	}
	if want := int(q.N) * s.TargetsPerSample; len(q.Targets) != want {
		return fmt.Errorf("%d targets for %d samples, want %d", len(q.Targets), q.N, want)
	}
	for _, t := range q.Targets {
		if t < 0 || int(t) >= s.Classes {
			return fmt.Errorf("target %d outside [0, %d)", t, s.Classes)
		}
	}
	if !fvec.AllFinite(q.Act) {
		return fmt.Errorf("activations: %w", ErrNonFinite)
	}
	return nil
}
