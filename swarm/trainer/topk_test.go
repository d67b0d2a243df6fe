package trainer

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/internal/bf16"
	"github.com/swarm-train/swarm/internal/testutil"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/pipeline"
)

// topkRun makes a victim's run send topk activations, keeping keep of
// each sample's values.
func topkRun(keep float64) func(*Config) {
	return func(c *Config) {
		c.Manifest.Training.Activations, c.Manifest.Training.ActivationKeep = run.ActivationsTopK, keep
	}
}

// In a topk run a sender marks each sample's largest values, the holder
// computes with the rest zeroed, and the gradient comes back at the marked
// places only, in bf16: exactly the holder's gradient for the activations
// it received, zero elsewhere. The micro-batch costs a fraction of its
// fp32 bytes both ways.
func TestPipelineTopK(t *testing.T) {
	const n = 4
	tr, _, _ := victim(t, 32, true, topkRun(0.25))
	snd, _, _ := victim(t, 32, false, topkRun(0.25))
	snd.h.Peerstore().AddAddrs(tr.h.ID(), tr.h.Addrs(), time.Hour)
	width := tr.stage.shape(1).ActPerSample
	r := rand.New(rand.NewPCG(9, 10))
	act := make([]float32, n*width)
	for i := range act {
		if r.IntN(3) > 0 {
			act[i] = float32(r.ExpFloat64()) // post-ReLU
		}
	}
	targets := []int32{1, 4, 7, 9}
	q := snd.stage.request(pipeline.KindTrain, 1, 3, n, act, targets)
	if q.Precision != pipeline.TOPK || q.Mask.Ones() != n*width/4 {
		t.Fatalf("precision %d marking %d values, want TOPK marking %d", q.Precision, q.Mask.Ones(), n*width/4)
	}
	payload := q.Encode()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := snd.stage.call(ctx, tr.h.ID(), q, payload)
	if err != nil || res.Code != pipeline.CodeOK {
		t.Fatalf("call: %v, %+v", err, res)
	}
	if res.Precision != pipeline.MASKED || len(res.Grad) != len(act) {
		t.Fatalf("answer: precision %d, %d gradient values", res.Precision, len(res.Grad))
	}
	dense := (&pipeline.Request{Kind: pipeline.KindTrain, Shard: 1, Epoch: 3, N: n, Act: act, Targets: targets}).Encode()
	if want := len(dense) - 4*len(act) + len(act)/8 + 2*n*width/4; len(payload) != want {
		t.Fatalf("topk request of %d bytes, want %d (fp32: %d)", len(payload), want, len(dense))
	}

	// What the holder computes for what it received.
	got := make([]float32, len(act))
	for i, x := range act {
		if q.Mask.Has(i) {
			got[i] = bf16.To32(bf16.From32(x))
		}
	}
	tr.mu.Lock()
	sh := tr.shard
	tr.mu.Unlock()
	want, err := tr.stage.process(ctx, sh, 1, 3, pipeline.KindTrain, &engine.Batch{N: n, Targets: targets}, got, targets)
	if err != nil {
		t.Fatal(err)
	}
	nonzero := 0
	for i, g := range res.Grad {
		w := float32(0)
		if q.Mask.Has(i) {
			w = bf16.To32(bf16.From32(want.Grad[i]))
		}
		if g != w {
			t.Fatalf("gradient value %d: %g, want %g (marked %v)", i, g, w, q.Mask.Has(i))
		}
		if g != 0 {
			nonzero++
		}
	}
	if nonzero == 0 {
		t.Fatal("the gradient is zero everywhere")
	}
}

// A topk run's holder refuses a request whose bitmap marks more values
// than the run's activation_keep allows before reading the values, as an
// oversize declaration.
func TestPipelineTopKOverfull(t *testing.T) {
	tr, ref, att := victim(t, 32, true, topkRun(0.25))
	width := tr.stage.shape(1).ActPerSample
	b := header(3, 1, uint32(width))
	b[len(b)-5] = pipeline.TOPK
	for range width / 8 {
		b = append(b, 0xff) // every value marked; then silence
	}
	s := open(t, att, tr.h.ID(), b)
	defer s.Reset()
	testutil.Eventually(t, 5*time.Second, testutil.Says("the holder refuses the over-full bitmap"), func() bool {
		return refusals(ref, whyOversize) == 1
	})
	if _, err := pipeline.ReadResponse(s, 0); err == nil {
		t.Fatal("the over-full request was answered")
	} else if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the holder left the stream open: %v", err)
	}
}

// A topk request's gradient must come back at the places it sent: a dense
// or differently marked one is refused, as is one of the wrong length.
func TestMisfitGradient(t *testing.T) {
	act := []float32{0, 2, 0, -5, 1, 0, 0, 3}
	q := &pipeline.Request{Kind: pipeline.KindTrain, N: 1, Act: act, Precision: pipeline.TOPK, Mask: pipeline.TopMask(act, 8, 2)}
	grad := []float32{1, 2, 3, 4, 5, 6, 7, 8}
	for _, c := range []struct {
		res  *pipeline.Response
		want string
	}{
		{&pipeline.Response{Grad: grad, Precision: pipeline.TOPK, Mask: q.Mask}, ""},
		{&pipeline.Response{Grad: grad, Precision: pipeline.BF16}, "not at the request's places"},
		{&pipeline.Response{Grad: grad, Precision: pipeline.TOPK}, "not at the request's places"},
		{&pipeline.Response{Grad: grad[:7], Precision: pipeline.TOPK, Mask: q.Mask}, "gradient of 7 values, want 8"},
	} {
		// As the answer arrives: encoded, then read with the request's mask.
		res, err := pipeline.ReadMaskedResponse(bytes.NewReader(c.res.Encode()), len(act), q.Mask)
		if err != nil {
			if c.want == "" || !strings.Contains(err.Error(), "bitmap covers") {
				t.Fatalf("reading %+v: %v", c.res, err)
			}
			continue
		}
		got := misfit(q, res)
		if (got == nil) != (c.want == "") || (got != nil && !strings.Contains(got.Error(), c.want)) {
			t.Errorf("answer %d values in precision %d: %v, want %q", len(res.Grad), res.Precision, got, c.want)
		}
	}
	// Dense requests take any precision.
	dense := &pipeline.Request{Kind: pipeline.KindTrain, N: 1, Act: act, Precision: pipeline.BF16}
	if err := misfit(dense, &pipeline.Response{Grad: grad, Precision: pipeline.FP32}); err != nil {
		t.Fatal(err)
	}
}
