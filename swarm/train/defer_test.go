package train

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/engine/native"
	"github.com/swarm-train/swarm/engine/torch"
)

// With the torch engine keeping losses on its device (as on CUDA; here
// forced on the CPU), TrainStep reads them once per step and reports the
// same losses as the native engine, which returns one per micro-batch.
// Skipped without PyTorch.
func TestTrainStepDeferredLoss(t *testing.T) {
	m := smallGPT(t, 3)
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	te, err := torch.New(torch.Options{Device: "cpu", Threads: 1, DeferLoss: true})
	if errors.Is(err, torch.ErrUnavailable) {
		t.Skipf("no PyTorch: %v", err)
	} else if err != nil {
		t.Fatal(err)
	}
	defer te.Close()
	var losses [2][]float64
	for k, eng := range []engine.Engine{te, native.New(native.WithThreads(1))} {
		begin := time.Now()
		tr, err := NewSolo(m, eng, Config{})
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			l, err := tr.TrainStep()
			if err != nil {
				t.Fatal(err)
			}
			losses[k] = append(losses[k], l)
		}
		tr.Close()
		t.Logf("%s: %.1f s", eng.Name(), time.Since(begin).Seconds())
	}
	for i := range losses[0] {
		if d := math.Abs(losses[0][i] - losses[1][i]); d > 1e-4*losses[1][i] || losses[0][i] == 0 {
			t.Fatalf("step %d: torch (deferred) loss %.6f, native %.6f", i, losses[0][i], losses[1][i])
		}
	}
}
