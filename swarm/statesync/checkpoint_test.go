package statesync

import (
	"context"
	"github.com/libp2p/go-libp2p/core/peer"
	"testing"
	"time"
)

// TestCheckpointOffers: op 3 serves a donor's checkpoint apart from its
// live state; Offers reads the headers without a chunk, and Fetch with
// Want.Content takes exactly the state chosen from them.
func TestCheckpointOffers(t *testing.T) {
	const nP, nO = 300_000, 2 * 300_000 // 4 chunks
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
