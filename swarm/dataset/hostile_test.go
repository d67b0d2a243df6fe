package dataset

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/swarm-train/swarm/internal/guard"
	tu "github.com/swarm-train/swarm/internal/testutil"
)

// Hostile peers with hand-written encoders: donors whose answers lie or
// break the protocol's bounds, and askers whose requests do.

// liar is a donor host whose answer to each request is answer(req); an
// honest store answers what answer leaves nil.
func liar(t *testing.T, honest *Store, answer func(req Request) []byte) host.Host {
	h := tu.Host(t)
	h.SetStreamHandler(Protocol, func(st network.Stream) {
		defer st.Close()
		buf := make([]byte, RequestLen)
		for {
			if _, err := io.ReadFull(st, buf); err != nil {
				return
			}
			req, _ := DecodeRequest(buf)
			if out := answer(req); out != nil {
				st.Write(out)
				continue
			}
			switch req.Op {
			case OpRoot:
				writeFrame(st, statusOK, honest.RootBytes())
			case OpHave:
				writeFrame(st, statusOK, honest.Bitmap())
			case OpChunk:
				b, _ := honest.ReadChunk(int(req.Chunk))
				writeFrame(st, statusOK, b)
			}
		}
	})
	return h
}

func frame(status byte, n uint32, payload []byte) []byte {
	b := []byte{status}
	b = binary.BigEndian.AppendUint32(b, n)
	return append(b, payload...)
}

// TestFetchHostileDonors: each lying donor next to an honest one; the
// fetch completes from the honest one, the liar is banned (a lie against
// the CIDs) or refused (a malformed answer), and a declared length of
// 0xFFFFFFFF is refused before anything is allocated.
func TestFetchHostileDonors(t *testing.T) {
	d := newSwarmData(t)
	seedStore, err := Open(d.r.CID(), Options{Local: [][]string{d.paths}, ChunkSize: MinChunkSize})
	if err != nil {
		t.Fatal(err)
	}
	huge := frame(statusOK, 0xFFFFFFFF, nil)
	for _, c := range []struct {
		name   string
		answer func(Request) []byte
		ban    string // swarm_security_bans_total reason, or
		refuse string // swarm_security_refusals_total reason
	}{
		{"root of 4 GiB", func(r Request) []byte {
			if r.Op == OpRoot {
				return huge
			}
			return nil
		}, whyRootLie, ""},
		{"another root object", func(r Request) []byte {
			if r.Op == OpRoot {
				b := append([]byte{}, seedStore.RootBytes()...)
				b[len(b)-1] ^= 1
				return frame(statusOK, uint32(len(b)), b)
			}
			return nil
		}, whyRootLie, ""},
		{"chunk of 4 GiB", func(r Request) []byte {
			if r.Op == OpChunk {
				return huge
			}
			return nil
		}, whyChunkLie, ""},
		{"short chunk", func(r Request) []byte {
			if r.Op == OpChunk {
				return frame(statusOK, 10, make([]byte, 10))
			}
			return nil
		}, whyChunkLie, ""},
		{"bitmap past the chunks", func(r Request) []byte {
			if r.Op == OpHave {
				return frame(statusOK, 3, []byte{0xFF, 0xFF, 0xFF})
			}
			return nil
		}, "", whyBitmap},
		{"bitmap of 4 GiB", func(r Request) []byte {
			if r.Op == OpHave {
				return huge
			}
			return nil
		}, "", whyBitmap},
		{"error text of 4 GiB", func(r Request) []byte {
			if r.Op == OpHave {
				return frame(statusError, 0xFFFFFFFF, nil)
			}
			return nil
		}, "", whyAnswer},
	} {
		t.Run(c.name, func(t *testing.T) {
			bad := liar(t, seedStore, c.answer)
			good := d.seed(t, false)
			f := newJoiner(t, d, t.TempDir(), bad, good)
			// The liar alone first (when the root is its lie), then both.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			donors := []peer.ID{bad.ID()}
			rep, err := Fetch(ctx, FetchConfig{Host: f.h, Store: f.store, Refusals: f.refuse, MinDonors: 1, Poll: 20 * time.Millisecond,
				Timeout: 5 * time.Second, RetryAfter: time.Hour, Donors: func(context.Context) []peer.ID {
					if f.refuse.Banned(bad.ID()) || len(f.refuse.Summary().Refusals) > 0 {
						donors = []peer.ID{bad.ID(), good.ID()}
					}
					return donors
				}})
			if err != nil {
				t.Fatal(err)
			}
			d.sameFiles(t, f.store.Dir())
			if rep.Donors[bad.ID()] != 0 && c.ban != "" {
				t.Errorf("the liar served %d verified chunks", rep.Donors[bad.ID()])
			}
			if c.ban != "" {
				if got := testutil.ToFloat64(mustVec(t, f.reg, "swarm_security_bans_total", "reason", c.ban)); got != 1 || !f.refuse.Banned(bad.ID()) {
					t.Fatalf("bans{reason=%q} = %v, banned %v", c.ban, got, f.refuse.Banned(bad.ID()))
				}
			} else {
				found := false
				for _, r := range f.refuse.Summary().Refusals {
					found = found || r.Protocol == protoData && r.Reason == c.refuse
				}
				if !found {
					t.Fatalf("refusals %+v: want data/%s", f.refuse.Summary().Refusals, c.refuse)
				}
			}
		})
	}
}

// TestServeHostileAskers: an asker's bad requests are refused and counted,
// a chunk index past the data set is never read, more streams than
// StreamsPerPeer are refused, and a request for another data set is
// answered "missing" without a refusal.
func TestServeHostileAskers(t *testing.T) {
	d := newSwarmData(t)
	h := tu.Host(t)
	s, _ := Open(d.r.CID(), Options{Local: [][]string{d.paths}, ChunkSize: MinChunkSize})
	reg := prometheus.NewRegistry()
	refuse, _ := guard.New(reg, nil, guard.Policy{Strikes: 1000})
	NewServer(h, s, refuse, nil)
	a := tu.Host(t)
	tu.Connect(t, a, h)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ask := func(req []byte) Frame {
		st, err := a.NewStream(ctx, h.ID(), Protocol)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		st.SetDeadline(time.Now().Add(5 * time.Second))
		st.Write(req)
		f, err := ReadFrame(st, 1<<20)
		if err != nil {
			t.Fatalf("answer: %v", err)
		}
		return f
	}
	sum := s.sum
	if f := ask(Request{Op: OpChunk, Root: sum, Chunk: 0xFFFFFFFF}.Encode()); f.Status != statusError {
		t.Errorf("chunk 0xFFFFFFFF: status %d", f.Status)
	}
	bad := Request{Op: 9, Root: sum}.Encode()
	if f := ask(bad); f.Status != statusError {
		t.Errorf("op 9: status %d", f.Status)
	}
	if f := ask(Request{Op: OpChunk, Root: [32]byte{1}}.Encode()); f.Status != statusMissing {
		t.Errorf("another data set: status %d, want missing", f.Status)
	}
	if f := ask(Request{Op: OpChunk, Root: sum, Chunk: 3}.Encode()); f.Status != statusOK || !bytes.Equal(f.Payload, chunkBytes(t, d.r, d.paths, 3)) {
		t.Errorf("chunk 3: status %d, %d bytes", f.Status, len(f.Payload))
	}
	// StreamsPerPeer streams held open, then one more.
	var open []network.Stream
	for range StreamsPerPeer {
		st, err := a.NewStream(ctx, h.ID(), Protocol)
		if err != nil {
			t.Fatal(err)
		}
		st.Write(Request{Op: OpHave, Root: sum}.Encode())
		if _, err := ReadFrame(st, 1<<20); err != nil {
			t.Fatal(err)
		}
		open = append(open, st)
	}
	if f := ask(Request{Op: OpHave, Root: sum}.Encode()); f.Status != statusError {
		t.Errorf("stream %d: status %d, want refused", StreamsPerPeer+1, f.Status)
	}
	for _, st := range open {
		st.Close()
	}
	want := map[string]bool{whyRange: true, whyOp: true, whyFlood: true}
	tu.Eventually(t, 5*time.Second, func() string { return "refusals: " + errors.New("missing").Error() }, func() bool {
		got := map[string]bool{}
		for _, r := range refuse.Summary().Refusals {
			if r.Protocol == protoData {
				got[r.Reason] = true
			}
		}
		return len(got) == len(want) && got[whyRange] && got[whyOp] && got[whyFlood]
	})
}

// FuzzDecodeRequest: any request bytes decode or are refused without
// panic, and a decoded request encodes back to them.
func FuzzDecodeRequest(f *testing.F) {
	f.Add(Request{Op: OpChunk, Chunk: 7}.Encode())
	f.Add(Request{Op: OpRoot}.Encode())
	f.Add([]byte{9})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRequest(b)
		if err == nil && !bytes.Equal(r.Encode(), b) {
			t.Fatal("a decoded request encodes to other bytes")
		}
	})
}

// FuzzReadFrame: any answer bytes are read or refused without panic,
// never past the limit, and a bitmap is accepted only in its exact form.
func FuzzReadFrame(f *testing.F) {
	f.Add(frame(statusOK, 3, []byte{1, 2, 3}), uint16(3))
	f.Add(frame(statusError, 0xFFFFFFFF, nil), uint16(16))
	f.Add(frame(statusMissing, 0, nil), uint16(0))
	f.Add(frame(7, 0, nil), uint16(0))
	f.Fuzz(func(t *testing.T, b []byte, limit uint16) {
		fr, err := ReadFrame(bytes.NewReader(b), int(limit))
		if err != nil {
			return
		}
		if fr.Status == statusOK && len(fr.Payload) > int(limit) || fr.Status == statusError && len(fr.Payload) > maxErrorText ||
			fr.Status == statusMissing && len(fr.Payload) != 0 {
			t.Fatalf("status %d payload of %d bytes past its limit", fr.Status, len(fr.Payload))
		}
		n := int(limit)
		if CheckBitmap(fr.Payload, n) == nil {
			if len(fr.Payload) != (n+7)/8 {
				t.Fatal("a bitmap of the wrong size passed")
			}
			for c := n; c < 8*len(fr.Payload); c++ {
				if fr.Payload[c/8]&(1<<(c%8)) != 0 {
					t.Fatalf("bit %d past %d chunks passed", c, n)
				}
			}
		}
	})
}
