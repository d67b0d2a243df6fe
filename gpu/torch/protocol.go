package torch

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
)

// The framed protocol between the node and its worker. A frame is a 16-byte
// little-endian header
//
//	magic u32 | version u16 | type u16 | id u32 | length u32
//
// and length bytes of payload:
//
//	meta_len u32 | meta (a JSON object) | count u32 | count × (dtype u8 | elems u32 | data)
//
// Tensors are flat little-endian float32 (dtype 1) or int32 (dtype 2)
// buffers. worker.py implements the other end.
const (
	frameMagic   uint32 = 0x57545753 // "SWTW"
	frameVersion uint16 = 1
	headerSize          = 16

	// MaxFrame bounds a frame's payload; MaxMeta its JSON part; MaxTensors
	// the number of buffers in one frame.
	MaxFrame   = 1 << 30
	MaxMeta    = 1 << 20
	MaxTensors = 16
)

// Message types. Requests go node → worker; every request gets one reply,
// msgOK or msgError, carrying the request's id.
const (
	msgInit uint16 = iota + 1
	msgForward
	msgBackward
	msgRelease
	msgZeroGrad
	msgGradNorm
	msgStep
	msgGetState
	msgSetState
	msgShutdown
	msgPing

	msgOK    uint16 = 64
	msgError uint16 = 65
)

const (
	dtypeF32 byte = 1
	dtypeI32 byte = 2
)

// ErrProtocol: a frame that does not follow the protocol.
var ErrProtocol = errors.New("torch: protocol error")

// tensor is one buffer of a frame: exactly one of F and I is set.
type tensor struct {
	F []float32
	I []int32
}

func f32(v []float32) tensor { return tensor{F: v} }
func i32(v []int32) tensor   { return tensor{I: v} }

func (t tensor) isInt() bool { return t.I != nil }

func (t tensor) len() int {
	if t.I != nil {
		return len(t.I)
	}
	return len(t.F)
}

// frame is a decoded message.
type frame struct {
	Type    uint16
	ID      uint32
	Meta    map[string]any
	Tensors []tensor
}

// encodeFrame writes one frame to w.
func encodeFrame(w io.Writer, typ uint16, id uint32, meta any, tensors []tensor) error {
	if meta == nil {
		meta = struct{}{}
	}
	mb, err := json.Marshal(meta)
	if err != nil {
		return fmt.Errorf("encode meta: %w", err)
	}
	if len(mb) > MaxMeta {
		return fmt.Errorf("%w: meta of %d bytes over %d", ErrProtocol, len(mb), MaxMeta)
	}
	if len(tensors) > MaxTensors {
		return fmt.Errorf("%w: %d tensors over %d", ErrProtocol, len(tensors), MaxTensors)
	}
	size := 4 + len(mb) + 4
	for _, t := range tensors {
		size += 5 + 4*t.len()
	}
	if size > MaxFrame {
		return fmt.Errorf("%w: frame of %d bytes over %d", ErrProtocol, size, MaxFrame)
	}
	buf := make([]byte, headerSize+size)
	binary.LittleEndian.PutUint32(buf[0:], frameMagic)
	binary.LittleEndian.PutUint16(buf[4:], frameVersion)
	binary.LittleEndian.PutUint16(buf[6:], typ)
	binary.LittleEndian.PutUint32(buf[8:], id)
	binary.LittleEndian.PutUint32(buf[12:], uint32(size))
	off := headerSize
	binary.LittleEndian.PutUint32(buf[off:], uint32(len(mb)))
	off += 4
	off += copy(buf[off:], mb)
	binary.LittleEndian.PutUint32(buf[off:], uint32(len(tensors)))
	off += 4
	for _, t := range tensors {
		if t.isInt() {
			buf[off] = dtypeI32
		} else {
			buf[off] = dtypeF32
		}
		binary.LittleEndian.PutUint32(buf[off+1:], uint32(t.len()))
		off += 5
		if t.isInt() {
			for _, v := range t.I {
				binary.LittleEndian.PutUint32(buf[off:], uint32(v))
				off += 4
			}
		} else {
			for _, v := range t.F {
				binary.LittleEndian.PutUint32(buf[off:], math.Float32bits(v))
				off += 4
			}
		}
	}
	_, err = w.Write(buf)
	return err
}

// readFrame reads and decodes one frame from r.
func readFrame(r io.Reader) (*frame, error) {
	var h [headerSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	if m := binary.LittleEndian.Uint32(h[0:]); m != frameMagic {
		return nil, fmt.Errorf("%w: bad magic %#x", ErrProtocol, m)
	}
	if v := binary.LittleEndian.Uint16(h[4:]); v != frameVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrProtocol, v, frameVersion)
	}
	n := binary.LittleEndian.Uint32(h[12:])
	if n > MaxFrame {
		return nil, fmt.Errorf("%w: frame of %d bytes over %d", ErrProtocol, n, MaxFrame)
	}
	// Grow with the bytes that arrive rather than trusting the length up front.
	var body bytes.Buffer
	body.Grow(int(min(n, 1<<20)))
	if got, err := body.ReadFrom(io.LimitReader(r, int64(n))); err != nil || got != int64(n) {
		return nil, fmt.Errorf("%w: truncated frame (%d of %d bytes): %v", ErrProtocol, got, n, err)
	}
	f, err := decodePayload(body.Bytes())
	if err != nil {
		return nil, err
	}
	f.Type = binary.LittleEndian.Uint16(h[6:])
	f.ID = binary.LittleEndian.Uint32(h[8:])
	return f, nil
}

// decodePayload decodes a frame's payload; every length is checked against
// the bytes present before it is used.
func decodePayload(b []byte) (*frame, error) {
	if len(b) < 8 {
		return nil, fmt.Errorf("%w: payload of %d bytes is too short", ErrProtocol, len(b))
	}
	ml := binary.LittleEndian.Uint32(b)
	if ml > MaxMeta || uint64(ml)+8 > uint64(len(b)) {
		return nil, fmt.Errorf("%w: meta length %d does not fit the %d-byte payload", ErrProtocol, ml, len(b))
	}
	f := &frame{}
	if err := json.Unmarshal(b[4:4+ml], &f.Meta); err != nil {
		return nil, fmt.Errorf("%w: meta: %v", ErrProtocol, err)
	}
	if f.Meta == nil {
		return nil, fmt.Errorf("%w: meta is not a JSON object", ErrProtocol)
	}
	off := 4 + int(ml)
	count := binary.LittleEndian.Uint32(b[off:])
	off += 4
	if count > MaxTensors {
		return nil, fmt.Errorf("%w: %d tensors over %d", ErrProtocol, count, MaxTensors)
	}
	for i := 0; i < int(count); i++ {
		if len(b)-off < 5 {
			return nil, fmt.Errorf("%w: tensor %d header past the end", ErrProtocol, i)
		}
		dt := b[off]
		n := binary.LittleEndian.Uint32(b[off+1:])
		off += 5
		if uint64(n)*4 > uint64(len(b)-off) {
			return nil, fmt.Errorf("%w: tensor %d of %d values past the end", ErrProtocol, i, n)
		}
		var t tensor
		switch dt {
		case dtypeF32:
			t.F = make([]float32, n)
			for j := range t.F {
				t.F[j] = math.Float32frombits(binary.LittleEndian.Uint32(b[off+4*j:]))
			}
		case dtypeI32:
			t.I = make([]int32, n)
			for j := range t.I {
				t.I[j] = int32(binary.LittleEndian.Uint32(b[off+4*j:]))
			}
		default:
			return nil, fmt.Errorf("%w: tensor %d has unknown dtype %d", ErrProtocol, i, dt)
		}
		off += 4 * int(n)
		f.Tensors = append(f.Tensors, t)
	}
	if off != len(b) {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrProtocol, len(b)-off)
	}
	return f, nil
}

// metaFloat reads a number from a reply's meta.
func (f *frame) metaFloat(key string) (float64, error) {
	v, ok := f.Meta[key].(float64)
	if !ok {
		return 0, fmt.Errorf("%w: reply lacks numeric %q", ErrProtocol, key)
	}
	return v, nil
}

func (f *frame) metaString(key string) string {
	s, _ := f.Meta[key].(string)
	return s
}
