package statesync

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/internal/testutil"
)

// TestCheckpointOffers: op 3 serves a donor's checkpoint apart from its
// live state; Offers reads the headers without a chunk, and Fetch with
// Want.Content takes exactly the state chosen from them.
func TestCheckpointOffers(t *testing.T) {
	const nP, nO = 100_000, 2 * 100_000 // 2 chunks
	joiner, a, b, none := newHost(t), newHost(t), newHost(t), newHost(t)
	link(joiner, a, b, none)
	live, ckA, ckB := state(nP, nO, 9), state(nP, nO, 7), state(nP, nO, 7)
	sa := NewServer(a, holder(live))
	sa.SetCheckpoints(holder(ckA))
	NewServer(b, holder(live)).SetCheckpoints(holder(ckB))
	NewServer(none, holder(live)) // serves no checkpoints
	ctx := context.Background()
	donors := []peer.ID{a.ID(), b.ID(), none.ID()}
	want := Want{Shard: 1, Params: nP, Opt: nO, MaxEpoch: 100, Checkpoint: true}
	offers := Offers(ctx, joiner, donors, want, 5*time.Second)
	if len(offers) != 2 {
		t.Fatalf("%d offers, want the 2 donors with checkpoints: %+v", len(offers), offers)
	}
	c := ContentOf(ckA)
	for _, o := range offers {
		if o.Epoch != 7 || o.Content != c {
			t.Fatalf("offer %+v is not the checkpoint at epoch 7", o)
		}
	}
	want.Content, want.Quorum = &c, 2
	snap, err := Fetch(ctx, joiner, donors, want, 5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Epoch != 7 || snap.Donors != 2 || snap.Content != c || snap.Opt[5] != ckA.Opt[5] {
		t.Fatalf("fetched epoch %d from %d donors, want the checkpoint at 7 from 2", snap.Epoch, snap.Donors)
	}
	// Without op 3 the same donors serve their live state.
	live9, err := Fetch(ctx, joiner, donors, Want{Shard: 1, Params: nP, Opt: nO, MaxEpoch: 100, Quorum: 3}, 5*time.Second, nil)
	if err != nil || live9.Epoch != 9 {
		t.Fatalf("live state: %v, %v", live9, err)
	}
	// A wanted content nobody offers: no donor.
	var other [32]byte
	want.Content = &other
	if _, err := Fetch(ctx, joiner, donors, want, 5*time.Second, nil); err == nil {
		t.Fatal("a state nobody offers was fetched")
	}
}

// TestCheckpointCopiesDoNotHoldLiveState: peers reading a donor's
// checkpoints never leave its joiners on a stale copy of its live state
// (a checkpoint's copy is never the live state's, and each kind has its
// own MaxFrozen).
func TestCheckpointCopiesDoNotHoldLiveState(t *testing.T) {
	const nP, nO = 1000, 2000
	joiner, a := newHost(t), newHost(t)
	link(joiner, a)
	var mu sync.Mutex
	live := state(nP, nO, 5)
	srv := NewServer(a, func(shard int) (*Snapshot, error) {
		mu.Lock()
		defer mu.Unlock()
		return holder(live)(shard)
	})
	ck := state(nP, nO, 5) // the checkpoint of the state held: the same content
	srv.SetCheckpoints(holder(ck))
	clk := clock.NewManual(time.Unix(1e9, 0))
	srv.SetClock(clk)
	srv.SetEpoch(func(int) (uint64, bool) {
		mu.Lock()
		defer mu.Unlock()
		return live.Epoch, true
	})
	ctx := context.Background()
	want := Want{Shard: 1, Params: nP, Opt: nO, MaxEpoch: 100}
	wantCk := want
	wantCk.Checkpoint = true
	for epoch := uint64(5); epoch < 9; epoch++ {
		mu.Lock()
		live = state(nP, nO, epoch)
		mu.Unlock()
		clk.Advance(time.Second)
		if o := Offers(ctx, joiner, []peer.ID{a.ID()}, wantCk, 5*time.Second); len(o) != 1 || o[0].Epoch != 5 {
			t.Fatalf("checkpoint offers %+v", o)
		}
		idle(t, srv) // one joiner has StreamsPerPeer streams: the closed ones must be released first
		if _, err := Fetch(ctx, joiner, []peer.ID{a.ID()}, wantCk, 5*time.Second, nil); err != nil {
			t.Fatal(err)
		}
		idle(t, srv)
		snap, err := Fetch(ctx, joiner, []peer.ID{a.ID()}, want, 5*time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		if snap.Epoch != epoch {
			t.Fatalf("live state of epoch %d served while the donor is at %d", snap.Epoch, epoch)
		}
	}
}

// idle waits until srv serves no stream.
func idle(t *testing.T, srv *Server) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, testutil.Says("the donor's streams to close"), func() bool {
		return srv.slots.Held() == 0
	})
}
