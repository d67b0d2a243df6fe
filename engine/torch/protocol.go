package torch

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"unsafe"
)

// The framed protocol between the node and its worker. A frame is a 16-byte
// little-endian header
//
//	magic u32 | version u16 | type u16 | id u32 | length u32
//
// and length bytes of payload:
//
//	meta_len u32 | meta (a JSON object) | count u32 | count × (dtype u32 | elems u32 | data)
//
// Tensors are flat little-endian float32 (dtype 1) or int32 (dtype 2)
// buffers. Senders pad the meta with spaces to a multiple of 4 bytes, so
// every tensor's data starts 4-byte aligned within the payload and both ends
// can view it in place instead of converting value by value. worker.py
// implements the other end.
const (
	frameMagic   uint32 = 0x57545753 // "SWTW"
	frameVersion uint16 = 2
	headerSize          = 16
	tensorHeader        = 8

	// MaxFrame bounds a frame's payload; MaxMeta its JSON part; MaxTensors
	// the number of buffers in one frame.
	MaxFrame   = 1 << 30
	MaxMeta    = 1 << 20
	MaxTensors = 16

	// firstRead is how much of a frame's declared length is allocated
	// before its bytes arrive; the buffer grows with them beyond that.
	firstRead = 8 << 20
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
	msgTakeLoss

	msgOK    uint16 = 64
	msgError uint16 = 65
)

const (
	dtypeF32 uint32 = 1
	dtypeI32 uint32 = 2
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

// bytes is the tensor's wire encoding: a view of its memory on a
// little-endian host, else a converted copy.
func (t tensor) bytes() []byte {
	if t.I != nil {
		return wireBytes(t.I, func(b []byte, v int32) { binary.LittleEndian.PutUint32(b, uint32(v)) })
	}
	return wireBytes(t.F, func(b []byte, v float32) { binary.LittleEndian.PutUint32(b, math.Float32bits(v)) })
}

// littleEndian: the host stores numbers as the wire does, so tensors cross
// as views of their memory.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// memBytes views a 4-byte-element slice's memory as bytes.
func memBytes[T float32 | int32](v []T) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 4*len(v))
}

func wireBytes[T float32 | int32](v []T, put func([]byte, T)) []byte {
	if littleEndian {
		return memBytes(v)
	}
	b := make([]byte, 4*len(v))
	for i, x := range v {
		put(b[4*i:], x)
	}
	return b
}

// fromWire decodes n 4-byte values of b. On a little-endian host with b
// 4-byte aligned the result aliases b; otherwise it is converted.
func fromWire[T float32 | int32](b []byte, n int, get func([]byte) T) []T {
	if n == 0 {
		return []T{}
	}
	if littleEndian && uintptr(unsafe.Pointer(unsafe.SliceData(b)))%4 == 0 {
		return unsafe.Slice((*T)(unsafe.Pointer(unsafe.SliceData(b))), n)
	}
	v := make([]T, n)
	for i := range v {
		v[i] = get(b[4*i:])
	}
	return v
}

// frame is a decoded message. Its tensors may alias the frame's own buffer,
// which belongs to the frame alone.
type frame struct {
	Type    uint16
	ID      uint32
	Meta    map[string]any
	Tensors []tensor
}

// encodeFrame writes one frame to w: the header, meta and small tensors in
// one write, each large tensor straight from its memory.
func encodeFrame(w io.Writer, typ uint16, id uint32, meta any, tensors []tensor) error {
	if meta == nil {
		meta = struct{}{}
	}
	mb, err := json.Marshal(meta)
	if err != nil {
		return fmt.Errorf("encode meta: %w", err)
	}
	for len(mb)%4 != 0 {
		mb = append(mb, ' ')
	}
	if len(mb) > MaxMeta {
		return fmt.Errorf("%w: meta of %d bytes over %d", ErrProtocol, len(mb), MaxMeta)
	}
	if len(tensors) > MaxTensors {
		return fmt.Errorf("%w: %d tensors over %d", ErrProtocol, len(tensors), MaxTensors)
	}
	size := 4 + len(mb) + 4
	for _, t := range tensors {
		size += tensorHeader + 4*t.len()
	}
	if size > MaxFrame {
		return fmt.Errorf("%w: frame of %d bytes over %d", ErrProtocol, size, MaxFrame)
	}
	const inline = 64 << 10 // tensors up to this size are copied into the head write
	buf := make([]byte, headerSize, headerSize+8+len(mb)+len(tensors)*tensorHeader+inline)
	binary.LittleEndian.PutUint32(buf[0:], frameMagic)
	binary.LittleEndian.PutUint16(buf[4:], frameVersion)
	binary.LittleEndian.PutUint16(buf[6:], typ)
	binary.LittleEndian.PutUint32(buf[8:], id)
	binary.LittleEndian.PutUint32(buf[12:], uint32(size))
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(mb)))
	buf = append(buf, mb...)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(tensors)))
	for _, t := range tensors {
		dt := dtypeF32
		if t.isInt() {
			dt = dtypeI32
		}
		buf = binary.LittleEndian.AppendUint32(buf, dt)
		buf = binary.LittleEndian.AppendUint32(buf, uint32(t.len()))
		data := t.bytes()
		if len(buf)+len(data) <= cap(buf) {
			buf = append(buf, data...)
			continue
		}
		if _, err := w.Write(buf); err != nil {
			return err
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
		buf = buf[:0]
	}
	if len(buf) > 0 {
		_, err = w.Write(buf)
	}
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
	n := int(binary.LittleEndian.Uint32(h[12:]))
	if n > MaxFrame {
		return nil, fmt.Errorf("%w: frame of %d bytes over %d", ErrProtocol, n, MaxFrame)
	}
	// Allocate up to firstRead up front, then grow with the bytes that
	// arrive rather than trusting a large length.
	body := make([]byte, min(n, firstRead))
	got := 0
	for {
		k, err := io.ReadFull(r, body[got:])
		got += k
		if err != nil {
			return nil, fmt.Errorf("%w: truncated frame (%d of %d bytes): %v", ErrProtocol, got, n, err)
		}
		if got == n {
			break
		}
		more := min(n-got, got)
		body = slices.Grow(body, more)[:got+more]
	}
	f, err := decodePayload(body)
	if err != nil {
		return nil, err
	}
	f.Type = binary.LittleEndian.Uint16(h[6:])
	f.ID = binary.LittleEndian.Uint32(h[8:])
	return f, nil
}

// decodePayload decodes a frame's payload; every length is checked against
// the bytes present before it is used. The tensors may alias b.
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
		if len(b)-off < tensorHeader {
			return nil, fmt.Errorf("%w: tensor %d header past the end", ErrProtocol, i)
		}
		dt := binary.LittleEndian.Uint32(b[off:])
		n := binary.LittleEndian.Uint32(b[off+4:])
		off += tensorHeader
		if uint64(n)*4 > uint64(len(b)-off) {
			return nil, fmt.Errorf("%w: tensor %d of %d values past the end", ErrProtocol, i, n)
		}
		data := b[off : off+4*int(n) : off+4*int(n)]
		var t tensor
		switch dt {
		case dtypeF32:
			t.F = fromWire(data, int(n), func(b []byte) float32 { return math.Float32frombits(binary.LittleEndian.Uint32(b)) })
		case dtypeI32:
			t.I = fromWire(data, int(n), func(b []byte) int32 { return int32(binary.LittleEndian.Uint32(b)) })
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
