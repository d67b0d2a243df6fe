package trainer

import (
	"strings"
	"testing"
	"time"

	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/swarm/pipeline"
)

// A training request one epoch ahead of the node waits for the node's
// epoch, on the trainer's clock: answered busy when the wait runs out,
// admitted as soon as the epoch arrives (and the wait's timer is stopped).
func TestAdmitWaitsForTheEpoch(t *testing.T) {
	clk := clock.NewManual(time.Unix(1000, 0))
	tr, _, _ := victim(t, 32, true, func(c *Config) { c.Clock = clk }) // holds shard 1 at epoch 3
	type admitted struct {
		epoch uint64
		code  uint8
		err   error
	}
	admit := func() <-chan admitted {
		out := make(chan admitted, 1)
		go func() {
			_, epoch, code, err := tr.admit(1, pipeline.KindTrain, 4, 2*time.Second)
			out <- admitted{epoch, code, err}
		}()
		clk.BlockUntil(1) // it waits for epoch 4, at most 2 s
		return out
	}

	res := admit()
	clk.Advance(2*time.Second - time.Millisecond)
	select {
	case r := <-res:
		t.Fatalf("answered before the wait ran out: %+v", r)
	default:
	}
	clk.Advance(time.Millisecond)
	if r := <-res; r.code != pipeline.CodeBusy || r.err == nil || !strings.Contains(r.err.Error(), "still finishing epoch 3") {
		t.Fatalf("after the wait: %+v, want busy", r)
	}
	tr.mu.Lock()
	epoch := tr.epoch
	tr.mu.Unlock()
	if epoch != 3 {
		t.Fatalf("epoch %d after a request of epoch 4, want 3: a request is no input to the epoch", epoch)
	}

	res = admit()
	tr.reopen(tr.shard, 4)
	if r := <-res; r.code != pipeline.CodeOK || r.err != nil || r.epoch != 4 {
		t.Fatalf("once the node reached epoch 4: %+v, want admitted", r)
	}
	if n := clk.Pending(); n != 0 {
		t.Fatalf("%d timers left armed", n)
	}
	tr.mu.Lock()
	inflight := tr.inflight
	tr.mu.Unlock()
	if inflight != 1 {
		t.Fatalf("%d micro-batches in flight, want the admitted one", inflight)
	}
	tr.release()
}

// A micro-batch that finishes after its epoch was reopened at the same
// number (drawn set to 0 under it) leaves drawn at 0, not below: the
// record's InFlight stays one that peers accept (a negative one was refused
// as malformed and got honest holders banned in WAN runs).
func TestUndrawAfterReopenNeverNegative(t *testing.T) {
	tr, _, _ := victim(t, 32, true) // holds shard 1 at epoch 3
	tr.mu.Lock()
	epoch := tr.epoch
	tr.drawn, tr.inflight = 64, 1
	tr.mu.Unlock()
	tr.reopen(tr.shard, epoch) // same number: drawn back to 0
	tr.undraw(epoch, 64)
	tr.mu.Lock()
	drawn := tr.drawn
	tr.mu.Unlock()
	r := tr.record()
	if drawn != 0 || r.InFlight != 0 {
		t.Fatalf("drawn %d, record in flight %d after the micro-batch ended; want 0 and 0", drawn, r.InFlight)
	}
	r.Peer = tr.h.ID().String() // the gossip fills it in
	if err := r.Validate(); err != nil {
		t.Fatalf("own record refused: %v", err)
	}
}
