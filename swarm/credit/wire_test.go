package credit

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/swarm-train/swarm/internal/guard"
	"github.com/swarm-train/swarm/internal/testutil"
)

func TestWireRoundTrip(t *testing.T) {
	stage, _ := newKey(t)
	_, sender := newKey(t)
	r, err := Sign(stage, Receipt{RunID: "run-1", Epoch: 9, Sender: sender, Samples: 64, Hash: HashOf([]byte("mb"))})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(b)
	if err != nil || got.Verify("run-1") != nil || got.Epoch != 9 || got.Samples != 64 || !bytes.Equal(got.Sig, r.Sig) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for _, c := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"version", append([]byte{9}, b[1:]...)},
		{"truncated", b[:len(b)-1]},
		{"trailing", append(append([]byte(nil), b...), 0)},
		{"huge", make([]byte, MaxWireBytes+1)},
	} {
		if _, err := Unmarshal(c.b); !errors.Is(err, ErrWire) {
			t.Errorf("%s: %v, want ErrWire", c.name, err)
		}
	}
}

func FuzzUnmarshal(f *testing.F) {
	stage, _ := newKey(f)
	_, sender := newKey(f)
	r, _ := Sign(stage, Receipt{RunID: "run-1", Epoch: 1, Sender: sender, Samples: 8})
	b, _ := Marshal(r)
	f.Add(b)
	f.Add([]byte{1, 200})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Unmarshal(b)
		if err != nil {
			return
		}
		again, err := Marshal(r)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("decoded %x but re-encodes to %x (%v)", b, again, err)
		}
	})
}

// A checker pages through a peer's receipts over a real stream: an honest
// ledger backs its claim; more than it backs is inflated; a receipt whose
// signature was tampered with is refused by name.
func TestServiceCheck(t *testing.T) {
	stageKey, _ := newKey(t)
	workerKey, _ := newKey(t)
	checkerKey, _ := newKey(t)
	ref, _ := guard.New(nil, nil, guard.Policy{})
	worker, err := NewService("run-1", workerKey, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	stage, _ := NewService("run-1", stageKey, ref, nil)
	checker, _ := NewService("run-1", checkerKey, ref, nil)
	// 300 micro-batches of 8 (two pages and a bit).
	for i := range 300 {
		h := HashOf([]byte{byte(i), byte(i >> 8)})
		raw := stage.Stamp(worker.self, 1, 8, h)
		if err := worker.Earn(stage.self, raw, 8, h); err != nil {
			t.Fatal(err)
		}
	}
	if got := worker.Credited(); got.Samples != 2400 || got.Receipts != 300 {
		t.Fatalf("credited %+v", got)
	}
	// A receipt for other bytes, or not for this node, is refused.
	h := HashOf([]byte("x"))
	if err := worker.Earn(stage.self, stage.Stamp(worker.self, 1, 8, h), 8, HashOf([]byte("y"))); err == nil {
		t.Error("a receipt for other bytes was kept")
	}
	if err := worker.Earn(stage.self, stage.Stamp(checker.self, 1, 8, h), 8, h); err == nil {
		t.Error("a receipt crediting another node was kept")
	}

	a, b := testutil.Host(t), testutil.Host(t)
	testutil.Connect(t, a, b)
	b.SetStreamHandler(Protocol, worker.Serve)
	open := func(ctx context.Context) (network.Stream, error) { return a.NewStream(ctx, b.ID(), Protocol) }
	ctx := context.Background()
	if err := checker.Check(ctx, worker.self, 2400, open); err != nil {
		t.Fatalf("honest claim: %v", err)
	}
	if c, _ := checker.LastCheck(worker.self); c.Backed != 2400 || c.Receipts != 300 {
		t.Errorf("check %+v", c)
	}
	worker.mu.Lock()
	delete(worker.asked, a.ID()) // the rate gap is for strangers; this test asks again at once
	worker.mu.Unlock()
	if err := checker.Check(ctx, worker.self, 2401, open); !errors.Is(err, ErrInflated) {
		t.Fatalf("inflated claim: %v", err)
	}
	// Tamper with one kept receipt's signature.
	worker.mu.Lock()
	worker.ledger.kept[7].Sig[0] ^= 1
	delete(worker.asked, a.ID())
	worker.mu.Unlock()
	if err := checker.Check(ctx, worker.self, 10, open); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("forged receipt: %v", err)
	}
	// Asking again within the gap is refused.
	err = checker.Check(ctx, worker.self, 10, open)
	if err == nil || errors.Is(err, ErrInflated) {
		t.Fatalf("second check within the gap: %v", err)
	}
	var refused uint64
	for _, c := range ref.Summary().Refusals {
		if c.Reason == "rate" && strings.Contains(c.Protocol, "receipts") {
			refused += c.Count
		}
	}
	if refused != 1 {
		t.Errorf("rate refusals %d, want 1 (%+v)", refused, ref.Summary())
	}
}
