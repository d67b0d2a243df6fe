package averaging

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func TestPartition(t *testing.T) {
	ms := []member{{Bandwidth: 1}, {Bandwidth: 3}, {Bandwidth: 2, Client: true}, {Bandwidth: 0}, {Bandwidth: 1}}
	l := partition(101, ms, 10)
	total := 0
	for i, sh := range l.Shares {
		total += sh.End - sh.Start
		if (ms[i].Client || ms[i].Bandwidth == 0) && sh.End != sh.Start {
			t.Fatalf("member %d (client or zero bandwidth) got share %v", i, sh)
		}
		for k, p := range l.Parts[i] {
			if p.End-p.Start > 10 || p.End <= p.Start {
				t.Fatalf("part %d of member %d: %v", k, i, p)
			}
		}
	}
	if total != 101 || l.Shares[4].End != 101 {
		t.Fatalf("shares %v do not cover the vector", l.Shares)
	}
	if got := l.Shares[1].End - l.Shares[1].Start; got < 59 || got > 61 {
		t.Fatalf("bandwidth 3 of 5 got %d of 101", got)
	}
}

// Aligned shares start on multiples of the block and still cover the
// vector; clients still get none.
func TestPartitionAligned(t *testing.T) {
	ms := []member{{Bandwidth: 1}, {Bandwidth: 1}, {Bandwidth: 1, Client: true}, {Bandwidth: 2}}
	for _, n := range []int{0, 100, 4096, 3*4096 + 5, 100003} {
		l := partitionAligned(n, ms, 4096, 4096)
		off := 0
		for i, sh := range l.Shares {
			if sh.Start != off || (sh.Start%4096 != 0 && sh.Start != n) {
				t.Fatalf("n %d: share %d is %v", n, i, sh)
			}
			if ms[i].Client && sh.End != sh.Start {
				t.Fatalf("n %d: client got %v", n, sh)
			}
			for _, p := range l.Parts[i] {
				if p.Start%4096 != 0 {
					t.Fatalf("n %d: part %v", n, p)
				}
			}
			off = sh.End
		}
		if off != n {
			t.Fatalf("n %d: shares end at %d", n, off)
		}
	}
}

// TestPartitionCapsBandwidth: a member declaring MaxBandwidth (a legal
// value) reduces at most maxBandwidthRatio times a typical share, not the
// whole vector; honest differences below the cap are kept.
func TestPartitionCapsBandwidth(t *testing.T) {
	ms := []member{{Bandwidth: 1}, {Bandwidth: MaxBandwidth}, {Bandwidth: 1}, {Bandwidth: 2}}
	l := partition(1200, ms, 100)
	got := func(i int) int { return l.Shares[i].End - l.Shares[i].Start }
	// Bandwidths become 1, 8, 1, 2 (the lower median is 1).
	if got(1) != 800 || got(0) != 100 || got(2) != 100 || got(3) != 200 {
		t.Fatalf("shares %v, want 100 800 100 200", l.Shares)
	}
	// Two members: the lower median is the honest one's.
	l = partition(900, []member{{Bandwidth: 1}, {Bandwidth: MaxBandwidth}}, 100)
	if l.Shares[1].End-l.Shares[1].Start != 800 {
		t.Fatalf("pair shares %v, want the liar capped at 8 of 9", l.Shares)
	}
}

// reducerCase drives a reducer through scripted events and checks each part's
// value and contributors.
func TestReducerAccounting(t *testing.T) {
	t0 := time.Unix(0, 0)
	parts := []span{{0, 2}, {2, 4}, {4, 6}}
	// Member m's value at every position is vals[m]; weights w[m].
	vals := []float32{1, 2, 4, 8}
	w := []float64{1, 1, 2, 4}
	own := []float32{1, 1, 1, 1, 1, 1}
	partOf := func(s int) []float32 { return []float32{vals[s], vals[s]} }
	type step func(r *reducer)
	hdr := func(s int) step { return func(r *reducer) { _ = r.Header(s, w[s], t0) } }
	part := func(s, k int) step { return func(r *reducer) { _ = r.Part(s, k, partOf(s), t0) } }
	drop := func(s int) step { return func(r *reducer) { r.Drop(s, "test") } }
	tick := func(d time.Duration) step { return func(r *reducer) { r.Tick(t0.Add(d)) } }
	mean := func(ms ...int) float32 {
		var num, den float64
		for _, m := range ms {
			num += w[m] * float64(vals[m])
			den += w[m]
		}
		return float32(num / den)
	}
	cases := []struct {
		name    string
		steps   []step
		want    [][]int // contributors per part; nil: part not final
		dropped []int
		reason  string
	}{
		{"all deliver", []step{hdr(1), hdr(2), hdr(3), part(1, 0), part(2, 0), part(3, 0), part(1, 1), part(2, 1), part(3, 1), part(1, 2), part(2, 2), part(3, 2)},
			[][]int{{0, 1, 2, 3}, {0, 1, 2, 3}, {0, 1, 2, 3}}, nil, ""},
		{"parts wait for the slowest", []step{hdr(1), hdr(2), hdr(3), part(1, 0), part(2, 0), part(1, 1)},
			[][]int{nil, nil, nil}, nil, ""},
		{"sender fails mid-round", []step{hdr(1), hdr(2), hdr(3), part(1, 0), part(2, 0), part(3, 0), part(1, 1), part(2, 1), drop(3), part(1, 2), part(2, 2)},
			[][]int{{0, 1, 2, 3}, {0, 1, 2}, {0, 1, 2}}, []int{3}, "test"},
		{"stalled sender dropped by timeout", []step{hdr(1), hdr(2), hdr(3), part(1, 0), part(2, 0), part(3, 0), part(1, 1), part(2, 1), part(1, 2), part(2, 2), tick(time.Second)},
			[][]int{{0, 1, 2, 3}, {0, 1, 2}, {0, 1, 2}}, []int{3}, "stalled after 1 of 3 parts"},
		{"never connected", []step{hdr(1), hdr(2), part(1, 0), part(2, 0), part(1, 1), part(2, 1), part(1, 2), part(2, 2), tick(time.Second)},
			[][]int{{0, 1, 2}, {0, 1, 2}, {0, 1, 2}}, []int{3}, "never connected"},
		{"deadline ends everything", []step{hdr(1), hdr(2), hdr(3), part(1, 0), tick(10 * time.Second)},
			[][]int{{0, 1}, {0}, {0}}, []int{1, 2, 3}, "round deadline"},
		{"out of order part drops the sender", []step{hdr(1), hdr(2), hdr(3), part(1, 1), part(2, 0), part(3, 0)},
			[][]int{{0, 2, 3}, nil, nil}, []int{1}, "out of order"},
		{"wrong length drops the sender", []step{hdr(1), hdr(2), hdr(3), func(r *reducer) { _ = r.Part(1, 0, []float32{1}, t0) }, part(2, 0), part(3, 0)},
			[][]int{{0, 2, 3}, nil, nil}, []int{1}, "has 1 values"},
		{"invalid weight", []step{func(r *reducer) { _ = r.Header(1, math.NaN(), t0) }, hdr(2), hdr(3), part(2, 0), part(3, 0)},
			[][]int{{0, 2, 3}, nil, nil}, []int{1}, "invalid weight"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newReducer(0, 4, parts, own, w[0], t0, 500*time.Millisecond, t0.Add(5*time.Second), reduceOpts{})
			final := map[int]finalPart{}
			for _, st := range tc.steps {
				st(r)
				for _, fp := range r.Ready() {
					if _, dup := final[fp.Index]; dup {
						t.Fatalf("part %d final twice", fp.Index)
					}
					fp.Avg = append([]float32(nil), fp.Avg...)
					final[fp.Index] = fp
				}
			}
			for k, want := range tc.want {
				fp, ok := final[k]
				if want == nil {
					if ok {
						t.Fatalf("part %d final too early", k)
					}
					continue
				}
				if !ok {
					t.Fatalf("part %d not final", k)
				}
				for m := 0; m < 4; m++ {
					in := false
					for _, c := range want {
						in = in || c == m
					}
					if fp.Contributors.has(m) != in {
						t.Fatalf("part %d: contributor %d present=%v, want %v", k, m, fp.Contributors.has(m), in)
					}
				}
				wantV := mean(want...)
				for _, v := range fp.Avg {
					if math.Abs(float64(v-wantV)) > 1e-6 {
						t.Fatalf("part %d: value %v, want %v (renormalised over %v)", k, v, wantV, want)
					}
				}
			}
			for _, s := range tc.dropped {
				why, ok := r.Dropped()[s]
				if !ok || !strings.Contains(why, tc.reason) {
					t.Fatalf("sender %d: dropped=%v reason %q, want %q", s, ok, why, tc.reason)
				}
			}
			if len(r.Dropped()) != len(tc.dropped) {
				t.Fatalf("dropped %v, want %v", r.Dropped(), tc.dropped)
			}
		})
	}
}

func TestReducerNoShare(t *testing.T) {
	r := newReducer(1, 3, nil, nil, 1, time.Unix(0, 0), time.Second, time.Unix(9, 0), reduceOpts{})
	if !r.Done() {
		t.Fatal("a member without a share is done at once")
	}
}

// TestReducerRobust: a buffered reducer with CenteredClip and NormK rejects a
// sender whose part is 100× the others' at the first part it sees, keeps it
// out of every later part (what it already sent included) and aggregates the
// rest; the dropped sender's later parts are refused.
func TestReducerRobust(t *testing.T) {
	t0 := time.Unix(0, 0)
	parts := []span{{0, 3}, {3, 6}}
	// Honest members 0..3 hold values near 1; member 4 sends -100.
	val := func(s int) float32 { return 1 + float32(s)/100 }
	part := func(s int) []float32 {
		v := val(s)
		if s == 4 {
			v = -100
		}
		return []float32{v, v, v}
	}
	own := []float32{val(0), val(0), val(0), val(0), val(0), val(0)}
	r := newReducer(0, 5, parts, own, 1, t0, time.Second, t0.Add(time.Minute),
		reduceOpts{Agg: AggregateCenteredClip, NormK: 10})
	for s := 1; s < 5; s++ {
		if err := r.Header(s, 1, t0); err != nil {
			t.Fatal(err)
		}
	}
	// The liar delivers both parts first; the honest members follow.
	for k := range parts {
		if err := r.Part(4, k, part(4), t0); err != nil {
			t.Fatal(err)
		}
	}
	for s := 1; s < 4; s++ {
		for k := range parts {
			if err := r.Part(s, k, part(s), t0); err != nil {
				t.Fatal(err)
			}
		}
	}
	ready := r.Ready()
	if !r.Done() || len(ready) != 2 {
		t.Fatalf("done %v, %d parts ready", r.Done(), len(ready))
	}
	for _, fp := range ready {
		if fp.Contributors.has(4) {
			t.Errorf("part %d counts the liar", fp.Index)
		}
		for s := range 4 {
			if !fp.Contributors.has(s) {
				t.Errorf("part %d lacks honest member %d", fp.Index, s)
			}
		}
		for _, v := range fp.Avg {
			if want := float32(1.015); math.Abs(float64(v-want)) > 1e-6 {
				t.Errorf("part %d: %v, want the honest mean %v", fp.Index, v, want)
			}
		}
	}
	if ev, ok := r.Outliers()[4]; !ok || !strings.Contains(ev, "median") {
		t.Fatalf("outliers %v, want member 4 with the evidence", r.Outliers())
	}
	if len(r.Outliers()) != 1 {
		t.Fatalf("outliers %v: an honest member rejected", r.Outliers())
	}
	if len(r.free) == 0 {
		t.Error("no buffer returned to the free list")
	}
}

// TestReducerNormMedianOfCarriers: the median norm that outliers are
// measured against counts only the contributors that carry something. A
// member with no weight to speak of (a holder with no samples: weight 1e-3)
// or a part of zeros does not pull it down, so an honest sender whose norm
// is 12× the reducer's own is kept; one 100× the others' is still rejected.
func TestReducerNormMedianOfCarriers(t *testing.T) {
	t0 := time.Unix(0, 0)
	parts := []span{{0, 2}}
	for _, c := range []struct {
		name      string
		weight    float64   // member 2's
		value     float32   // member 2's values
		big       float32   // member 1's values (the reducer's own: 1)
		rejected1 bool      // member 1 rejected
		others    []float32 // values of members 3.. (weight 1)
	}{
		{"no samples, zeros", 1e-3, 0, 12, false, nil},
		{"full weight, zeros", 1, 0, 12, false, nil},
		{"no samples, small values", 1e-3, 0.01, 12, false, nil},
		{"a real third member", 1, 1, 12, true, nil},
		{"100x among carriers", 1e-3, 0, 100, true, []float32{1}},
	} {
		n := 3 + len(c.others)
		r := newReducer(0, n, parts, []float32{1, 1}, 1, t0, time.Second, t0.Add(time.Minute),
			reduceOpts{Agg: AggregateCenteredClip, NormK: 10})
		weights := append([]float64{1, c.weight}, make([]float64, len(c.others))...)
		for i := range c.others {
			weights[2+i] = 1
		}
		values := append([]float32{c.big, c.value}, c.others...)
		for s := 1; s < n; s++ {
			if err := r.Header(s, weights[s-1], t0); err != nil {
				t.Fatal(err)
			}
		}
		for s := 1; s < n; s++ {
			if err := r.Part(s, 0, []float32{values[s-1], values[s-1]}, t0); err != nil {
				t.Fatal(err)
			}
		}
		if !r.Done() {
			t.Fatalf("%s: not done", c.name)
		}
		if _, rej := r.Outliers()[1]; rej != c.rejected1 {
			t.Errorf("%s: member 1 (values %g) rejected %v, want %v (outliers %v)", c.name, c.big, rej, c.rejected1, r.Outliers())
		}
		if _, rej := r.Outliers()[2]; rej {
			t.Errorf("%s: member 2 rejected: %v", c.name, r.Outliers())
		}
	}
}

// TestReducerRobustNoBuffering: the plain mean does not keep the parts (the
// streamed path is untouched by the robust options).
func TestReducerRobustNoBuffering(t *testing.T) {
	if (reduceOpts{}).buffered() || !(reduceOpts{NormK: 3}).buffered() || !(reduceOpts{Agg: AggregateTrimmedMean}).buffered() {
		t.Fatal("buffered() disagrees with the options")
	}
}

// BenchmarkReducer: one member's share of a 64 MiB vector in a group of 8
// (8 MiB, 16 parts of 128 Ki values), every sender's parts fed in order, no
// network: what each aggregation costs a reducer per round.
func BenchmarkReducer(b *testing.B) {
	const n, partSize, nParts = 8, 128 << 10, 16
	parts := make([]span, nParts)
	for k := range parts {
		parts[k] = span{k * partSize, (k + 1) * partSize}
	}
	rng := rand.New(rand.NewPCG(3, 4))
	vals := make([][]float32, n)
	for s := range vals {
		vals[s] = make([]float32, nParts*partSize)
		for j := range vals[s] {
			vals[s][j] = float32(rng.NormFloat64())
		}
	}
	t0 := time.Unix(0, 0)
	pool := &vecPool{}
	pool.fit(n*nParts*partSize, partSize, n, 1)
	for _, o := range []reduceOpts{{}, {Agg: AggregateCenteredClip}, {Agg: AggregateCenteredClip, NormK: 10},
		{Agg: AggregateCenteredClip, NormK: 10, Keep: true}, {Agg: AggregateTrimmedMean}} {
		name := o.Agg.String()
		if o.NormK > 0 {
			name += "+norm"
		}
		if o.Keep {
			name += "+keep"
		}
		o.Pool = pool // as a round does: buffers from the round before
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(n * 4 * nParts * partSize))
			for b.Loop() {
				r := newReducer(0, n, parts, vals[0], 1, t0, time.Hour, t0.Add(time.Hour), o)
				for s := 1; s < n; s++ {
					_ = r.Header(s, 1, t0)
				}
				for k, sp := range parts {
					for s := 1; s < n; s++ {
						if err := r.Part(s, k, vals[s][sp.Start:sp.End], t0); err != nil {
							b.Fatal(err)
						}
					}
				}
				if !r.Done() {
					b.Fatal("not done")
				}
				r.release()
			}
		})
	}
}
