package trainer

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/host"

	"github.com/swarm-train/swarm/swarm/epochs"
	"github.com/swarm-train/swarm/swarm/pipeline"
)

// A stage serves honest senders' activations and refuses a sender whose
// activations are ×100 theirs (norm_k 10): bad input, a refusal counted
// ("norm"), an offense for the core, which names the sender for a ban once
// it offended in three epochs. The honest senders are never refused.
func TestPipelineNormOutlier(t *testing.T) {
	tr, ref, _ := victim(t, 32, true)
	tr.stage.actWatch = pipeline.NewNormWatch(10)
	s := tr.stage.shape(1)
	rng := rand.New(rand.NewPCG(3, 4))
	request := func(scale float32) []byte {
		q := &pipeline.Request{Kind: pipeline.KindTrain, Shard: 1, N: 2, Act: make([]float32, 2*s.ActPerSample), Targets: []int32{1, 2}}
		tr.mu.Lock()
		q.Epoch = tr.epoch
		tr.mu.Unlock()
		for i := range q.Act {
			q.Act[i] = scale * float32(rng.NormFloat64())
		}
		return q.Encode()
	}
	var senders []host.Host
	for range 3 {
		senders = append(senders, attackerOf(t, tr))
	}
	liar := senders[2]
	send := func(from int, scale float32) uint8 {
		st := open(t, senders[from], tr.h.ID(), request(scale))
		res, err := pipeline.ReadResponse(st, 1<<20)
		st.Close()
		if err != nil {
			t.Fatal(err)
		}
		return res.Code
	}
	for epoch := uint64(3); epoch < 6; epoch++ {
		tr.mu.Lock()
		tr.epoch = epoch
		tr.mu.Unlock()
		for i := range 4 {
			if code := send(i%2, 1); code != pipeline.CodeOK {
				t.Fatalf("epoch %d: an honest sender answered %d", epoch, code)
			}
		}
		if code := send(2, 100); code != pipeline.CodeBadInput {
			t.Fatalf("epoch %d: activations ×100 answered %d, want bad input", epoch, code)
		}
		tr.mu.Lock()
		vs := tr.core.Verdicts(tr.inputLocked())
		tr.mu.Unlock()
		switch {
		case epoch < 5 && len(vs) > 0:
			t.Fatalf("epoch %d: verdicts %+v before three offenses", epoch, vs)
		case epoch == 5 && (len(vs) != 1 || vs[0].Peer != liar.ID().String() || vs[0].Rule != epochs.RulePipelineNorm || !strings.Contains(vs[0].Evidence, "activations")):
			t.Fatalf("verdicts %+v, want the sender of ×100 activations for %s", vs, epochs.RulePipelineNorm)
		}
	}
	if got := refusals(ref, whyNorm); got != 3 {
		t.Errorf("%d norm refusals, want 3", got)
	}
}
