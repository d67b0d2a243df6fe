package statesync

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/internal/guard"
	"github.com/swarm-train/swarm/internal/testutil"
)

// countingHolder is holder that counts its freezes.
func countingHolder(s *Snapshot, n *atomic.Int64) func(int) (*Snapshot, error) {
	take := holder(s)
	return func(shard int) (*Snapshot, error) {
		n.Add(1)
		return take(shard)
	}
}

// askHeaders opens a stream to p and asks for the header times times; it
// returns the stream (open: the download goes on) and the last header.
func askHeaders(ctx context.Context, h host.Host, p peer.ID, times int) (network.Stream, *Header, error) {
	st, err := h.NewStream(ctx, p, Protocol)
	if err != nil {
		return nil, nil, err
	}
	_ = st.SetDeadline(clock.WallDeadline(5 * time.Second))
	var hdr *Header
	for range times {
		if _, err := st.Write(request(opHeader, 1, 0, 0)); err != nil {
			st.Reset()
			return nil, nil, err
		}
		b, err := readFrame(st, 1<<20)
		if err != nil {
			st.Reset()
			return nil, nil, err
		}
		if hdr, err = DecodeHeader(b); err != nil {
			st.Reset()
			return nil, nil, err
		}
	}
	return st, hdr, nil
}

// A flood of header requests from many peers and streams freezes the state
// once per epoch and interval: concurrent requesters share one copy.
func TestHeaderFloodFreezesOnce(t *testing.T) {
	donor := newHost(t)
	var takes atomic.Int64
	srv := NewServer(donor, countingHolder(state(1000, 1000, 5), &takes))
	clk := clock.NewManual(time.Unix(1000, 0)) // time moves only when the test says
	srv.SetClock(clk)
	var epoch atomic.Uint64
	epoch.Store(5)
	srv.SetEpoch(func(int) (uint64, bool) { return epoch.Load(), true })
	attackers := make([]host.Host, 8)
	for i := range attackers {
		attackers[i] = newHost(t)
		link(donor, attackers[i])
	}
	flood := func() map[uint64]int {
		var wg sync.WaitGroup
		ids := map[uint64]int{}
		var idsMu sync.Mutex
		for _, a := range attackers {
			for range StreamsPerPeer {
				wg.Add(1)
				go func() {
					defer wg.Done()
					st, hdr, err := askHeaders(context.Background(), a, donor.ID(), 50)
					if err != nil {
						t.Error(err)
						return
					}
					// Wait for the donor's end of the stream: its slot is
					// free once it has closed, so the next flood is not
					// refused for streams this one already finished.
					_ = st.CloseWrite()
					_, _ = io.Copy(io.Discard, st)
					st.Close()
					idsMu.Lock()
					ids[hdr.ID]++
					idsMu.Unlock()
				}()
			}
		}
		wg.Wait()
		return ids
	}
	if ids := flood(); len(ids) != 1 || takes.Load() != 1 {
		t.Fatalf("%d header requests: %d freezes, %d copies; want 1", 8*StreamsPerPeer*50, takes.Load(), len(ids))
	}
	// Past the interval but in the same epoch: still the same copy.
	clk.Advance(time.Minute)
	flood()
	if n := takes.Load(); n != 1 {
		t.Fatalf("%d freezes in one epoch, want 1", n)
	}
	// A new epoch past the interval: a new copy.
	epoch.Store(6)
	flood()
	if n := takes.Load(); n != 2 {
		t.Fatalf("%d freezes after a new epoch and the interval, want 2", n)
	}
	// Another new epoch within the interval of that freeze: none, until
	// the interval has passed.
	epoch.Store(7)
	clk.Advance(MinFreezeGap - time.Millisecond)
	flood()
	if n := takes.Load(); n != 2 {
		t.Fatalf("%d freezes within %v, want 2", n, MinFreezeGap)
	}
	clk.Advance(time.Millisecond)
	flood()
	if n := takes.Load(); n != 3 {
		t.Fatalf("%d freezes once %v passed, want 3", n, MinFreezeGap)
	}
	testutil.Eventually(t, 5*time.Second, testutil.Says("the superseded copies released"), func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.snaps) == 1
	})
}

// One peer opening 64 downloads at once is served StreamsPerPeer of them;
// the rest are refused and counted.
func TestParallelDownloadsCapped(t *testing.T) {
	donor, attacker := newHost(t), newHost(t)
	link(donor, attacker)
	srv := NewServer(donor, holder(state(1000, 1000, 5)))
	ref, err := guard.New(nil, nil, guard.Policy{Strikes: 1000})
	if err != nil {
		t.Fatal(err)
	}
	srv.SetRefusals(ref)
	var (
		wg              sync.WaitGroup
		mu              sync.Mutex
		served, refused int
		open            []network.Stream
	)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, _, err := askHeaders(context.Background(), attacker, donor.ID(), 1)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				served++
				open = append(open, st) // keeps downloading
			case strings.Contains(err.Error(), "too many downloads"):
				refused++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if served != StreamsPerPeer || refused != 64-StreamsPerPeer {
		t.Fatalf("served %d, refused %d of 64; want %d and %d", served, refused, StreamsPerPeer, 64-StreamsPerPeer)
	}
	if got := ref.Summary().Refusals; len(got) != 1 || got[0].Reason != whyFlood || got[0].Count != uint64(refused) {
		t.Fatalf("refusals %+v", got)
	}
	for _, st := range open {
		st.Close()
	}
	// Slots come back when the downloads end.
	testutil.Eventually(t, 5*time.Second, testutil.Says("the download slots released"), func() bool {
		return srv.slots.Held() == 0 && srv.slots.Peers() == 0
	})
}

// At most MaxFrozen copies live: while old ones are still downloaded, a
// newer epoch is served from the newest existing copy instead of another.
func TestFrozenCopiesBounded(t *testing.T) {
	var epoch atomic.Uint64
	take := func(int) (*Snapshot, error) { return state(10, 10, epoch.Load()), nil }
	clk := clock.NewManual(time.Unix(0, 0))
	srv := &Server{take: take, ttl: time.Minute, gap: time.Second, clk: clk,
		snaps: map[uint64]*frozen{}, latest: map[int]*frozen{}, freezing: map[int]chan struct{}{}}
	srv.SetEpoch(func(int) (uint64, bool) { return epoch.Load(), true })
	var held []*frozen
	for e := range uint64(5) {
		epoch.Store(e)
		clk.Advance(time.Second)
		f, err := srv.snapshot(1, false)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, f) // nobody finishes
		if len(srv.snaps) > MaxFrozen {
			t.Fatalf("%d copies alive", len(srv.snaps))
		}
	}
	if held[4].hdr.Epoch != 1 {
		t.Fatalf("served epoch %d while the copies were in use, want the newest (1)", held[4].hdr.Epoch)
	}
	for _, f := range held {
		srv.drop(f)
	}
	if len(srv.snaps) != 1 {
		t.Fatalf("%d copies after the downloads ended, want the newest only", len(srv.snaps))
	}
	f, err := srv.snapshot(1, false)
	if err != nil || f.hdr.Epoch != 4 {
		t.Fatalf("after release: epoch %v, %v; want 4", f, err)
	}
}

// A donor announcing the largest header, or sizes, chunk counts and an
// epoch the layout does not allow, is refused before the joiner allocates
// what it announced.
func TestHostileDonorHeader(t *testing.T) {
	const nP, nO = 1000, 1000
	joiner := newHost(t)
	header := func(nParams, nOpt uint64, epoch uint64, chunks uint32) []byte {
		b := binary.BigEndian.AppendUint64(nil, 1)
		b = binary.BigEndian.AppendUint64(b, epoch)
		b = binary.BigEndian.AppendUint64(b, 1)
		b = binary.BigEndian.AppendUint64(b, nParams)
		b = binary.BigEndian.AppendUint64(b, nOpt)
		b = binary.BigEndian.AppendUint32(b, chunks)
		return append(b, make([]byte, 32*int(min(chunks, 4)))...)
	}
	cases := map[string][]byte{
		"frame": nil, // a frame of MaxUint32 bytes, then silence
		"sizes": header(maxFloats, 0, 1, maxChunks),
		"epoch": header(nP, nO, math.MaxUint64, 1),
	}
	for name, hdr := range cases {
		donor := newHost(t)
		link(joiner, donor)
		donor.SetStreamHandler(Protocol, func(st network.Stream) {
			var req [17]byte
			if _, err := io.ReadFull(st, req[:]); err != nil {
				return
			}
			if hdr == nil {
				_, _ = st.Write([]byte{statusOK, 0xff, 0xff, 0xff, 0xff})
				_, _ = io.Copy(io.Discard, st)
				return
			}
			_ = writeFrame(st, statusOK, hdr)
			_, _ = io.Copy(io.Discard, st)
		})
		var a, b runtime.MemStats
		runtime.ReadMemStats(&a)
		_, err := Fetch(context.Background(), joiner, []peer.ID{donor.ID()}, Want{Shard: 1, Params: nP, Opt: nO, MaxEpoch: 100}, 2*time.Second, nil)
		runtime.ReadMemStats(&b)
		if !errors.Is(err, ErrNoDonor) {
			t.Fatalf("%s: err %v, want ErrNoDonor", name, err)
		}
		if got := b.TotalAlloc - a.TotalAlloc; got > 4<<20 {
			t.Fatalf("%s: refusing a hostile header allocated %d KiB", name, got>>10)
		}
	}
}
