package averaging

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/fvec"
	"github.com/swarm-train/swarm/internal/guard"
)

// Wire format: every message is a frame [type u8][length u32 big-endian][payload].
// Payload fields are big-endian; strings and byte strings carry a u16 length.

// WireVersion is carried in every first message of a stream; a peer speaking
// another version is refused.
const WireVersion uint16 = 1

// Protocol IDs. The version in the ID changes with WireVersion.
const (
	ProtoMatch  = "/swarm/averaging/match/1.0.0"
	ProtoReduce = "/swarm/averaging/reduce/1.0.0"
	// ProtoReduceBulk is ProtoReduce behind internal/bulk's handshake: the
	// transfer moves to a direct TCP connection where both peers have a
	// bulk listener and the dialer reaches it, else stays on the stream.
	ProtoReduceBulk = "/swarm/averaging/reduce-bulk/1.0.0"
	ProtoGossip     = "/swarm/averaging/gossip/1.0.0"
)

type msgType uint8

const (
	tJoin msgType = iota + 1
	tJoinReply
	tBegin
	tDisband
	tReduceHeader
	tPart
	tAvgPart
	tGossipHeader
	tGossipReply
	tAck
	tStart
)

// MaxGroupSize bounds a group (contributor sets are bitmasks of this many bits).
const MaxGroupSize = 256

var (
	errFrameTooBig = errors.New("averaging: frame too large")
	errMalformed   = errors.New("averaging: malformed message")
)

// writeFrame writes one frame. It is not safe for concurrent use on one writer.
func writeFrame(w io.Writer, t msgType, payload []byte) error {
	var hdr [5]byte
	hdr[0] = byte(t)
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// writeFrame2 writes one frame whose payload is head followed by body,
// without copying body.
func writeFrame2(w io.Writer, t msgType, head, body []byte) error {
	hdr := make([]byte, 5, 5+len(head))
	hdr[0] = byte(t)
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(head)+len(body)))
	if _, err := w.Write(append(hdr, head...)); err != nil {
		return err
	}
	_, err := w.Write(body)
	return err
}

// readFrame reads one frame of at most maxSize payload bytes into buf and
// returns its type and payload. The length is the peer's word: a frame
// longer than buf is read into a buffer that grows only as its bytes arrive,
// so a peer that declares maxSize and sends nothing costs nothing.
func readFrame(r io.Reader, maxSize int, buf []byte) (msgType, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, buf, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if uint64(n) > uint64(max(maxSize, 0)) {
		return 0, buf, fmt.Errorf("%w: %d bytes (limit %d)", errFrameTooBig, n, maxSize)
	}
	if cap(buf) >= int(n) {
		buf = buf[:n]
		if _, err := io.ReadFull(r, buf); err != nil {
			return 0, buf, err
		}
		return msgType(hdr[0]), buf, nil
	}
	b, err := guard.ReadFull(r, int(n))
	if err != nil {
		return 0, buf, err
	}
	return msgType(hdr[0]), b, nil
}

// readPart reads one part frame (tPart or tAvgPart, want) of at most
// limit payload bytes whose contributor set is cb bytes, and decodes its
// values into dst, which must hold the part's length. Raw little-endian
// float32 parts are read straight into dst and checked there: no frame
// buffer, no second copy. Other codecs read the payload into buf (grown
// only as bytes arrive, as readFrame) and decode it. dst holds garbage
// after an error. The contributor set returned is a fresh copy.
//
// With sq (a reducer that checks norms, Config.NormK) it also sets *sq to
// Σ dst² (as sumSquares), and raw values are checked finite by that same
// pass (a finite float32's square is finite in float64, so the sum is
// finite exactly when every value is): one pass over the part, not two.
func readPart(r io.Reader, want msgType, codec Codec, limit, cb int, dst []float32, buf []byte, sq *float64) (h partHead, _ []byte, err error) {
	var hdr [5 + 6]byte
	if _, err := io.ReadFull(r, hdr[:5]); err != nil {
		return h, buf, err
	}
	size32 := binary.BigEndian.Uint32(hdr[1:5])
	h.Size = int(size32)
	switch {
	case uint64(size32) > uint64(max(limit, 0)):
		return h, buf, fmt.Errorf("%w: %d bytes (limit %d)", errFrameTooBig, size32, limit)
	case msgType(hdr[0]) != want:
		return h, buf, fmt.Errorf("%w: frame type %d, want %d", errMalformed, hdr[0], want)
	case h.Size < 6:
		return h, buf, fmt.Errorf("%w: part frame of %d bytes", errMalformed, h.Size)
	}
	if _, err := io.ReadFull(r, hdr[5:]); err != nil {
		return h, buf, err
	}
	h.Index = binary.BigEndian.Uint32(hdr[5:9])
	if cl := int(binary.BigEndian.Uint16(hdr[9:11])); cl != cb || h.Size < 6+cl {
		return h, buf, fmt.Errorf("%w: part %d names %d bytes of contributors, want %d", errMalformed, h.Index, cl, cb)
	}
	if cb > 0 {
		h.Contributors = make(bitset, cb)
		if _, err := io.ReadFull(r, h.Contributors); err != nil {
			return h, buf, err
		}
	}
	n := h.Size - 6 - cb
	if codec == CodecNone && littleEndian {
		if n != 4*len(dst) {
			return h, buf, fmt.Errorf("%w: %d bytes for %d values in %s", errCodec, n, len(dst), codec)
		}
		if _, err := io.ReadFull(r, rawBytes(dst)); err != nil {
			return h, buf, err
		}
		if sq != nil {
			*sq = fvec.SumSquares(dst)
		}
		// A finite sum clears every value; otherwise find the culprit.
		if sq == nil || math.IsNaN(*sq) || math.IsInf(*sq, 0) {
			if i := fvec.FirstNonFinite(dst); i >= 0 {
				return h, buf, fmt.Errorf("%w: value %d is %v", errNotFinite, i, dst[i])
			}
		}
		return h, buf, nil
	}
	if cap(buf) >= n {
		buf = buf[:n]
		if _, err := io.ReadFull(r, buf); err != nil {
			return h, buf, err
		}
	} else if buf, err = guard.ReadFull(r, n); err != nil {
		return h, buf, err
	}
	if err := codec.Decode(dst, buf); err != nil {
		return h, buf, err
	}
	if sq != nil {
		*sq = fvec.SumSquares(dst)
	}
	return h, buf, nil
}

// partHead is what readPart read besides the values: the part's index, its
// contributors and the frame's payload size.
type partHead struct {
	Index        uint32
	Contributors bitset
	Size         int
}

// enc is an append-only payload builder.
type enc struct{ b []byte }

func (e *enc) u8(v uint8)   { e.b = append(e.b, v) }
func (e *enc) u16(v uint16) { e.b = binary.BigEndian.AppendUint16(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *enc) f64(v float64) {
	e.u64(math.Float64bits(v))
}
func (e *enc) bytes(v []byte) {
	e.u16(uint16(len(v)))
	e.b = append(e.b, v...)
}
func (e *enc) str(v string) { e.bytes([]byte(v)) }

// dec reads a payload; the first error sticks.
type dec struct {
	b   []byte
	err error
}

func (d *dec) need(n int) bool {
	if d.err != nil {
		return false
	}
	if len(d.b) < n {
		d.err = fmt.Errorf("%w: truncated", errMalformed)
		return false
	}
	return true
}
func (d *dec) u8() uint8 {
	if !d.need(1) {
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}
func (d *dec) u16() uint16 {
	if !d.need(2) {
		return 0
	}
	v := binary.BigEndian.Uint16(d.b)
	d.b = d.b[2:]
	return v
}
func (d *dec) u32() uint32 {
	if !d.need(4) {
		return 0
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}
func (d *dec) u64() uint64 {
	if !d.need(8) {
		return 0
	}
	v := binary.BigEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}
func (d *dec) f64() float64 { return math.Float64frombits(d.u64()) }
func (d *dec) bytes() []byte {
	n := int(d.u16())
	if !d.need(n) {
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}
func (d *dec) peerID() peer.ID {
	b := d.bytes()
	if d.err != nil || len(b) == 0 {
		return ""
	}
	id, err := peer.IDFromBytes(b)
	if err != nil {
		d.err = fmt.Errorf("%w: peer id: %v", errMalformed, err)
		return ""
	}
	return id
}
func (d *dec) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", errMalformed, len(d.b))
	}
	return d.err
}

// groupKey names the set of peers that may be grouped together.
type groupKey struct {
	Key   string
	Round uint64
	Bits  uint32
}

func (k groupKey) String() string { return fmt.Sprintf("%s@%d.b%d", k.Key, k.Round, k.Bits) }

// joinRequest asks a peer to lead the sender.
type joinRequest struct {
	Version    uint16
	Group      groupKey
	Expiration int64 // unix nanoseconds; with the peer id, the total order of requests
	VecLen     uint64
	Bandwidth  float64
	Client     bool // cannot accept connections
	Codec      Codec
}

func (m *joinRequest) marshal() []byte {
	var e enc
	e.u16(m.Version)
	e.str(m.Group.Key)
	e.u64(m.Group.Round)
	e.u32(m.Group.Bits)
	e.u64(uint64(m.Expiration))
	e.u64(m.VecLen)
	e.f64(m.Bandwidth)
	var fl uint8
	if m.Client {
		fl = 1
	}
	e.u8(fl)
	e.u8(uint8(m.Codec))
	return e.b
}

func unmarshalJoinRequest(b []byte) (joinRequest, error) {
	d := dec{b: b}
	var m joinRequest
	m.Version = d.u16()
	m.Group.Key = string(d.bytes())
	m.Group.Round = d.u64()
	m.Group.Bits = d.u32()
	m.Expiration = int64(d.u64())
	m.VecLen = d.u64()
	m.Bandwidth = d.f64()
	fl := d.u8()
	m.Codec = Codec(d.u8())
	if err := d.done(); err != nil {
		return m, err
	}
	m.Client = fl&1 != 0
	if fl&^1 != 0 {
		return m, fmt.Errorf("%w: unknown flags %#x", errMalformed, fl)
	}
	if math.IsNaN(m.Bandwidth) || m.Bandwidth < 0 {
		return m, fmt.Errorf("%w: bandwidth %v", errMalformed, m.Bandwidth)
	}
	if !m.Codec.valid() {
		return m, fmt.Errorf("%w: codec %d", errMalformed, m.Codec)
	}
	return m, nil
}

// joinStatus is a leader's answer to a join request.
type joinStatus uint8

const (
	joinAccepted joinStatus = iota + 1
	rejectWrongKey
	rejectJunior    // the responder is later in the total order
	rejectFollowing // the responder follows Redirect
	rejectFull
	rejectNotLooking
	rejectMismatch // vector length, codec or version differ
	rejectGrouped  // the responder is already in a group for this round
)

func (s joinStatus) String() string {
	return [...]string{"?", "accepted", "wrong-key", "junior", "following", "full", "not-looking", "mismatch", "grouped"}[min(int(s), 8)]
}

type joinReply struct {
	Status     joinStatus
	Expiration int64
	Bits       uint32
	Redirect   peer.ID
}

func (m *joinReply) marshal() []byte {
	var e enc
	e.u8(uint8(m.Status))
	e.u64(uint64(m.Expiration))
	e.u32(m.Bits)
	e.bytes([]byte(m.Redirect))
	return e.b
}

func unmarshalJoinReply(b []byte) (joinReply, error) {
	d := dec{b: b}
	var m joinReply
	m.Status = joinStatus(d.u8())
	m.Expiration = int64(d.u64())
	m.Bits = d.u32()
	m.Redirect = d.peerID()
	if err := d.done(); err != nil {
		return m, err
	}
	if m.Status < joinAccepted || m.Status > rejectGrouped {
		return m, fmt.Errorf("%w: join status %d", errMalformed, m.Status)
	}
	return m, nil
}

// member is one peer of an assembled group.
type member struct {
	ID        peer.ID
	Bandwidth float64
	Client    bool
}

// groupInfo is what the leader sends to start a group.
type groupInfo struct {
	ID       [16]byte
	Members  []member
	Codec    Codec
	PartSize uint32 // values per part
	VecLen   uint64
}

func (g *groupInfo) index(p peer.ID) int {
	for i, m := range g.Members {
		if m.ID == p {
			return i
		}
	}
	return -1
}

func (g *groupInfo) ids() []peer.ID {
	out := make([]peer.ID, len(g.Members))
	for i, m := range g.Members {
		out[i] = m.ID
	}
	return out
}

func (m *groupInfo) marshal() []byte {
	var e enc
	e.b = append(e.b, m.ID[:]...)
	e.u16(uint16(len(m.Members)))
	for _, mb := range m.Members {
		e.bytes([]byte(mb.ID))
		e.f64(mb.Bandwidth)
		var fl uint8
		if mb.Client {
			fl = 1
		}
		e.u8(fl)
	}
	e.u8(uint8(m.Codec))
	e.u32(m.PartSize)
	e.u64(m.VecLen)
	return e.b
}

func unmarshalGroupInfo(b []byte) (groupInfo, error) {
	d := dec{b: b}
	var m groupInfo
	if d.need(16) {
		copy(m.ID[:], d.b[:16])
		d.b = d.b[16:]
	}
	n := int(d.u16())
	if n < 2 || n > MaxGroupSize {
		if d.err == nil {
			d.err = fmt.Errorf("%w: group of %d members", errMalformed, n)
		}
		return m, d.err
	}
	seen := make(map[peer.ID]bool, n)
	reducers := 0
	for i := 0; i < n && d.err == nil; i++ {
		var mb member
		mb.ID = d.peerID()
		mb.Bandwidth = d.f64()
		fl := d.u8()
		mb.Client = fl&1 != 0
		if d.err != nil {
			break
		}
		if mb.ID == "" || seen[mb.ID] {
			return m, fmt.Errorf("%w: empty or duplicate member %s", errMalformed, mb.ID)
		}
		if math.IsNaN(mb.Bandwidth) || math.IsInf(mb.Bandwidth, 0) || mb.Bandwidth < 0 {
			return m, fmt.Errorf("%w: member bandwidth %v", errMalformed, mb.Bandwidth)
		}
		if !mb.Client && mb.Bandwidth > 0 {
			reducers++
		}
		seen[mb.ID] = true
		m.Members = append(m.Members, mb)
	}
	m.Codec = Codec(d.u8())
	m.PartSize = d.u32()
	m.VecLen = d.u64()
	if err := d.done(); err != nil {
		return m, err
	}
	if !m.Codec.valid() || m.PartSize == 0 || reducers == 0 {
		return m, fmt.Errorf("%w: codec %d, part size %d, %d reducers", errMalformed, m.Codec, m.PartSize, reducers)
	}
	return m, nil
}

func marshalDisband(redirect peer.ID) []byte {
	var e enc
	e.bytes([]byte(redirect))
	return e.b
}

func unmarshalDisband(b []byte) (peer.ID, error) {
	d := dec{b: b}
	p := d.peerID()
	return p, d.done()
}

// reduceHeader opens a sender→reducer stream.
type reduceHeader struct {
	Version uint16
	Group   [16]byte
	Sender  uint16 // index in the group
	Weight  float64
	VecLen  uint64
	Codec   Codec
}

func (m *reduceHeader) marshal() []byte {
	var e enc
	e.u16(m.Version)
	e.b = append(e.b, m.Group[:]...)
	e.u16(m.Sender)
	e.f64(m.Weight)
	e.u64(m.VecLen)
	e.u8(uint8(m.Codec))
	return e.b
}

func unmarshalReduceHeader(b []byte) (reduceHeader, error) {
	d := dec{b: b}
	var m reduceHeader
	m.Version = d.u16()
	if d.need(16) {
		copy(m.Group[:], d.b[:16])
		d.b = d.b[16:]
	}
	m.Sender = d.u16()
	m.Weight = d.f64()
	m.VecLen = d.u64()
	m.Codec = Codec(d.u8())
	if err := d.done(); err != nil {
		return m, err
	}
	if !validWeight(m.Weight) {
		return m, fmt.Errorf("%w: weight %v", errMalformed, m.Weight)
	}
	return m, nil
}

func validWeight(w float64) bool { return w > 0 && !math.IsInf(w, 0) && !math.IsNaN(w) }

// partMsg carries one part: from a sender (Contributors empty) or the
// reducer's average back to a sender (Contributors is a bitmask over the group).
type partMsg struct {
	Index        uint32
	Contributors []byte
	Data         []byte // encoded with the round's codec
}

func (m *partMsg) appendTo(b []byte) []byte {
	return append(m.appendHead(b), m.Data...)
}

// appendHead appends the encoding of everything but Data, which follows it.
func (m *partMsg) appendHead(b []byte) []byte {
	e := enc{b: b}
	e.u32(m.Index)
	e.bytes(m.Contributors)
	return e.b
}

func unmarshalPart(b []byte) (partMsg, error) {
	d := dec{b: b}
	var m partMsg
	m.Index = d.u32()
	m.Contributors = d.bytes()
	if d.err != nil {
		return m, d.err
	}
	m.Data = d.b
	return m, nil
}

// gossipHeader opens a push-pull exchange.
type gossipHeader struct {
	Version uint16
	Key     string
	Round   uint64
	Weight  float64
	VecLen  uint64
	Codec   Codec
}

func (m *gossipHeader) marshal() []byte {
	var e enc
	e.u16(m.Version)
	e.str(m.Key)
	e.u64(m.Round)
	e.f64(m.Weight)
	e.u64(m.VecLen)
	e.u8(uint8(m.Codec))
	return e.b
}

func unmarshalGossipHeader(b []byte) (gossipHeader, error) {
	d := dec{b: b}
	var m gossipHeader
	m.Version = d.u16()
	m.Key = string(d.bytes())
	m.Round = d.u64()
	m.Weight = d.f64()
	m.VecLen = d.u64()
	m.Codec = Codec(d.u8())
	if err := d.done(); err != nil {
		return m, err
	}
	if !validWeight(m.Weight) || !m.Codec.valid() {
		return m, fmt.Errorf("%w: weight %v codec %d", errMalformed, m.Weight, m.Codec)
	}
	return m, nil
}

// bitset is a contributor set over group indices.
type bitset []byte

func newBitset(n int) bitset         { return make(bitset, (n+7)/8) }
func (b bitset) set(i int)           { b[i/8] |= 1 << (i % 8) }
func (b bitset) unset(i int)         { b[i/8] &^= 1 << (i % 8) }
func (b bitset) has(i int) bool      { return i/8 < len(b) && b[i/8]&(1<<(i%8)) != 0 }
func (b bitset) clone() bitset       { return append(bitset(nil), b...) }
func (b bitset) equal(o bitset) bool { return string(b) == string(o) }

// within reports whether every member of b is below n.
func (b bitset) within(n int) bool {
	for i := n; i < 8*len(b); i++ {
		if b.has(i) {
			return false
		}
	}
	return true
}

// rank is the number of members of b below i.
func (b bitset) rank(i int) int {
	r := 0
	for j := range i {
		if b.has(j) {
			r++
		}
	}
	return r
}
