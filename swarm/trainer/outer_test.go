package trainer

import (
	"math"
	"testing"

	"github.com/swarm-train/swarm/spec/run"
)

func near(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range got {
		if math.Abs(float64(got[i]-want[i])) > 1e-6 {
			t.Fatalf("%s = %v, want %v", what, got, want)
		}
	}
}

// The outer step worked by hand, lr 0.7, μ 0.9:
//
//	anchor [1, 2], momentum [0.5, 0], parameters [0.8, 2.4]
//	Δ         = anchor − parameters       = [0.2, −0.4]
//	momentum' = 0.9·[0.5, 0] + [0.2, −0.4] = [0.65, −0.4]
//	anchor'   = [1 − 0.7·(0.2 + 0.9·0.65), 2 − 0.7·(−0.4 + 0.9·(−0.4))]
//	          = [1 − 0.7·0.785, 2 + 0.7·0.76] = [0.4505, 2.532]
func TestNesterovByHand(t *testing.T) {
	anchor, mom, params := []float32{1, 2}, []float32{0.5, 0}, []float32{0.8, 2.4}
	delta := outerDelta(anchor, params)
	near(t, "delta", delta, []float32{0.2, -0.4})
	newAnchor, newMom := nesterov(anchor, mom, delta, 0.7, 0.9)
	near(t, "momentum'", newMom, []float32{0.65, -0.4})
	near(t, "anchor'", newAnchor, []float32{0.4505, 2.532})
	// Pure: the arguments are as they were.
	near(t, "anchor", anchor, []float32{1, 2})
	near(t, "momentum", mom, []float32{0.5, 0})
	near(t, "delta after", delta, []float32{0.2, -0.4})
}

// From zero momentum the first step is anchor − lr·(1 + μ)·Δ; with lr 1
// and μ 0 the outer step is plain averaging: it lands on the holders' mean
// parameters.
func TestNesterovSpecialCases(t *testing.T) {
	anchor := []float32{1, -1, 0.5}
	a, b := []float32{0.5, -0.5, 0.5}, []float32{0.9, -2, 1.5} // two holders' parameters
	da, db := outerDelta(anchor, a), outerDelta(anchor, b)
	mean := make([]float32, len(anchor))
	for i := range mean {
		mean[i] = (da[i] + db[i]) / 2 // [0.3, 0.25, -0.5]
	}
	got, mom := nesterov(anchor, make([]float32, 3), mean, 1, 0)
	near(t, "averaging step", got, []float32{0.7, -1.25, 1})
	near(t, "its momentum", mom, mean)
	got, mom = nesterov(anchor, make([]float32, 3), mean, 0.5, 0.9)
	// anchor − 0.5·1.9·Δ = [1 − 0.285, −1 − 0.2375, 0.5 + 0.475]
	near(t, "first step", got, []float32{0.715, -1.2375, 0.975})
	near(t, "first momentum", mom, mean)
}

// After the outer step a holder's parameters are the new anchor, plus the
// progress it made since its delta was taken when that carries over.
func TestOuterParams(t *testing.T) {
	anchor := []float32{0.45, 2.5}
	params, taken := []float32{0.9, 1.6}, []float32{1, 1.5} // moved [−0.1, 0.1] while averaging
	near(t, "carried", outerParams(anchor, params, taken), []float32{0.35, 2.6})
	near(t, "not carried", outerParams(anchor, params, nil), anchor)
	near(t, "params unchanged", params, []float32{0.9, 1.6})
}

// The outer state's fingerprint tells equal states from any that differ in
// one bit (a -0 from a 0 too), in a value past the hash buffer, or in where
// the anchor ends and the momentum starts; it is never 0, a record's
// "none".
func TestOuterFingerprint(t *testing.T) {
	anchor := make([]float32, 10_000) // beyond one 16 KiB buffer of values
	for i := range anchor {
		anchor[i] = float32(i) * 0.25
	}
	mom := []float32{1, 2, 3}
	base := outerFingerprint(anchor, mom)
	if base == 0 || outerFingerprint(nil, nil) == 0 {
		t.Fatal("a fingerprint of 0")
	}
	if outerFingerprint(append([]float32(nil), anchor...), []float32{1, 2, 3}) != base {
		t.Fatal("equal states, different fingerprints")
	}
	flip := func(v []float32, i int) []float32 {
		w := append([]float32(nil), v...)
		w[i] = math.Float32frombits(math.Float32bits(w[i]) ^ 1)
		return w
	}
	negZero := append([]float32(nil), anchor...)
	negZero[0] = float32(math.Copysign(0, -1))
	for name, sum := range map[string]uint64{
		"last anchor value": outerFingerprint(flip(anchor, len(anchor)-1), mom),
		"first value":       outerFingerprint(flip(anchor, 0), mom),
		"momentum":          outerFingerprint(anchor, flip(mom, 1)),
		"-0":                outerFingerprint(negZero, mom),
		"boundary":          outerFingerprint(append(append([]float32(nil), anchor...), 1), mom[1:]),
	} {
		if sum == base {
			t.Errorf("%s changed, fingerprint did not", name)
		}
	}
}

// Without outer momentum a holder's momentum has no part in its next
// anchor, so the fingerprint leaves it out: a joiner's or a restarted
// node's own momentum does not set it apart from mates with the same
// anchor. With momentum it does.
func TestOuterStateMomentum(t *testing.T) {
	anchor := []float32{1, 2, 3}
	for _, c := range []struct {
		mu    float64
		apart bool
	}{{0, false}, {0.9, true}} {
		var m run.Manifest
		m.Averaging.OuterMomentum = c.mu
		a := &Trainer{m: &m, anchor: anchor, outerMom: []float32{0.5, 0, 0}}
		b := &Trainer{m: &m, anchor: append([]float32(nil), anchor...), outerMom: make([]float32, 3)}
		if apart := a.outerState() != b.outerState(); apart != c.apart {
			t.Errorf("outer momentum %g: momenta alone set the fingerprints apart: %v, want %v", c.mu, apart, c.apart)
		}
		b.anchor[2] = 3.5
		if a.outerState() == b.outerState() {
			t.Errorf("outer momentum %g: anchors differ, fingerprints do not", c.mu)
		}
	}
}
