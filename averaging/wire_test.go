package averaging

import (
	"bytes"
	"context"
	"errors"
	"math"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/fvec"
)

func testPeerID(t testing.TB, seed byte) peer.ID {
	_, pub, err := crypto.GenerateEd25519Key(bytes.NewReader(bytes.Repeat([]byte{seed}, 64)))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func sampleMessages(t testing.TB) (joinRequest, joinReply, groupInfo, reduceHeader, gossipHeader) {
	a, b := testPeerID(t, 1), testPeerID(t, 2)
	jr := joinRequest{Version: WireVersion, Group: groupKey{"run/shard", 7, 3}, Expiration: 123456789, VecLen: 1000, Bandwidth: 2.5, Client: true, Codec: CodecInt8}
	rep := joinReply{Status: rejectFollowing, Expiration: 99, Bits: 2, Redirect: a}
	g := groupInfo{ID: [16]byte{9, 8, 7}, Members: []member{{a, 1, false}, {b, 0, true}}, Codec: CodecFP16, PartSize: 1024, VecLen: 1000}
	rh := reduceHeader{Version: WireVersion, Group: g.ID, Sender: 1, Weight: 3, VecLen: 1000, Codec: CodecFP16}
	gh := gossipHeader{Version: WireVersion, Key: "run/shard", Round: 7, Weight: 2, VecLen: 1000, Codec: CodecNone}
	return jr, rep, g, rh, gh
}

func TestWireRoundTrip(t *testing.T) {
	jr, rep, g, rh, gh := sampleMessages(t)
	if got, err := unmarshalJoinRequest(jr.marshal()); err != nil || got != jr {
		t.Fatalf("join request: %+v %v", got, err)
	}
	if got, err := unmarshalJoinReply(rep.marshal()); err != nil || got != rep {
		t.Fatalf("join reply: %+v %v", got, err)
	}
	if got, err := unmarshalGroupInfo(g.marshal()); err != nil || !reflect.DeepEqual(got, g) {
		t.Fatalf("group: %+v %v", got, err)
	}
	if got, err := unmarshalReduceHeader(rh.marshal()); err != nil || got != rh {
		t.Fatalf("reduce header: %+v %v", got, err)
	}
	if got, err := unmarshalGossipHeader(gh.marshal()); err != nil || got != gh {
		t.Fatalf("gossip header: %+v %v", got, err)
	}
	pm := partMsg{Index: 5, Contributors: []byte{3}, Data: []byte{1, 2, 3, 4}}
	if got, err := unmarshalPart(pm.appendTo(nil)); err != nil || !reflect.DeepEqual(got, pm) {
		t.Fatalf("part: %+v %v", got, err)
	}
	if got, err := unmarshalDisband(marshalDisband(g.Members[0].ID)); err != nil || got != g.Members[0].ID {
		t.Fatalf("disband: %v %v", got, err)
	}
	var buf bytes.Buffer
	_ = writeFrame(&buf, tPart, []byte("hello"))
	if typ, b, err := readFrame(&buf, 16, nil); err != nil || typ != tPart || string(b) != "hello" {
		t.Fatalf("frame: %v %q %v", typ, b, err)
	}
	_ = writeFrame(&buf, tPart, make([]byte, 17))
	if _, _, err := readFrame(&buf, 16, nil); !errors.Is(err, errFrameTooBig) {
		t.Fatalf("oversized frame: %v", err)
	}
}

func TestWireRejects(t *testing.T) {
	_, _, g, rh, gh := sampleMessages(t)
	dup := g
	dup.Members = []member{g.Members[0], g.Members[0]}
	if _, err := unmarshalGroupInfo(dup.marshal()); err == nil {
		t.Fatal("duplicate member accepted")
	}
	clients := g
	clients.Members = []member{{g.Members[0].ID, 1, true}, g.Members[1]}
	if _, err := unmarshalGroupInfo(clients.marshal()); err == nil {
		t.Fatal("group without a reducer accepted")
	}
	rh.Weight = -1
	if _, err := unmarshalReduceHeader(rh.marshal()); err == nil {
		t.Fatal("negative weight accepted")
	}
	gh.Codec = 7
	if _, err := unmarshalGossipHeader(gh.marshal()); err == nil {
		t.Fatal("unknown codec accepted")
	}
	if _, err := unmarshalJoinReply([]byte{1}); err == nil {
		t.Fatal("truncated reply accepted")
	}
	jr, _, _, _, _ := sampleMessages(t)
	if _, err := unmarshalJoinRequest(append(jr.marshal(), 0)); err == nil {
		t.Fatal("trailing bytes accepted")
	}
}

// Fuzz targets: every decoder of network input. A decoded message must
// re-encode to something that decodes to the same value.

func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	_ = writeFrame(&buf, tJoin, []byte{1, 2, 3})
	f.Add(buf.Bytes())
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{6, 0x7f, 0xff, 0xff, 0xff, 1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, p, err := readFrame(bytes.NewReader(b), 1<<16, nil)
		if err == nil && len(p) > 1<<16 {
			t.Fatal("frame over the limit")
		}
		// A large limit: the buffer grows only with the bytes that came.
		_, p, _ = readFrame(bytes.NewReader(b), 1<<30, nil)
		if cap(p) > len(b)+64<<10 {
			t.Fatalf("buffer of %d bytes for %d bytes of input", cap(p), len(b))
		}
	})
}

// fuzzAverager is an Averager with the default limits, for the checks.
func fuzzAverager(t testing.TB) *Averager {
	cfg, err := Config{Peers: func(context.Context, string) []peer.ID { return nil }, MaxWeight: 512}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	return &Averager{cfg: cfg}
}

// FuzzGroupLimits: a group that decodes and passes checkGroup costs at most
// what our own config would: parts of at most PartSize values, and no more
// than about 4× the parts we would cut.
func FuzzGroupLimits(f *testing.F) {
	_, _, g, _, _ := sampleMessages(f)
	g.PartSize = 128 << 10
	f.Add(g.marshal(), uint32(1000))
	g.PartSize = math.MaxUint32
	f.Add(g.marshal(), uint32(1<<20))
	a := fuzzAverager(f)
	f.Fuzz(func(t *testing.T, b []byte, vecLen uint32) {
		vecLen %= 1 << 22
		m, err := unmarshalGroupInfo(b)
		if err != nil || a.checkGroup(&m, int(vecLen), m.Codec) != nil {
			return
		}
		if m.PartSize > uint32(a.cfg.PartSize) || int(m.PartSize) < a.minPartSize() {
			t.Fatalf("part size %d accepted", m.PartSize)
		}
		lay := partition(int(vecLen), m.Members, int(m.PartSize))
		parts := 0
		for i, ps := range lay.Parts {
			parts += len(ps)
			if longestPart(ps) > a.cfg.PartSize || partFrame(m.Codec, longestPart(ps), (len(m.Members)+7)/8) > a.cfg.MaxFrame {
				t.Fatalf("member %d: part of %d values", i, longestPart(ps))
			}
		}
		if limit := 4*(int(vecLen)/a.cfg.PartSize+1) + len(m.Members); parts > limit {
			t.Fatalf("%d parts (limit %d)", parts, limit)
		}
	})
}

// FuzzJoinLimits: a join request that passes checkJoin has a bandwidth
// within MaxBandwidth and an expiration near our clock.
func FuzzJoinLimits(f *testing.F) {
	jr, _, _, _, _ := sampleMessages(f)
	now := time.Unix(1_800_000_000, 0)
	jr.Expiration = now.UnixNano()
	f.Add(jr.marshal())
	jr.Expiration, jr.Bandwidth = 0, 1e300
	f.Add(jr.marshal())
	a := fuzzAverager(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := unmarshalJoinRequest(b)
		if err != nil || a.checkJoin(m, now) != nil {
			return
		}
		if !(m.Bandwidth >= 0 && m.Bandwidth <= MaxBandwidth) {
			t.Fatalf("bandwidth %v accepted", m.Bandwidth)
		}
		if d := time.Duration(m.Expiration - now.UnixNano()); d < -clockSkew || d > a.cfg.MatchTimeout+clockSkew {
			t.Fatalf("expiration %v from now accepted", d)
		}
	})
}

func FuzzJoinRequest(f *testing.F) {
	jr, _, _, _, _ := sampleMessages(f)
	f.Add(jr.marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := unmarshalJoinRequest(b)
		if err != nil {
			return
		}
		if m2, err := unmarshalJoinRequest(m.marshal()); err != nil || m2 != m {
			t.Fatalf("re-decode: %+v %v", m2, err)
		}
	})
}

func FuzzJoinReply(f *testing.F) {
	_, rep, _, _, _ := sampleMessages(f)
	f.Add(rep.marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := unmarshalJoinReply(b)
		if err != nil {
			return
		}
		if m2, err := unmarshalJoinReply(m.marshal()); err != nil || m2 != m {
			t.Fatalf("re-decode: %+v %v", m2, err)
		}
	})
}

func FuzzGroupInfo(f *testing.F) {
	_, _, g, _, _ := sampleMessages(f)
	f.Add(g.marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := unmarshalGroupInfo(b)
		if err != nil {
			return
		}
		if len(m.Members) < 2 || len(m.Members) > MaxGroupSize {
			t.Fatalf("group of %d accepted", len(m.Members))
		}
		if m2, err := unmarshalGroupInfo(m.marshal()); err != nil || !reflect.DeepEqual(m2, m) {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

func FuzzDisband(f *testing.F) {
	f.Add(marshalDisband(testPeerID(f, 3)))
	f.Add(marshalDisband(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := unmarshalDisband(b)
		if err == nil && p != "" {
			if err := p.Validate(); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func FuzzReduceHeader(f *testing.F) {
	_, _, _, rh, _ := sampleMessages(f)
	f.Add(rh.marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := unmarshalReduceHeader(b)
		if err != nil {
			return
		}
		if !validWeight(m.Weight) {
			t.Fatalf("weight %v accepted", m.Weight)
		}
		if m2, err := unmarshalReduceHeader(m.marshal()); err != nil || m2 != m {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

func FuzzPart(f *testing.F) {
	pm := partMsg{Index: 2, Contributors: []byte{0xff}, Data: CodecNone.Encode(nil, []float32{1, 2})}
	f.Add(pm.appendTo(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := unmarshalPart(b)
		if err != nil {
			return
		}
		dst := make([]float32, len(m.Data)/4)
		_ = CodecNone.Decode(dst, m.Data)
		if m2, err := unmarshalPart(m.appendTo(nil)); err != nil || !reflect.DeepEqual(m2, m) {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

func FuzzGossipHeader(f *testing.F) {
	_, _, _, _, gh := sampleMessages(f)
	f.Add(gh.marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := unmarshalGossipHeader(b)
		if err != nil {
			return
		}
		if m2, err := unmarshalGossipHeader(m.marshal()); err != nil || m2 != m {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

// FuzzReadPart: reading a part straight into its destination accepts
// exactly what reading the frame, unmarshalling it and decoding it accepts,
// with the same values; a frame over the limit or with the wrong contributor
// set is refused, and a buffer grows only with the bytes that came.
func FuzzReadPart(f *testing.F) {
	codecs := []Codec{CodecNone, CodecBF16, CodecInt8}
	for ci, c := range codecs {
		var buf bytes.Buffer
		pm := partMsg{Index: 1, Contributors: []byte{0x0f}, Data: c.Encode(nil, []float32{1, -2, 3.5, 0})}
		_ = writeFrame(&buf, tAvgPart, pm.appendTo(nil))
		f.Add(uint8(ci), buf.Bytes())
		buf.Reset()
		pm.Contributors = nil
		_ = writeFrame(&buf, tPart, pm.appendTo(nil))
		f.Add(uint8(ci), buf.Bytes())
	}
	f.Add(uint8(0), []byte{byte(tPart), 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, codec uint8, b []byte) {
		c := codecs[int(codec)%len(codecs)]
		for _, want := range []msgType{tPart, tAvgPart} {
			cb := 0
			if want == tAvgPart {
				cb = 1
			}
			limit := partFrame(c, 4, cb)
			dst := make([]float32, 4)
			h, _, err := readPart(bytes.NewReader(b), want, c, limit, cb, dst, nil, nil)
			// The fused norm pass accepts exactly the same, with the sum.
			dsq := make([]float32, 4)
			var sq float64
			hs, _, serr := readPart(bytes.NewReader(b), want, c, limit, cb, dsq, nil, &sq)
			if (serr == nil) != (err == nil) {
				t.Fatalf("codec %s type %d: readPart says %v, with the norm %v", c, want, err, serr)
			}
			if err == nil && (hs.Index != h.Index || !slices.Equal(dsq, dst) || sq != fvec.SumSquares(dst)) {
				t.Fatalf("with the norm: %v with Σ² %v, without %v with Σ² %v", dsq, sq, dst, fvec.SumSquares(dst))
			}

			ref := make([]float32, 4)
			t0, p, rerr := readFrame(bytes.NewReader(b), limit, nil)
			var m partMsg
			if rerr == nil && t0 != want {
				rerr = errMalformed
			}
			if rerr == nil {
				m, rerr = unmarshalPart(p)
			}
			if rerr == nil && len(m.Contributors) != cb {
				rerr = errMalformed
			}
			if rerr == nil {
				rerr = c.Decode(ref, m.Data)
			}
			if (err == nil) != (rerr == nil) {
				t.Fatalf("codec %s type %d: readPart says %v, frame and decode say %v", c, want, err, rerr)
			}
			if err != nil {
				continue
			}
			if h.Index != m.Index || !h.Contributors.equal(m.Contributors) || h.Size != len(p) {
				t.Fatalf("head %+v, want index %d contributors %x size %d", h, m.Index, m.Contributors, len(p))
			}
			for i := range dst {
				if math.Float32bits(dst[i]) != math.Float32bits(ref[i]) {
					t.Fatalf("value %d: %v, want %v", i, dst[i], ref[i])
				}
			}
		}
		// A large limit: the buffer grows only with the bytes that came.
		_, buf, _ := readPart(bytes.NewReader(b), tPart, CodecBF16, 1<<30, 0, make([]float32, 4), nil, nil)
		if cap(buf) > len(b)+64<<10 {
			t.Fatalf("buffer of %d bytes for %d bytes of input", cap(buf), len(b))
		}
	})
}
