package pipeline

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/swarm-train/swarm/internal/bf16"
)

// TopMask marks, in each row, exactly the keep largest magnitudes among
// the non-zero values (ties to the earlier ones), as a sort would; rows
// with fewer non-zero values keep them all; NaN counts as largest.
func TestTopMask(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for trial := range 300 {
		width := 1 + r.IntN(70)
		rows := 1 + r.IntN(4)
		keep := 1 + r.IntN(width+2)
		v := make([]float32, width*rows)
		for i := range v {
			switch r.IntN(5) {
			case 0:
				v[i] = 0 // as after a ReLU
			case 1:
				v[i] = float32(r.IntN(3) - 1) // ties
			default:
				v[i] = float32(r.NormFloat64())
			}
		}
		if trial%5 == 0 {
			v[r.IntN(len(v))] = float32(math.Copysign(0, -1)) // −0 is zero too
		}
		if trial%7 == 0 {
			v[r.IntN(len(v))] = float32(math.NaN())
		}
		m := TopMask(v, width, keep)
		for row := range rows {
			// The brute force: indices sorted by magnitude, largest first,
			// stable, zeros dropped, the first keep marked.
			var idx []int
			for i := range width {
				if v[row*width+i] != 0 {
					idx = append(idx, i)
				}
			}
			slices.SortStableFunc(idx, func(a, b int) int {
				ma, mb := abs(v[row*width+a]), abs(v[row*width+b])
				switch {
				case ma > mb:
					return -1
				case ma < mb:
					return 1
				}
				return 0
			})
			want := map[int]bool{}
			for _, i := range idx[:min(keep, len(idx))] {
				want[i] = true
			}
			for i := range width {
				if m.Has(row*width+i) != want[i] {
					t.Fatalf("trial %d (width %d keep %d) row %d value %d (%g): marked %v, want %v", trial, width, keep, row, i, v[row*width+i], m.Has(row*width+i), want[i])
				}
			}
		}
		if err := m.check(len(v)); err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
	}
}

// abs is |x| with NaN as +Inf: the order TopMask keeps by.
func abs(x float32) float64 {
	a := math.Abs(float64(x))
	if math.IsNaN(a) {
		return math.Inf(1)
	}
	return a
}

// A TOPK request sends the bitmap and the marked values in bf16; the
// receiver sees the rest as zero. The answer's gradient goes MASKED: only
// the marked places, no bitmap.
func TestTopKRoundTrip(t *testing.T) {
	const width, n, keep = 100, 3, 10
	r := rand.New(rand.NewPCG(7, 8))
	act := make([]float32, width*n)
	for i := range act {
		if r.IntN(2) == 0 {
			act[i] = float32(r.ExpFloat64()) // post-ReLU: half zero
		}
	}
	q := &Request{Kind: KindTrain, Shard: 1, N: n, Act: act, Targets: []int32{1, 2, 3}, Precision: TOPK, Mask: TopMask(act, width, keep)}
	enc := q.Encode()
	dense := (&Request{Kind: KindTrain, Shard: 1, N: n, Act: act, Targets: []int32{1, 2, 3}}).Encode()
	if want := len(dense) - 4*len(act) + maskLen(len(act)) + 2*n*keep; len(enc) != want {
		t.Fatalf("topk request is %d bytes, want %d", len(enc), want)
	}
	lim := func(q *Request) (Limits, error) {
		return Limits{Act: width * int(q.N), Targets: int(q.N), Kept: keep * int(q.N)}, nil
	}
	got, err := ReadRequest(bytes.NewReader(enc), lim)
	if err != nil {
		t.Fatal(err)
	}
	if got.Precision != TOPK || !bytes.Equal(got.Mask, q.Mask) {
		t.Fatalf("precision %d, mask %x, want %x", got.Precision, got.Mask, q.Mask)
	}
	for i, x := range act {
		want := float32(0)
		if q.Mask.Has(i) {
			want = bf16.To32(bf16.From32(x))
		}
		if got.Act[i] != want {
			t.Fatalf("value %d: %g, want %g", i, got.Act[i], want)
		}
	}

	grad := make([]float32, len(act))
	for i := range grad {
		grad[i] = float32(r.NormFloat64())
	}
	resp := &Response{Code: CodeOK, Grad: grad, Precision: TOPK, Mask: got.Mask}
	renc := resp.Encode()
	if want := 1 + 2 + 4 + 4 + 1 + 4 + 2*n*keep + 2; len(renc) != want {
		t.Fatalf("masked answer is %d bytes, want %d", len(renc), want)
	}
	back, err := ReadMaskedResponse(bytes.NewReader(renc), len(act), q.Mask)
	if err != nil {
		t.Fatal(err)
	}
	if back.Precision != MASKED {
		t.Fatalf("answer precision %d, want MASKED", back.Precision)
	}
	for i, g := range grad {
		want := float32(0)
		if q.Mask.Has(i) {
			want = bf16.To32(bf16.From32(g))
		}
		if back.Grad[i] != want {
			t.Fatalf("gradient %d: %g, want %g", i, back.Grad[i], want)
		}
	}
	// Without the request's bitmap the masked answer cannot be read.
	if _, err := ReadResponse(bytes.NewReader(renc), len(act)); err == nil || !strings.Contains(err.Error(), "no bitmap to follow") {
		t.Fatalf("masked answer read without a mask: %v", err)
	}
	// Nor with a bitmap over other values.
	if _, err := ReadMaskedResponse(bytes.NewReader(renc), len(act), q.Mask[:10]); err == nil || !strings.Contains(err.Error(), "bitmap covers 80") {
		t.Fatalf("masked answer read with a short mask: %v", err)
	}
	// An error answer has no gradient: nothing masked to read.
	busy := (&Response{Code: CodeBusy, Msg: "busy", Precision: TOPK, Mask: q.Mask}).Encode()
	if p, err := ReadMaskedResponse(bytes.NewReader(busy), len(act), q.Mask); err != nil || p.Code != CodeBusy || len(p.Grad) != 0 {
		t.Fatalf("busy answer: %+v, %v", p, err)
	}
	// TOPK without a mask sends the non-zero values.
	sparse := (&Request{Kind: KindTrain, Shard: 1, N: n, Act: act, Targets: []int32{1, 2, 3}, Precision: TOPK}).Encode()
	all := func(q *Request) (Limits, error) { return Limits{Act: width * n, Targets: n, Kept: width * n}, nil }
	if got, err := ReadRequest(bytes.NewReader(sparse), all); err != nil || !slices.Equal(got.Act, bf16Round(act)) {
		t.Fatalf("sparse request: %v", err)
	}
}

func bf16Round(v []float32) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = bf16.To32(bf16.From32(x))
	}
	return out
}

// A TOPK block whose bitmap marks more values than the run's layout allows,
// or marks values past the block's end, is refused before its values are
// read; a MASKED block is never a request's.
func TestTopKHostile(t *testing.T) {
	lim := func(q *Request) (Limits, error) {
		return Limits{Act: 64 * int(q.N), Targets: int(q.N), Kept: 8 * int(q.N)}, nil
	}
	header := func(p uint8, n uint32) []byte {
		b := hostileHeader(1, n)
		b[len(b)-5] = p
		return b
	}
	// Every value marked, then silence: refused on the bitmap alone.
	b := append(header(TOPK, 64), bytes.Repeat([]byte{0xff}, 8)...)
	var err error
	got := allocated(func() { _, err = ReadRequest(bytes.NewReader(b), lim) })
	if !errors.Is(err, ErrOversize) || !strings.Contains(err.Error(), "bitmap marks 64 values, limit 8") {
		t.Fatalf("over-full bitmap: %v", err)
	}
	if got > 16<<10 {
		t.Fatalf("refusing an over-full bitmap allocated %d bytes", got)
	}
	// A bit past the last of 60 values.
	b = append(header(TOPK, 60), 1, 0, 0, 0, 0, 0, 0, 0x10)
	if _, err := ReadRequest(bytes.NewReader(b), lim); err == nil || !strings.Contains(err.Error(), "past the block's end") {
		t.Fatalf("bit past the end: %v", err)
	}
	// MASKED in a request.
	if _, err := ReadRequest(bytes.NewReader(header(MASKED, 8)), lim); err == nil || !strings.Contains(err.Error(), "no bitmap to follow") {
		t.Fatalf("masked request: %v", err)
	}
	// A TOPK block marking fewer values than it then sends: the extra bytes
	// are the targets' count, which then disagrees.
	q := &Request{Kind: KindTrain, Shard: 1, N: 1, Act: make([]float32, 64), Targets: []int32{1}, Precision: TOPK}
	q.Act[3] = 2
	enc := q.Encode()
	if got, err := ReadRequest(bytes.NewReader(enc), lim); err != nil || got.Act[3] != 2 || got.Mask.Ones() != 1 {
		t.Fatalf("one marked value: %+v, %v", got, err)
	}
	binary.BigEndian.PutUint32(enc[len(enc)-8:], 1<<20) // targets declared past the limit
	if _, err := ReadRequest(bytes.NewReader(enc), lim); !errors.Is(err, ErrOversize) {
		t.Fatalf("targets past the limit: %v", err)
	}
}

// Received is what a TOPK request's receiver decodes.
func TestReceived(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	v := make([]float32, 3*40)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	q := &Request{Kind: KindEval, N: 3, Act: v, Precision: TOPK, Mask: TopMask(v, 40, 7)}
	lim := func(*Request) (Limits, error) { return Limits{Act: len(v), Kept: 21}, nil }
	want, err := ReadRequest(bytes.NewReader(q.Encode()), lim)
	if err != nil {
		t.Fatal(err)
	}
	got := append([]float32(nil), v...)
	Received(got, 40, 7)
	if !slices.Equal(got, want.Act) {
		t.Fatalf("Received %v, decoded %v", got, want.Act)
	}
}

// Encoding never trusts a mask that does not fit the values: a short, long
// or overhanging one sends the non-zero values with their own bitmap, and
// what is sent reads back.
func TestTopKEncodeMismatchedMask(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	for range 500 {
		v := make([]float32, r.IntN(20))
		for i := range v {
			if r.IntN(2) == 0 {
				v[i] = float32(r.NormFloat64())
			}
		}
		mask := make(Mask, r.IntN(4))
		for i := range mask {
			mask[i] = byte(r.Uint32())
		}
		q := &Request{Kind: KindTrain, N: 1, Act: v, Precision: TOPK, Mask: mask}
		lim := func(*Request) (Limits, error) { return Limits{Act: 20, Kept: 20}, nil }
		if _, err := ReadRequest(bytes.NewReader(q.Encode()), lim); err != nil {
			t.Fatalf("%d values, mask %x: %v", len(v), mask, err)
		}
		p := &Response{Code: CodeOK, Grad: v, Precision: TOPK, Mask: mask}
		if _, err := ReadMaskedResponse(bytes.NewReader(p.Encode()), 20, mask); err != nil {
			t.Fatalf("answer of %d values, mask %x: %v", len(v), mask, err)
		}
	}
}

// BenchmarkTopMask: a 64-sample micro-batch of 1024 post-ReLU values a
// sample, a tenth of each kept, then encoded.
func BenchmarkTopMask(b *testing.B) {
	r := rand.New(rand.NewPCG(15, 16))
	act := make([]float32, 64*1024)
	for i := range act {
		if r.IntN(4) == 0 {
			act[i] = float32(r.ExpFloat64())
		}
	}
	b.SetBytes(int64(4 * len(act)))
	for b.Loop() {
		q := &Request{Kind: KindTrain, N: 64, Act: act, Precision: TOPK, Mask: TopMask(act, 1024, 103)}
		_ = q.Encode()
	}
}
