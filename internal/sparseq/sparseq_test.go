package sparseq

import (
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/swarm-train/swarm/internal/kth"
)

// sparse returns n values of which about one in every is nonzero.
func sparse(r *rand.Rand, n, every int) []float32 {
	v := make([]float32, n)
	for i := range v {
		if r.IntN(every) == 0 {
			v[i] = float32(r.NormFloat64())
		}
	}
	return v
}

// Encode then Decode gives Quantize's values, within one rounding of the
// block's step; encoding what Compressor produced again changes nothing.
func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, bits := range Bits {
		for _, n := range []int{0, 1, 7, Block - 1, Block, 3*Block + 17} {
			src := sparse(r, n, 5)
			enc := Encode(nil, src, bits)
			if len(enc) > MaxLen(n, bits) {
				t.Fatalf("bits %d n %d: %d bytes > MaxLen %d", bits, n, len(enc), MaxLen(n, bits))
			}
			got := make([]float32, n)
			for i := range got {
				got[i] = 42 // Decode clears what it does not set
			}
			if err := Decode(got, enc, bits); err != nil {
				t.Fatalf("bits %d n %d: %v", bits, n, err)
			}
			want := slices.Clone(src)
			Quantize(want, bits)
			var steps []float32
			for b := 0; b < n; b += Block {
				steps = append(steps, blockScale(src[b:min(b+Block, n)], qmax(bits)))
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("bits %d n %d: value %d = %v, want %v (input %v)", bits, n, i, got[i], want[i], src[i])
				}
				// Error at most half a step of the block's grid.
				step := steps[i/Block]
				if d := math.Abs(float64(got[i] - src[i])); d > float64(step)/2*(1+1e-6) {
					t.Fatalf("bits %d: value %d off by %v, step %v", bits, i, d, step)
				}
			}
			// Idempotent: the decoded values encode to the same values.
			again := make([]float32, n)
			if err := Decode(again, Encode(nil, got, bits), bits); err != nil {
				t.Fatal(err)
			}
			for i := range again {
				if d := math.Abs(float64(again[i] - got[i])); d > 1e-6*math.Abs(float64(got[i])) {
					t.Fatalf("bits %d: re-encoding moved value %d from %v to %v", bits, i, got[i], again[i])
				}
			}
		}
	}
}

// Sizes: a message holds K indices, a scale per block used and K codes.
func TestEncodedSize(t *testing.T) {
	v := make([]float32, 2*Block)
	v[3], v[10], v[Block+5] = 1, -1, 0.5
	enc := Encode(nil, v, 4)
	// 1 (K) + 3 gaps of 1 byte... the third gap is Block+5-10-1 = 4090: 2 bytes.
	if want := 1 + 1 + 1 + 2 + 2*4 + 2; len(enc) != want {
		t.Errorf("%d bytes, want %d", len(enc), want)
	}
}

func TestDecodeRefuses(t *testing.T) {
	good := Encode(nil, []float32{0, 1, 0, -2, 0, 0, 0, 0}, 8)
	withCount := func(k uint64, rest []byte) []byte { return append(binary.AppendUvarint(nil, k), rest...) }
	bad := map[string][]byte{
		"empty":            nil,
		"count past n":     withCount(9, nil),
		"huge count":       withCount(1<<60, nil),
		"truncated index":  withCount(2, []byte{1}),
		"index past n":     withCount(1, []byte{8}),
		"index overflow":   withCount(2, []byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}),
		"short":            good[:len(good)-1],
		"long":             append(slices.Clone(good), 0),
		"zero scale":       withCount(1, []byte{0, 0, 0, 0, 0, 127}),
		"NaN scale":        withCount(1, append([]byte{0}, append(binary.LittleEndian.AppendUint32(nil, math.Float32bits(float32(math.NaN()))), 127)...)),
		"Inf scale":        withCount(1, append([]byte{0}, append(binary.LittleEndian.AppendUint32(nil, 0x7f800000), 127)...)),
		"code out of grid": withCount(1, append([]byte{0}, append(binary.LittleEndian.AppendUint32(nil, math.Float32bits(1)), 255)...)),
		"overflow":         withCount(1, append([]byte{0}, append(binary.LittleEndian.AppendUint32(nil, math.Float32bits(math.MaxFloat32)), 254)...)),
	}
	for name, src := range bad {
		dst := make([]float32, 8)
		if err := Decode(dst, src, 8); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v, want ErrFormat", name, err)
		}
	}
	if err := Decode(make([]float32, 8), good, 8); err != nil {
		t.Errorf("good: %v", err)
	}
	if err := Decode(make([]float32, 8), good, 3); !errors.Is(err, ErrFormat) {
		t.Errorf("3 bits: %v", err)
	}
}

// A count as large as the part is the most a peer can make the decoder
// walk: the work is bounded by the message's own length, and nothing is
// allocated.
func TestDecodeAllocatesNothing(t *testing.T) {
	src := sparse(rand.New(rand.NewPCG(3, 4)), 1<<16, 3)
	enc := Encode(nil, src, 2)
	dst := make([]float32, len(src))
	if a := testing.AllocsPerRun(5, func() { _ = Decode(dst, enc, 2) }); a != 0 {
		t.Errorf("%v allocations a decode", a)
	}
}

// Error feedback: a vector keeps the largest values; what it leaves is in
// the residual, and over many rounds the values sent plus the residual add
// up to the values given.
func TestErrorFeedback(t *testing.T) {
	if _, err := NewCompressor(0, 8); err == nil {
		t.Error("keep 0 accepted")
	}
	if _, err := NewCompressor(1.5, 8); err == nil {
		t.Error("keep 1.5 accepted")
	}
	if _, err := NewCompressor(0.1, 3); err == nil {
		t.Error("3 bits accepted")
	}
	c, err := NewCompressor(0.01, 2)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(7, 8))
	const n = 10000
	given, sent := make([]float64, n), make([]float64, n)
	for round := range 50 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(r.NormFloat64())
			given[i] += float64(v[i])
		}
		in := slices.Clone(v)
		for i, e := range c.Residual() {
			in[i] += e
		}
		c.Compress(v)
		nz := 0
		for i, x := range v {
			if x != 0 {
				nz++
				sent[i] += float64(x)
			}
		}
		if nz > c.Kept(n) {
			t.Fatalf("round %d: %d values kept, budget %d", round, nz, c.Kept(n))
		}
		if round == 0 { // every kept value is among the largest inputs
			mag := make([]float32, n)
			for i := range in {
				mag[i] = float32(math.Abs(float64(in[i])))
			}
			thr := kth.Largest(slices.Clone(mag), c.Kept(n))
			for i, x := range v {
				if x != 0 && mag[i] < thr {
					t.Fatalf("kept value %d (|%v|) below the threshold %v", i, in[i], thr)
				}
			}
		}
	}
	for i := range given {
		if d := math.Abs(given[i] - sent[i] - float64(c.Residual()[i])); d > 1e-3 {
			t.Fatalf("value %d: given %v, sent %v + residual %v", i, given[i], sent[i], c.Residual()[i])
		}
	}
	// The residual stays bounded: it does not grow with the rounds.
	var norm float64
	for _, x := range c.Residual() {
		norm += float64(x) * float64(x)
	}
	if rms := math.Sqrt(norm / n); rms > 20 {
		t.Errorf("residual rms %v after 50 rounds", rms)
	}
}

func FuzzDecode(f *testing.F) {
	r := rand.New(rand.NewPCG(9, 10))
	for _, bits := range Bits {
		f.Add(Encode(nil, sparse(r, 300, 4), bits), uint16(300), uint8(bits))
	}
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f}, uint16(10), uint8(8))
	f.Fuzz(func(t *testing.T, src []byte, n uint16, bits uint8) {
		dst := make([]float32, n)
		if err := Decode(dst, src, int(bits)); err != nil {
			return
		}
		for i, x := range dst {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				t.Fatalf("value %d is %v", i, x)
			}
		}
		// What decodes re-encodes to something that decodes to the same.
		again := make([]float32, n)
		if err := Decode(again, Encode(nil, dst, int(bits)), int(bits)); err != nil {
			t.Fatalf("re-encoded: %v", err)
		}
	})
}
