package pipeline

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/clock"

	"github.com/swarm-train/swarm/internal/bf16"
)

// roomy allows what the tests' requests declare: 64 values a sample, a
// TOPK block marking any of them.
func roomy(q *Request) (Limits, error) {
	return Limits{Act: 64 * int(q.N), Targets: 64 * int(q.N), Kept: 64 * int(q.N)}, nil
}

func TestRequestRoundTrip(t *testing.T) {
	q := &Request{Kind: KindTrain, Shard: 1, Epoch: 7, ID: 99, N: 2, Act: []float32{1, -2, 3.5, 0}, Targets: []int32{3, 9}}
	got, err := ReadRequest(bytes.NewReader(q.Encode()), roomy)
	if err != nil {
		t.Fatal(err)
	}
	if got.Kind != q.Kind || got.Shard != 1 || got.Epoch != 7 || got.ID != 99 || got.N != 2 || got.Act[2] != 3.5 || got.Targets[1] != 9 {
		t.Fatalf("round trip: %+v", got)
	}
	p := &Response{Code: CodeStale, Msg: "behind", Loss: 0.25, Correct: 3, Grad: []float32{0.5}}
	gp, err := ReadResponse(bytes.NewReader(p.Encode()), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if gp.Code != CodeStale || gp.Msg != "behind" || gp.Loss != 0.25 || gp.Correct != 3 || gp.Grad[0] != 0.5 {
		t.Fatalf("round trip: %+v", gp)
	}
}

func TestBF16RoundTrip(t *testing.T) {
	act := []float32{1, -2.75, 3.14159, 1e-30, 65504}
	q := &Request{Kind: KindTrain, N: 1, Act: act, Targets: []int32{3}, Precision: BF16}
	full := (&Request{Kind: KindTrain, N: 1, Act: act, Targets: []int32{3}}).Encode()
	enc := q.Encode()
	if len(full)-len(enc) != 2*len(act) {
		t.Fatalf("bf16 request is %d bytes, fp32 %d: want 2 bytes a value saved", len(enc), len(full))
	}
	got, err := ReadRequest(bytes.NewReader(enc), roomy)
	if err != nil {
		t.Fatal(err)
	}
	if got.Precision != BF16 {
		t.Fatalf("precision %d, want bf16", got.Precision)
	}
	for i, x := range act {
		if got.Act[i] != bf16.To32(bf16.From32(x)) {
			t.Fatalf("value %d: %g, want %g", i, got.Act[i], bf16.To32(bf16.From32(x)))
		}
	}
	p := &Response{Code: CodeOK, Grad: []float32{0.1, -0.2}, Precision: BF16}
	gp, err := ReadResponse(bytes.NewReader(p.Encode()), 1<<20)
	if err != nil || gp.Precision != BF16 || gp.Grad[1] != bf16.To32(bf16.From32(-0.2)) {
		t.Fatalf("response: %+v, %v", gp, err)
	}
	bad := p.Encode()
	bad[1+2+4+4] = 9 // the gradient block's precision byte
	if _, err := ReadResponse(bytes.NewReader(bad), 1<<20); err == nil || !strings.Contains(err.Error(), "unknown precision 9") {
		t.Fatalf("unknown precision: %v", err)
	}
}

func TestValidate(t *testing.T) {
	s := Shape{ActPerSample: 2, TargetsPerSample: 1, Classes: 10, MaxN: 4}
	ok := &Request{Kind: KindTrain, N: 2, Act: []float32{1, 2, 3, 4}, Targets: []int32{0, 9}}
	if err := s.Validate(ok); err != nil {
		t.Fatal(err)
	}
	nan := float32(math.NaN())
	bad := []*Request{
		{N: 0},
		{N: 5, Act: make([]float32, 10), Targets: make([]int32, 5)},
		{N: 2, Act: []float32{1, 2, 3}, Targets: []int32{0, 1}},
		{N: 2, Act: []float32{1, 2, 3, 4}, Targets: []int32{0}},
		{N: 2, Act: []float32{1, 2, 3, 4}, Targets: []int32{0, 10}},
		{N: 2, Act: []float32{1, nan, 3, 4}, Targets: []int32{0, 1}},
		{N: 2, Act: []float32{1, float32(math.Inf(1)), 3, 4}, Targets: []int32{0, 1}},
	}
	for i, q := range bad {
		if err := s.Validate(q); err == nil {
			t.Errorf("case %d accepted", i)
		}
	}
}

// INT8 blocks: 1 byte a value plus a float32 scale per Int8Block values;
// each value within half a step of its block's scale (the largest
// magnitude / 127), zeros and a block's largest value exact in sign and
// size; a block with NaN or Inf, or a hostile scale, is refused as
// non-finite.
func TestInt8RoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	act := make([]float32, 2*Int8Block+5) // two full blocks and a short one
	for i := range act {
		act[i] = float32(r.NormFloat64()) * float32(math.Pow(10, float64(i/Int8Block*3-3))) // blocks of very different sizes
	}
	act[7] = 0
	enc := (&Request{Kind: KindTrain, N: 1, Act: act, Targets: []int32{3}, Precision: INT8}).Encode()
	full := (&Request{Kind: KindTrain, N: 1, Act: act, Targets: []int32{3}}).Encode()
	if want := len(full) - 4*len(act) + len(act) + 4*3; len(enc) != want {
		t.Fatalf("int8 request is %d bytes, want %d", len(enc), want)
	}
	roomier := func(q *Request) (Limits, error) { return Limits{Act: 1 << 10, Targets: 1}, nil }
	got, err := ReadRequest(bytes.NewReader(enc), roomier)
	if err != nil {
		t.Fatal(err)
	}
	if got.Precision != INT8 || len(got.Act) != len(act) {
		t.Fatalf("precision %d, %d values", got.Precision, len(got.Act))
	}
	for start := 0; start < len(act); start += Int8Block {
		blk := act[start:min(start+Int8Block, len(act))]
		var amax float64
		for _, x := range blk {
			amax = max(amax, math.Abs(float64(x)))
		}
		step := amax / 127
		for i, x := range blk {
			if d := math.Abs(float64(got.Act[start+i] - x)); d > step/2*(1+1e-5) {
				t.Fatalf("value %d: %g for %g, off by %g (half a step %g)", start+i, got.Act[start+i], x, d, step/2)
			}
		}
	}
	if got.Act[7] != 0 {
		t.Fatalf("zero decoded as %g", got.Act[7])
	}
	// A NaN or Inf in a block: the receiver refuses it.
	for _, v := range []float32{float32(math.NaN()), float32(math.Inf(-1))} {
		bad := append([]float32(nil), act...)
		bad[Int8Block+3] = v
		_, err := ReadRequest(bytes.NewReader((&Request{Kind: KindTrain, N: 1, Act: bad, Precision: INT8}).Encode()), roomier)
		if !errors.Is(err, ErrNonFinite) || !strings.Contains(err.Error(), "block at value 64") {
			t.Fatalf("%g in a block: %v", v, err)
		}
	}
	// Hostile scales: negative, NaN, and one that would decode to Inf.
	for _, scale := range []float32{-1, float32(math.NaN()), math.MaxFloat32 / 100} {
		p := &Response{Code: CodeOK, Grad: []float32{1, 2, 3}, Precision: INT8}
		b := p.Encode()
		off := 1 + 2 + 4 + 4 + 1 + 4 // code, msg length, loss, correct, precision, count
		binary.LittleEndian.PutUint32(b[off:], math.Float32bits(scale))
		if _, err := ReadResponse(bytes.NewReader(b), 3); !errors.Is(err, ErrNonFinite) {
			t.Fatalf("scale %g: %v", scale, err)
		}
	}
}

func FuzzReadRequest(f *testing.F) {
	f.Add((&Request{Kind: KindEval, N: 1, Act: []float32{1}, Targets: []int32{2}}).Encode())
	f.Add([]byte{1, 0, 0, 0, 0})
	f.Add(append((&Request{Kind: KindTrain, N: 1}).Encode()[:26], 0xff, 0xff, 0xff, 0xff))
	f.Add((&Request{Kind: KindTrain, N: 2, Act: []float32{1, -3e-9}, Targets: []int32{1, 2}, Precision: BF16}).Encode())
	f.Add((&Request{Kind: KindTrain, N: 2, Act: []float32{1, -3e-9, 70, 0.5}, Targets: []int32{1, 2}, Precision: INT8}).Encode())
	topk := []float32{0, 3, -1, 0, 0.5, 7, 0, 0, 2}
	f.Add((&Request{Kind: KindTrain, N: 1, Act: topk, Targets: []int32{1}, Precision: TOPK, Mask: TopMask(topk, 9, 3)}).Encode())
	unknown := (&Request{Kind: KindTrain, N: 1, Act: []float32{1}}).Encode()
	unknown[25] = 7 // no such precision
	f.Add(unknown)
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := ReadRequest(bytes.NewReader(b), roomy)
		if err != nil {
			return
		}
		if _, err := ReadRequest(bytes.NewReader(q.Encode()), roomy); err != nil {
			t.Fatalf("re-encoded request fails: %v", err)
		}
	})
}

func FuzzReadResponse(f *testing.F) {
	f.Add((&Response{Code: CodeOK, Grad: []float32{1, 2}}).Encode())
	f.Add((&Response{Code: CodeBusy, Msg: "x"}).Encode())
	f.Add((&Response{Code: CodeOK, Grad: []float32{0.5, -1e-20}, Precision: BF16}).Encode())
	f.Add((&Response{Code: CodeOK, Grad: []float32{0.5, -1e-20, 3}, Precision: INT8}).Encode())
	// The answer to a TOPK request of 9 values marking 0b1_0010_0110:
	// its gradient MASKED, and one sent with a bitmap of its own.
	mask := Mask{0x26, 0x01}
	grad := []float32{1, 2, 3, 4, 5, 6, 7, 8, 9}
	f.Add((&Response{Code: CodeOK, Grad: grad, Precision: TOPK, Mask: mask}).Encode())
	f.Add((&Response{Code: CodeOK, Grad: grad, Precision: TOPK}).Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, err := ReadResponse(bytes.NewReader(b), 1<<20); err == nil {
			if _, err := ReadResponse(bytes.NewReader(p.Encode()), 1<<20); err != nil {
				t.Fatalf("re-encoded response fails: %v", err)
			}
		}
		p, err := ReadMaskedResponse(bytes.NewReader(b), 9, mask)
		if err != nil {
			return
		}
		if p.Precision == MASKED {
			for i, g := range p.Grad {
				if g != 0 && !mask.Has(i) {
					t.Fatalf("gradient value %d (%g) outside the mask", i, g)
				}
			}
		}
		if _, err := ReadMaskedResponse(bytes.NewReader(p.Encode()), 9, mask); err != nil {
			t.Fatalf("re-encoded masked response fails: %v", err)
		}
	})
}

func TestBalancerPrefersFastIdle(t *testing.T) {
	clk := clock.NewManual(time.Unix(0, 0))
	b := NewBalancer(rand.New(rand.NewPCG(1, 2)), clk)
	fast, slow, fresh := peer.ID("fast"), peer.ID("slow"), peer.ID("fresh")
	b.End(fast, 10, 100*time.Millisecond, false, 0, "")
	b.End(slow, 10, 400*time.Millisecond, false, 0, "")
	cands := []peer.ID{fast, slow}
	counts := map[peer.ID]int{}
	for range 10000 {
		p, _ := b.Pick(cands, nil)
		counts[p]++
	}
	if r := float64(counts[fast]) / float64(counts[slow]); r < 3.5 || r > 4.5 {
		t.Fatalf("fast:slow = %v, want about 4 (%v)", r, counts)
	}
	// A busy fast peer loses its edge.
	for range 3 {
		b.Begin(fast)
	}
	counts = map[peer.ID]int{}
	for range 10000 {
		p, _ := b.Pick(cands, nil)
		counts[p]++
	}
	if counts[fast] >= counts[slow]*2 {
		t.Fatalf("busy fast peer still preferred: %v", counts)
	}
	// A never measured peer is tried early.
	counts = map[peer.ID]int{}
	for range 1000 {
		p, _ := b.Pick([]peer.ID{slow, fresh}, nil)
		counts[p]++
	}
	if counts[fresh] < counts[slow] {
		t.Fatalf("fresh peer not tried early: %v", counts)
	}
}

func TestBalancerBans(t *testing.T) {
	clk := clock.NewManual(time.Unix(0, 0))
	b := NewBalancer(rand.New(rand.NewPCG(1, 2)), clk)
	a, c := peer.ID("a"), peer.ID("c")
	b.Begin(a)
	b.End(a, 0, 0, true, 10*time.Second, "timeout")
	for range 100 {
		if p, ok := b.Pick([]peer.ID{a, c}, nil); !ok || p != c {
			t.Fatalf("picked %v %v, want c while a is banned", p, ok)
		}
	}
	if _, ok := b.Pick([]peer.ID{a, c}, map[peer.ID]bool{c: true}); ok {
		t.Fatal("picked although every candidate is banned or skipped")
	}
	if banned, why := b.Banned(a); !banned || why != "timeout" {
		t.Fatalf("Banned(a) = %v %q", banned, why)
	}
	clk.Advance(11 * time.Second)
	if banned, _ := b.Banned(a); banned {
		t.Fatal("ban did not expire")
	}
}
