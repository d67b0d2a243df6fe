package statesync

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/internal/testutil"
)

func newHost(t *testing.T) host.Host { return testutil.Host(t) }

func link(hs ...host.Host) {
	for _, a := range hs {
		for _, b := range hs {
			if a != b {
				a.Peerstore().AddAddrs(b.ID(), b.Addrs(), time.Hour)
			}
		}
	}
}

func state(nParams, nOpt int, epoch uint64) *Snapshot {
	s := &Snapshot{Shard: 1, Epoch: epoch, Step: int64(epoch), Params: make([]float32, nParams), Opt: make([]float32, nOpt)}
	for i := range s.Params {
		s.Params[i] = float32(i%1000) * 0.001
	}
	for i := range s.Opt {
		s.Opt[i] = float32(i%77) + float32(epoch)
	}
	return s
}

func holder(s *Snapshot) func(int) (*Snapshot, error) {
	return func(shard int) (*Snapshot, error) {
		if shard != s.Shard {
			return nil, errors.New("shard not held")
		}
		c := *s
		c.Params = append([]float32(nil), s.Params...)
		c.Opt = append([]float32(nil), s.Opt...)
		return &c, nil
	}
}

// TestFetchSeveralDonors: two honest donors with the newest state, one with
// an older state and one that lies about its chunks. The joiner gets the
// newest state exactly, from the honest donors.
func TestFetchSeveralDonors(t *testing.T) {
	const nP, nO = 400_000, 2 * 400_000 // 5 chunks
	joiner, a, b, old, liar := newHost(t), newHost(t), newHost(t), newHost(t), newHost(t)
	link(joiner, a, b, old, liar)
	want := state(nP, nO, 9)
	NewServer(a, holder(want))
	NewServer(b, holder(want))
	NewServer(old, holder(state(nP, nO, 3)))
	// The liar announces the real header but serves zeros.
	real := NewServer(liar, holder(want))
	liar.SetStreamHandler(Protocol, func(st network.Stream) {
		defer st.Close()
		for {
			var req [17]byte
			if _, err := io.ReadFull(st, req[:]); err != nil {
				return
			}
			if req[0] == opHeader {
				f, _ := real.freeze(1, false)
				_ = writeFrame(st, statusOK, f.enc)
				continue
			}
			i := int(binary.BigEndian.Uint32(req[13:]))
			lo, hi := chunkRange(uint64(nP+nO), i)
			_ = writeFrame(st, statusOK, make([]byte, 4*(hi-lo)))
		}
	})
	var calls int
	got, err := Fetch(context.Background(), joiner, []peer.ID{a.ID(), b.ID(), old.ID(), liar.ID()}, Want{Shard: 1, Params: nP, Opt: nO, MaxEpoch: 100}, 5*time.Second,
		func(done, total, donors int) {
			calls++
			if done > total {
				t.Errorf("progress %d of %d", done, total)
			}
		})
	if err != nil {
		t.Fatal(err)
	}
	if got.Epoch != 9 || got.Step != 9 || len(got.Params) != nP || len(got.Opt) != nO {
		t.Fatalf("got epoch %d step %d sizes %d+%d", got.Epoch, got.Step, len(got.Params), len(got.Opt))
	}
	for i := range want.Params {
		if got.Params[i] != want.Params[i] {
			t.Fatalf("param %d = %v, want %v", i, got.Params[i], want.Params[i])
		}
	}
	for i := range want.Opt {
		if got.Opt[i] != want.Opt[i] {
			t.Fatalf("opt %d = %v, want %v", i, got.Opt[i], want.Opt[i])
		}
	}
	if calls != 5 {
		t.Fatalf("%d progress calls, want one per chunk (5)", calls)
	}
}

func TestFetchNoDonor(t *testing.T) {
	joiner, other, wrong := newHost(t), newHost(t), newHost(t)
	link(joiner, other, wrong)
	NewServer(other, holder(state(10, 20, 1))) // holds shard 1, we ask for shard 0
	NewServer(wrong, func(int) (*Snapshot, error) { return &Snapshot{Params: make([]float32, 3)}, nil })
	_, err := Fetch(context.Background(), joiner, []peer.ID{other.ID(), wrong.ID()}, Want{Shard: 0, Params: 10, Opt: 20, MaxEpoch: 100}, 2*time.Second, nil)
	if !errors.Is(err, ErrNoDonor) {
		t.Fatalf("err = %v, want ErrNoDonor", err)
	}
	if _, err := Fetch(context.Background(), joiner, nil, Want{Shard: 0, Params: 10, Opt: 20, MaxEpoch: 100}, time.Second, nil); !errors.Is(err, ErrNoDonor) {
		t.Fatalf("no donors: err = %v", err)
	}
}

// TestDonorStallsMidway: a donor that stops answering after its header is
// dropped at the request timeout and the other donor finishes.
func TestDonorStallsMidway(t *testing.T) {
	const nP, nO = 300_000, 300_000
	joiner, good, stall := newHost(t), newHost(t), newHost(t)
	link(joiner, good, stall)
	want := state(nP, nO, 4)
	NewServer(good, holder(want))
	real := NewServer(stall, holder(want))
	stall.SetStreamHandler(Protocol, func(st network.Stream) {
		var req [17]byte
		if _, err := io.ReadFull(st, req[:]); err != nil {
			return
		}
		f, _ := real.freeze(1, false)
		_ = writeFrame(st, statusOK, f.enc)
		_, _ = io.Copy(io.Discard, st) // never answers a chunk
	})
	start := time.Now()
	got, err := Fetch(context.Background(), joiner, []peer.ID{good.ID(), stall.ID()}, Want{Shard: 1, Params: nP, Opt: nO, MaxEpoch: 100}, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Params[12345] != want.Params[12345] || got.Opt[nO-1] != want.Opt[nO-1] {
		t.Fatal("wrong data")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v with a stalled donor", d)
	}
}

func FuzzDecodeHeader(f *testing.F) {
	s := state(ChunkFloats+5, 3, 2)
	srv := &Server{take: holder(s), clk: clock.Real}
	fr, _ := srv.freeze(1, false)
	f.Add(encodeHeader(fr.hdr))
	f.Add(make([]byte, 44))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := DecodeHeader(b)
		if err != nil {
			return
		}
		if uint64(len(h.Hashes)) != (h.total()+ChunkFloats-1)/ChunkFloats {
			t.Fatal("inconsistent header accepted")
		}
		if string(encodeHeader(h)) != string(b) {
			t.Fatal("header does not round-trip")
		}
	})
}
