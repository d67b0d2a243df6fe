package redteam

import (
	"encoding/binary"
	"encoding/json"
	"math"
)

// Hand-written encoders of each protocol's messages. They check nothing:
// every field is the caller's to choose.

// PipelineHeader is a pipeline request up to the activation block: kind,
// shard, epoch, id, samples, then the block's precision and declared count.
// The body (values, targets) is left to the caller.
func PipelineHeader(kind uint8, shard uint32, epoch, id uint64, n uint32, precision uint8, count uint32) []byte {
	b := []byte{kind}
	b = binary.BigEndian.AppendUint32(b, shard)
	b = binary.BigEndian.AppendUint64(b, epoch)
	b = binary.BigEndian.AppendUint64(b, id)
	b = binary.BigEndian.AppendUint32(b, n)
	b = append(b, precision)
	return binary.BigEndian.AppendUint32(b, count)
}

// PipelineRequest is a whole request with n samples of zero activations
// (fp32) and targets of class 0.
func PipelineRequest(kind uint8, shard uint32, epoch uint64, n uint32, actPerSample, targetsPerSample int) []byte {
	acts := int(n) * actPerSample
	b := PipelineHeader(kind, shard, epoch, 1, n, 0, uint32(acts))
	b = append(b, make([]byte, 4*acts)...)
	t := int(n) * targetsPerSample
	b = binary.BigEndian.AppendUint32(b, uint32(t))
	return append(b, make([]byte, 4*t)...)
}

// Pipeline request kinds (train: forward and backward; eval: forward only).
const (
	KindTrain = 1
	KindEval  = 2
)

// Averaging frames: [type u8][length u32][payload].
const (
	tJoin         = 1
	tJoinReply    = 2
	tBegin        = 3
	tReduceHeader = 5
	tPart         = 6
	tGossipHeader = 8
	tAck          = 10
	tStart        = 11
)

// Frame is an averaging frame declaring length bytes of payload, followed
// by body (which may be shorter: the rest never comes).
func Frame(typ uint8, length uint32, body []byte) []byte {
	b := []byte{typ}
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, body...)
}

// frame is a frame whose length is its body's.
func frame(typ uint8, body []byte) []byte { return Frame(typ, uint32(len(body)), body) }

type enc []byte

func (e enc) u8(v uint8) enc    { return append(e, v) }
func (e enc) u16(v uint16) enc  { return binary.BigEndian.AppendUint16(e, v) }
func (e enc) u32(v uint32) enc  { return binary.BigEndian.AppendUint32(e, v) }
func (e enc) u64(v uint64) enc  { return binary.BigEndian.AppendUint64(e, v) }
func (e enc) f64(v float64) enc { return e.u64(math.Float64bits(v)) }
func (e enc) bytes(v []byte) enc {
	return append(e.u16(uint16(len(v))), v...)
}

// JoinRequest is a matchmaking join: wire version 1, group key, round,
// bits, expiration (unix ns), vector length, bandwidth, flags, codec.
type JoinRequest struct {
	Key        string
	Round      uint64
	Bits       uint32
	Expiration int64
	VecLen     uint64
	Bandwidth  float64
	Client     bool
	Codec      uint8
}

func (j JoinRequest) payload() []byte {
	var fl uint8
	if j.Client {
		fl = 1
	}
	return enc(nil).u16(1).bytes([]byte(j.Key)).u64(j.Round).u32(j.Bits).u64(uint64(j.Expiration)).
		u64(j.VecLen).f64(j.Bandwidth).u8(fl).u8(j.Codec)
}

// Frame returns the join as a frame.
func (j JoinRequest) Frame() []byte { return frame(tJoin, j.payload()) }

// parseJoin reads what the attacker needs of a victim's join request: the
// key, round, vector length and codec.
func parseJoin(b []byte) (JoinRequest, bool) {
	var j JoinRequest
	if len(b) < 4 {
		return j, false
	}
	b = b[2:]
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if len(b) < n+8+4+8+8+8+2 {
		return j, false
	}
	j.Key = string(b[:n])
	b = b[n:]
	j.Round = binary.BigEndian.Uint64(b)
	j.Bits = binary.BigEndian.Uint32(b[8:])
	j.Expiration = int64(binary.BigEndian.Uint64(b[12:]))
	j.VecLen = binary.BigEndian.Uint64(b[20:])
	j.Bandwidth = math.Float64frombits(binary.BigEndian.Uint64(b[28:]))
	j.Codec = b[37]
	return j, true
}

// JoinAccept is a leader's reply accepting a join.
func JoinAccept(expiration int64) []byte {
	return frame(tJoinReply, enc(nil).u8(1).u64(uint64(expiration)).u32(0).bytes(nil))
}

// Member is one member of a proposed group.
type Member struct {
	ID        []byte // peer ID bytes
	Bandwidth float64
	Client    bool
}

// Group is a leader's group message (begin or start): group id, members,
// codec, part size, vector length.
func Group(typ uint8, id [16]byte, members []Member, codec uint8, partSize uint32, vecLen uint64) []byte {
	e := enc(append([]byte(nil), id[:]...)).u16(uint16(len(members)))
	for _, m := range members {
		var fl uint8
		if m.Client {
			fl = 1
		}
		e = e.bytes(m.ID).f64(m.Bandwidth).u8(fl)
	}
	return frame(typ, e.u8(codec).u32(partSize).u64(vecLen))
}

// ReduceHeader opens a reduce stream: version, group, sender index,
// weight, vector length, codec.
func ReduceHeader(group [16]byte, sender uint16, weight float64, vecLen uint64, codec uint8) []byte {
	e := enc(nil).u16(1)
	e = append(e, group[:]...)
	return frame(tReduceHeader, e.u16(sender).f64(weight).u64(vecLen).u8(codec))
}

// GossipHeader opens a gossip exchange: version, key, round, weight,
// vector length, codec.
func GossipHeader(key string, round uint64, weight float64, vecLen uint64, codec uint8) []byte {
	return frame(tGossipHeader, enc(nil).u16(1).bytes([]byte(key)).u64(round).f64(weight).u64(vecLen).u8(codec))
}

// StateRequest is a state-sync request: op (1 header, 2 chunk), shard,
// snapshot id, chunk.
func StateRequest(op uint8, shard uint32, id uint64, chunk uint32) []byte {
	b := []byte{op}
	b = binary.BigEndian.AppendUint32(b, shard)
	b = binary.BigEndian.AppendUint64(b, id)
	return binary.BigEndian.AppendUint32(b, chunk)
}

// Record is a progress record; fields hold any value, valid or not.
type Record map[string]any

// ProgressMessage is a progress stream's content: a 4-byte length, then the
// JSON record.
func ProgressMessage(r Record) []byte {
	body, _ := json.Marshal(r)
	return ProgressRaw(uint32(len(body)), body)
}

// ProgressRaw declares length bytes and sends body.
func ProgressRaw(length uint32, body []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, length), body...)
}
