package pipeline

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/clock"
)

// hostileHeader is a request's fixed header and the activation block's
// header, declaring acts values: what an attacker sends before its silence.
func hostileHeader(n uint32, acts uint32) []byte {
	b := []byte{KindTrain}
	b = binary.BigEndian.AppendUint32(b, 1)
	b = binary.BigEndian.AppendUint64(b, 0)
	b = binary.BigEndian.AppendUint64(b, 7)
	b = binary.BigEndian.AppendUint32(b, n)
	b = append(b, FP32)
	return binary.BigEndian.AppendUint32(b, acts)
}

// allocated returns the bytes f allocates.
func allocated(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// A request declaring more values than the stage's limits is refused before
// its body is read, whatever it declares.
func TestDeclaredOversizeRefused(t *testing.T) {
	lim := func(q *Request) (Limits, error) { return Limits{Act: 8 * int(q.N), Targets: int(q.N)}, nil }
	// The declared values, then silence: the decoder must not size a
	// buffer from the header.
	for _, acts := range []uint32{8*4 + 1, 1 << 26, math.MaxUint32} {
		var err error
		got := allocated(func() {
			_, err = ReadRequest(bytes.NewReader(hostileHeader(4, acts)), lim)
		})
		if !errors.Is(err, ErrOversize) {
			t.Fatalf("declared %d values: err %v, want ErrOversize", acts, err)
		}
		if got > 64<<10 {
			t.Fatalf("refusing %d declared values allocated %d bytes", acts, got)
		}
	}
	// A response declaring more gradient values than the activations sent.
	b := []byte{CodeOK, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, FP32}
	b = binary.BigEndian.AppendUint32(b, math.MaxUint32)
	if _, err := ReadResponse(bytes.NewReader(b), 100); !errors.Is(err, ErrOversize) {
		t.Fatalf("response: err %v, want ErrOversize", err)
	}
}

// A sender that declares the most the stage allows (here 64 Mi values, the
// old decoder limit: 256 MiB) and then stalls costs the receiver what it
// actually sent, not what it declared.
func TestStalledSenderCostsLittle(t *testing.T) {
	const acts = 1 << 26
	lim := func(q *Request) (Limits, error) { return Limits{Act: acts, Targets: 0}, nil }
	r, w := io.Pipe()
	type result struct {
		err   error
		alloc uint64
	}
	done := make(chan result, 1)
	go func() {
		var err error
		alloc := allocated(func() { _, err = ReadRequest(r, lim) })
		done <- result{err, alloc}
	}()
	if _, err := w.Write(hostileHeader(1<<20, acts)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, 1000)); err != nil { // a little, then silence
		t.Fatal(err)
	}
	stall := errors.New("deadline")
	w.CloseWithError(stall) // the stream's read deadline
	res := <-done
	if !errors.Is(res.err, stall) {
		t.Fatalf("err %v, want the deadline", res.err)
	}
	got := res.alloc
	if got > 256<<10 {
		t.Fatalf("a stalled sender that declared %d MiB cost %d KiB", 4*acts>>20, got>>10)
	}
}

// A flood of fresh peer IDs (each banned for garbage) does not grow the
// balancer beyond MaxPeers, and peers with micro-batches in flight stay.
func TestBalancerBounded(t *testing.T) {
	clk := clock.NewManual(time.Unix(0, 0))
	b := NewBalancer(rand.New(rand.NewPCG(1, 2)), clk)
	b.Begin("busy")
	for i := range 5000 {
		b.Ban(peer.ID(binary.BigEndian.AppendUint32([]byte("fake"), uint32(i))), time.Minute, "garbage")
		clk.Advance(time.Millisecond)
	}
	if n := b.Len(); n > MaxPeers {
		t.Fatalf("balancer remembers %d peers, bound %d", n, MaxPeers)
	}
	if _, ok := b.Pick([]peer.ID{"busy"}, nil); !ok {
		t.Fatal("peer in flight forgotten")
	}
	b.mu.Lock()
	inflight := b.peers["busy"].inflight
	b.mu.Unlock()
	if inflight != 1 {
		t.Fatalf("in flight %d, want 1", inflight)
	}
}
