package pipeline

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Honest senders whose scales differ by a few times are never outliers; a
// sender ×100 above them always is (and never enters the reference); a
// sender alone is not judged; k = 0 judges nothing.
func TestNormWatch(t *testing.T) {
	w := NewNormWatch(10)
	rng := rand.New(rand.NewPCG(1, 2))
	honest := []peer.ID{"b0", "b1", "b2"}
	x := peer.ID("x")
	if out, _ := w.Check(x, 100); out {
		t.Fatal("a sender alone was judged")
	}
	for i := range 600 {
		// Scales drift down over training (×10 over the run) and vary by
		// up to 3× between senders and messages.
		base := 1 - 0.9*float64(i)/600
		p := honest[i%len(honest)]
		if out, ref := w.Check(p, base*(0.5+1.5*rng.Float64())); out {
			t.Fatalf("message %d: honest %s an outlier (ref %g)", i, p, ref)
		}
		if i%5 == 0 && i > 10 {
			if out, ref := w.Check(x, 100*base); !out {
				t.Fatalf("message %d: a sender at 100× passed (ref %g)", i, ref)
			}
		}
	}
	if out, _ := w.Check("b0", math.NaN()); !out {
		t.Error("a NaN scale passed")
	}
	off := NewNormWatch(0)
	off.Check("b0", 1)
	off.Check("b0", 1)
	if out, _ := off.Check("b1", 1e30); out {
		t.Error("k = 0 judged a sender")
	}
	var nilWatch *NormWatch
	if out, _ := nilWatch.Check("b0", 1e30); out {
		t.Error("a nil watch judged a sender")
	}
}

// A flood of fresh sender IDs keeps at most MaxPeers histories.
func TestNormWatchBounded(t *testing.T) {
	w := NewNormWatch(10)
	for i := range 3 * MaxPeers {
		w.Check(peer.ID(fmt.Sprintf("fake-%d", i)), 1)
	}
	if w.Len() > MaxPeers {
		t.Fatalf("%d senders remembered", w.Len())
	}
}

// A gradient's scale does not depend on the micro-batch's size: the loss is
// a mean, so each sample's gradient carries 1/N.
func TestScalePerSample(t *testing.T) {
	grad := func(n int) []float32 {
		v := make([]float32, 4*n)
		for i := range v {
			v[i] = float32(i%4+1) / float32(n)
		}
		return v
	}
	if a, b := Scale(grad(8), 8), Scale(grad(64), 64); math.Abs(a-b) > 1e-6*a {
		t.Fatalf("scales %g and %g for micro-batches of 8 and 64", a, b)
	}
	if s := Scale([]float32{3, 4, 0, 0}, 0); math.Abs(s-2.5) > 1e-12 {
		t.Fatalf("activations' scale %g, want their RMS 2.5", s)
	}
}
