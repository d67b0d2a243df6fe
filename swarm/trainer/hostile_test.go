package trainer

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/engine/native"
	"github.com/swarm-train/swarm/internal/guard"
	"github.com/swarm-train/swarm/internal/testutil"
	"github.com/swarm-train/swarm/swarm/epochs"
	"github.com/swarm-train/swarm/swarm/pipeline"
	"github.com/swarm-train/swarm/swarm/progress"
)

// victim is a trainer of a 2-shard run with hidden units a layer, holding
// shard 1 at epoch 3 if hold (not running: its handlers serve), and an
// attacker host linked to it; muts change its configuration.
func victim(t *testing.T, hidden int, hold bool, muts ...func(*Config)) (*Trainer, *guard.Refusals, host.Host) {
	t.Helper()
	h := testutil.Host(t)
	ref, err := guard.New(nil, nil, guard.Policy{Strikes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	m := smallMNIST(2, hidden, 10)
	eng := native.New(native.WithThreads(1))
	cfg := Config{Manifest: m, Engine: eng, Host: h, RunPeers: func() []peer.ID { return nil }, Shard: 1, Refusals: ref}
	for _, mut := range muts {
		mut(&cfg)
	}
	tr, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	tr.stage.readTimeout = 300 * time.Millisecond
	if !hold {
		return tr, ref, attackerOf(t, tr)
	}
	sh, err := eng.NewShard(m, 1)
	if err != nil {
		t.Fatal(err)
	}
	tr.mu.Lock()
	tr.shard, tr.index, tr.state, tr.epoch = sh, 1, progress.StateOnline, 3
	tr.mu.Unlock()
	return tr, ref, attackerOf(t, tr)
}

// attackerOf is a fresh host that can reach tr (one that the victim has
// not excluded yet).
func attackerOf(t *testing.T, tr *Trainer) host.Host {
	a := testutil.Host(t)
	a.Peerstore().AddAddrs(tr.h.ID(), tr.h.Addrs(), time.Hour)
	return a
}

// header is a hand-written request header for shard 1 declaring n samples
// and acts activation values: what a hostile sender writes before its body.
func header(epoch uint64, n, acts uint32) []byte {
	b := []byte{pipeline.KindTrain}
	b = binary.BigEndian.AppendUint32(b, 1)
	b = binary.BigEndian.AppendUint64(b, epoch)
	b = binary.BigEndian.AppendUint64(b, 1)
	b = binary.BigEndian.AppendUint32(b, n)
	b = append(b, pipeline.FP32)
	return binary.BigEndian.AppendUint32(b, acts)
}

func refusals(ref *guard.Refusals, reason string) uint64 {
	for _, c := range ref.Summary().Refusals {
		if c.Protocol == protoPipeline && c.Reason == reason {
			return c.Count
		}
	}
	return 0
}

// open starts a pipeline stream from the attacker and writes b on it.
func open(t *testing.T, from host.Host, to peer.ID, b []byte) network.Stream {
	t.Helper()
	s, err := from.NewStream(context.Background(), to, pipeline.Protocol)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.Write(b); err != nil {
		t.Fatal(err)
	}
	return s
}

// Streams that declare the largest sizes the stage allows and then send
// nothing cost the victim little and are dropped at the read deadline;
// sizes past the layout's limits are refused before any body is read.
func TestPipelineStalledSenders(t *testing.T) {
	tr, ref, attacker := victim(t, 2048, false)
	s := tr.stage.shape(1)
	full := uint32(s.MaxN * s.ActPerSample)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var streams []network.Stream
	for range 16 {
		streams = append(streams, open(t, attacker, tr.h.ID(), header(3, uint32(s.MaxN), full)))
	}
	testutil.Eventually(t, 5*time.Second, testutil.Says("the stalled streams dropped"), func() bool { return refusals(ref, whyStall) == 16 })
	runtime.ReadMemStats(&after)
	// 16 × the declared 4×full bytes would be megabytes; the buffers grow
	// only as bytes arrive.
	got, declared := after.TotalAlloc-before.TotalAlloc, 16*4*uint64(full)
	t.Logf("16 stalled streams declaring %d KiB in all cost %d KiB", declared>>10, got>>10)
	if got > declared/4 {
		t.Fatalf("16 stalled streams declaring %d KiB cost %d KiB", declared>>10, got>>10)
	}
	for _, st := range streams {
		if _, err := st.Read(make([]byte, 1)); err == nil {
			t.Fatal("a stalled stream got an answer")
		}
		st.Reset()
	}
	for _, bad := range [][]byte{
		header(3, uint32(s.MaxN), full+1),         // more values than the samples need
		header(3, uint32(s.MaxN+1), full),         // more samples than the stage takes
		header(3, math.MaxUint32, math.MaxUint32), // the largest declared
	} {
		st := open(t, attackerOf(t, tr), tr.h.ID(), bad) // each is excluded after its refusal
		if _, err := st.Read(make([]byte, 1)); err == nil {
			t.Fatal("an oversize request got an answer")
		}
		st.Reset()
	}
	testutil.Eventually(t, 5*time.Second, testutil.Says("oversize refusals"), func() bool { return refusals(ref, whyOversize) == 3 })
}

// 64 parallel requests of one peer: at most pipePerPeer are served, the
// others are answered busy and counted.
func TestPipelineParallelFlood(t *testing.T) {
	tr, ref, attacker := victim(t, 32, false)
	tr.stage.readTimeout = 5 * time.Second // the served ones wait for their bodies
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		busy int
		all  []network.Stream
	)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := open(t, attacker, tr.h.ID(), header(3, 1, uint32(tr.stage.shape(1).ActPerSample)))
			mu.Lock()
			all = append(all, st)
			mu.Unlock()
		}()
	}
	wg.Wait()
	testutil.Eventually(t, 5*time.Second, testutil.Says("the flood refused"), func() bool { return refusals(ref, whyFlood) == 64-pipePerPeer })
	deadline := time.Now().Add(100 * time.Millisecond) // answers to the refused are written already
	for _, st := range all {
		_ = st.SetReadDeadline(deadline)
		if res, err := pipeline.ReadResponse(st, 0); err == nil {
			if res.Code != pipeline.CodeBusy {
				t.Fatalf("code %d, want busy", res.Code)
			}
			busy++
		}
		st.Reset()
	}
	if busy != 64-pipePerPeer {
		t.Fatalf("%d of 64 answered busy, want %d", busy, 64-pipePerPeer)
	}
	testutil.Eventually(t, 5*time.Second, testutil.Says("the slots released"), func() bool { return tr.stage.slots.Peers() == 0 })
}

// A request far ahead of the node's epoch (2^64-1) is refused before its
// body; one within the window (maxEpochLead ahead) is answered busy after a
// short wait. Neither leaves state behind: a pipeline request's epoch is no
// input to the decision core, which keeps this node in its epoch.
func TestPipelineFarEpoch(t *testing.T) {
	tr, ref, attacker := victim(t, 32, true)
	s := tr.stage.shape(1)
	q := &pipeline.Request{Kind: pipeline.KindTrain, Shard: 1, Epoch: math.MaxUint64, N: 1,
		Act: make([]float32, s.ActPerSample), Targets: []int32{1}}
	st := open(t, attacker, tr.h.ID(), q.Encode())
	if _, err := st.Read(make([]byte, 1)); err == nil {
		t.Fatal("a far-future request got an answer")
	}
	st.Reset()
	testutil.Eventually(t, 5*time.Second, testutil.Says("the epoch refusal"), func() bool { return refusals(ref, whyEpoch) == 1 })

	q.Epoch = 3 + maxEpochLead
	st = open(t, attackerOf(t, tr), tr.h.ID(), q.Encode())
	res, err := pipeline.ReadResponse(st, 1<<20)
	st.Close()
	if err != nil || res.Code != pipeline.CodeBusy {
		t.Fatalf("a request %d epochs ahead: answer %+v, %v; want busy", maxEpochLead, res, err)
	}
	tr.mu.Lock()
	epoch := tr.epoch
	act := tr.core.Step(tr.inputLocked(), epochs.Event{})
	tr.mu.Unlock()
	if epoch != 3 || act.Kind != epochs.Wait {
		t.Fatalf("after requests from the future: epoch %d, the core asks to %v; want epoch 3 and wait", epoch, act.Kind)
	}
}

// Targets outside the run's label set are refused at the last stage before
// anything is computed, and the refusal is counted (the sender is then
// excluded: each target comes from another attacker).
func TestPipelineTargetOutsideLabels(t *testing.T) {
	tr, ref, _ := victim(t, 32, true)
	s := tr.stage.shape(1)
	for i, target := range []int32{int32(s.Classes), -1} {
		attacker := attackerOf(t, tr)
		q := &pipeline.Request{Kind: pipeline.KindTrain, Shard: 1, Epoch: 3, N: 1,
			Act: make([]float32, s.ActPerSample), Targets: []int32{target}}
		st := open(t, attacker, tr.h.ID(), q.Encode())
		res, err := pipeline.ReadResponse(st, 1<<20)
		st.Close()
		if err != nil || res.Code != pipeline.CodeBadInput {
			t.Fatalf("target %d: answer %+v, %v; want bad input", target, res, err)
		}
		if got := refusals(ref, whyInvalid); got != uint64(i+1) {
			t.Fatalf("target %d: %d invalid refusals, want %d", target, got, i+1)
		}
	}
	if processed := tr.meters.samples(); processed != 0 {
		t.Errorf("%d samples processed from refused requests", processed)
	}
}

// donor (make redteam): a later shard's holder counts every micro-batch it
// serves in its epoch, and while the first shard's holders are apart it
// serves more than the record limit (twice the target batch) in one. Its
// peers refused those records and banned it for repeating them; it never
// finished the run. Its record stays within the limits whatever it served.
func TestRecordWithinLimitsAfterAFullEpoch(t *testing.T) {
	tr, _, sender := victim(t, 32, true)
	s := tr.stage.shape(1)
	lim := tr.recordLimits()
	const n = 64
	for served := 0; served <= lim.MaxSamples; served += n {
		q := &pipeline.Request{Kind: pipeline.KindTrain, Shard: 1, Epoch: 3, ID: uint64(served + 1), N: n,
			Act: make([]float32, n*s.ActPerSample), Targets: make([]int32, n)}
		st := open(t, sender, tr.h.ID(), q.Encode())
		res, err := pipeline.ReadResponse(st, 1<<24)
		st.Close()
		if err != nil || res.Code != pipeline.CodeOK {
			t.Fatalf("micro-batch after %d samples: answer %+v, %v", served, res, err)
		}
	}
	tr.mu.Lock()
	samples := tr.samples
	tr.mu.Unlock()
	if samples <= lim.MaxSamples {
		t.Fatalf("served %d samples in the epoch, want more than the record limit %d", samples, lim.MaxSamples)
	}
	r := tr.record()
	r.Peer, r.RunID, r.Seq = tr.h.ID().String(), tr.runID, 1
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := r.Check(lim); err != nil {
		t.Errorf("after serving %d samples in its epoch the node sends a record its peers refuse: %v", samples, err)
	}
}

// A sender's micro-batches to one next-stage holder go one after another
// on one stream; a stream the holder closed while idle is replaced without
// the request failing.
func TestPipelineStreamsReused(t *testing.T) {
	tr, _, _ := victim(t, 32, true)
	tr.stage.idleTimeout = 300 * time.Millisecond
	snd, _, _ := victim(t, 32, false)
	snd.h.Peerstore().AddAddrs(tr.h.ID(), tr.h.Addrs(), time.Hour)
	shape := tr.stage.shape(1)
	q := pipeline.Request{Kind: pipeline.KindTrain, Shard: 1, Epoch: 3, N: 2, Precision: pipeline.FP32,
		Act: make([]float32, 2*shape.ActPerSample), Targets: []int32{3, 7}}
	for i := range q.Act {
		q.Act[i] = float32(i%7) / 7
	}
	call := func() {
		t.Helper()
		q.ID++
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res, err := snd.stage.call(ctx, tr.h.ID(), &q, q.Encode())
		if err != nil || res.Code != pipeline.CodeOK || len(res.Grad) != len(q.Act) {
			t.Fatalf("call: %v, %+v", err, res)
		}
	}
	pipelineStreams := func() int {
		n := 0
		for _, c := range snd.h.Network().ConnsToPeer(tr.h.ID()) {
			for _, st := range c.GetStreams() {
				if st.Protocol() == pipeline.Protocol {
					n++
				}
			}
		}
		return n
	}
	for range 3 {
		call()
	}
	if n := pipelineStreams(); n != 1 {
		t.Fatalf("after three micro-batches in turn the sender has %d pipeline streams open, want the one it reuses", n)
	}
	// The holder closes the stream once it has been idle for its timeout;
	// the next micro-batch finds it closed and goes on a new one.
	testutil.Eventually(t, 5*time.Second, testutil.Says("the holder waits for a next request"), func() bool { return tr.stage.idle.Held() == 1 })
	testutil.Eventually(t, 5*time.Second, testutil.Says("the holder closed the idle stream"), func() bool { return tr.stage.idle.Held() == 0 })
	call()
	if n := pipelineStreams(); n != 1 {
		t.Fatalf("after the retry the sender has %d pipeline streams open, want 1", n)
	}
}

// A sender that leaves stream after stream idle once answered holds at
// most pipePerPeer of them open on the holder: every stream past that is
// closed after its answer, none holds a request slot, and another sender's
// micro-batches and idle stream are unaffected.
func TestPipelineIdleFlood(t *testing.T) {
	tr, _, attacker := victim(t, 32, true)
	shape := tr.stage.shape(1)
	q := pipeline.Request{Kind: pipeline.KindTrain, Shard: 1, Epoch: 3, N: 1, Precision: pipeline.FP32,
		Act: make([]float32, shape.ActPerSample), Targets: []int32{5}}
	const streams = 3 * pipePerPeer
	var all []network.Stream
	for i := range streams {
		q.ID = uint64(i + 1)
		st := open(t, attacker, tr.h.ID(), q.Encode())
		res, err := pipeline.ReadResponse(st, len(q.Act))
		if err != nil || res.Code != pipeline.CodeOK {
			t.Fatalf("request %d: %v, %+v", i, err, res)
		}
		if len(res.Receipt) > 0 { // an empty acknowledgement: in step, no credit given
			if _, err := st.Write(pipeline.AppendAck(nil, nil)); err != nil {
				t.Fatal(err)
			}
		}
		all = append(all, st)
	}
	testutil.Eventually(t, 5*time.Second, testutil.Says("the holder keeps the attacker's idle streams to its bound"), func() bool {
		return tr.stage.idle.Held() == pipePerPeer
	})
	// The streams past the bound were closed by the holder: reading one
	// gives the end of the stream, not a wait.
	for i, st := range all[pipePerPeer:] {
		_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := st.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("stream %d past the bound: read %d bytes, %v; want it closed", pipePerPeer+i, n, err)
		}
	}
	if n := tr.stage.slots.Held(); n != 0 {
		t.Fatalf("idle streams hold %d request slots", n)
	}
	// Another sender is served, and its stream waits for its next request.
	snd, _, _ := victim(t, 32, false)
	snd.h.Peerstore().AddAddrs(tr.h.ID(), tr.h.Addrs(), time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q.ID++
	if res, err := snd.stage.call(ctx, tr.h.ID(), &q, q.Encode()); err != nil || res.Code != pipeline.CodeOK {
		t.Fatalf("another sender during the flood: %v, %+v", err, res)
	}
	testutil.Eventually(t, 5*time.Second, testutil.Says("the other sender's stream idles too"), func() bool {
		return tr.stage.idle.Held() == pipePerPeer+1
	})
	for _, st := range all {
		st.Reset()
	}
	testutil.Eventually(t, 5*time.Second, testutil.Says("the attacker's idle places released"), func() bool {
		return tr.stage.idle.Held() == 1
	})
}
