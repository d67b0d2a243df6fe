package trainer

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"

	"github.com/swarm-train/swarm/internal/testutil"
	"github.com/swarm-train/swarm/swarm/epochs"
	"github.com/swarm-train/swarm/swarm/pipeline"
	"github.com/swarm-train/swarm/swarm/progress"
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

// A request far ahead of the node's epoch is judged by what its sender's
// record says: in that epoch too (an honest holder ahead), nothing is held
// against it; far behind it, the request is a lie, counted without a strike
// and an offense, and a sender that lies so in three epochs is named for a
// ban (pipeline-epoch).
func TestPipelineEpochLie(t *testing.T) {
	tr, ref, _ := victim(t, 32, true)
	s := tr.stage.shape(1)
	ahead, liar := attackerOf(t, tr), attackerOf(t, tr)
	tr.tracker.Update(progress.Record{Peer: ahead.ID().String(), Seq: 1, Shard: 0, State: progress.StateOnline, Epoch: 100}, time.Now())
	tr.tracker.Update(progress.Record{Peer: liar.ID().String(), Seq: 1, Shard: 0, State: progress.StateOnline, Epoch: 3}, time.Now())
	send := func(h host.Host, epoch uint64) {
		q := &pipeline.Request{Kind: pipeline.KindTrain, Shard: 1, Epoch: epoch, N: 1, Act: make([]float32, s.ActPerSample), Targets: []int32{1}}
		st := open(t, h, tr.h.ID(), q.Encode())
		if _, err := st.Read(make([]byte, 1)); err == nil {
			t.Fatalf("a request of epoch %d got an answer", epoch)
		}
		st.Reset()
	}
	send(ahead, 100)
	for epoch := uint64(3); epoch < 6; epoch++ {
		tr.mu.Lock()
		tr.epoch = epoch
		tr.mu.Unlock()
		send(liar, math.MaxUint64)
		send(liar, math.MaxUint64)
	}
	testutil.Eventually(t, 5*time.Second, testutil.Says("the lies counted"), func() bool { return refusals(ref, whyEpoch) == 6 })
	tr.mu.Lock()
	vs := tr.core.Verdicts(tr.inputLocked())
	tr.mu.Unlock()
	if len(vs) != 1 || vs[0].Peer != liar.ID().String() || vs[0].Rule != epochs.RulePipelineEpoch {
		t.Fatalf("verdicts %+v, want the liar for %s", vs, epochs.RulePipelineEpoch)
	}
	t.Logf("verdict: %s", vs[0].Evidence)
	if ref.Banned(liar.ID()) || ref.Banned(ahead.ID()) || ref.Summary().Offenders != 0 {
		t.Error("a refusal judged by the core struck its sender")
	}
	if banned, _ := tr.stage.bal.Banned(ahead.ID()); banned {
		t.Error("the honest holder ahead was excluded")
	}
}
