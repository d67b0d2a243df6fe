package trainer

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/testutil"
	"github.com/swarm-train/swarm/swarm/pipeline"
	"github.com/swarm-train/swarm/swarm/progress"
	"github.com/swarm-train/swarm/swarm/statesync"
)

// donorOf serves snap as a holder of its shard would, on a host linked to
// tr.
func donorOf(t *testing.T, tr *Trainer, snap *statesync.Snapshot) host.Host {
	h := testutil.Host(t)
	tr.h.Peerstore().AddAddrs(h.ID(), h.Addrs(), time.Hour)
	statesync.NewServer(h, func(shard int) (*statesync.Snapshot, error) {
		c := *snap
		c.Params = append([]float32(nil), snap.Params...)
		c.Opt = append([]float32(nil), snap.Opt...)
		return &c, nil
	})
	return h
}

// A node with trained state refuses the state of a lying donor (finite
// garbage with correct chunk hashes, one epoch ahead) when it is the only
// donor, and takes the honest state when two honest donors outvote it; a
// node without trained state takes a lone donor's state only at an epoch
// the swarm corroborates; a donor whose chunks fail their hashes is banned.
func TestCatchUpByAgreement(t *testing.T) {
	tr, ref, _ := victim(t, 32, true)
	tr.mu.Lock()
	sh := tr.shard
	tr.trained = true
	tr.mu.Unlock()
	own := append([]float32(nil), sh.Params()...)
	snapOf := func(epoch uint64, v func(i int) float32) *statesync.Snapshot {
		s := &statesync.Snapshot{Shard: 1, Epoch: epoch, Step: int64(epoch), Params: make([]float32, len(own)), Opt: make([]float32, len(sh.OptState()))}
		for i := range s.Params {
			s.Params[i] = v(i)
		}
		return s
	}
	honest := snapOf(5, func(i int) float32 { return own[i] + 0.01 })
	liar := donorOf(t, tr, snapOf(6, func(int) float32 { return 3 }))
	a, b := donorOf(t, tr, honest), donorOf(t, tr, honest)
	ctx := context.Background()
	same := func(want []float32) bool {
		for i, v := range sh.Params() {
			if v != want[i] {
				return false
			}
		}
		return true
	}

	if _, err := tr.catchUpFrom(ctx, sh, 1, []peer.ID{liar.ID()}); !errors.Is(err, statesync.ErrNoQuorum) {
		t.Fatalf("a lone lying donor: err = %v, want ErrNoQuorum", err)
	}
	if !same(own) {
		t.Fatal("the lone donor's state was installed")
	}
	epoch, err := tr.catchUpFrom(ctx, sh, 1, []peer.ID{liar.ID(), a.ID(), b.ID()})
	if err != nil || epoch != 5 || !same(honest.Params) {
		t.Fatalf("with two honest donors: epoch %d, err %v, honest state %v", epoch, err, same(honest.Params))
	}

	// Without trained state a lone donor may serve, but not an epoch past
	// one after the swarm's (two holders at 3 here).
	tr.mu.Lock()
	tr.trained = false
	tr.mu.Unlock()
	for i, p := range []string{"x1", "x2"} {
		tr.tracker.Update(progress.Record{Peer: p, Seq: uint64(i + 1), Shard: 0, State: progress.StateOnline, Epoch: 3}, time.Now())
	}
	if _, err := tr.catchUpFrom(ctx, sh, 1, []peer.ID{liar.ID()}); err == nil {
		t.Fatal("an untrained node took a lone donor's state two epochs past the swarm's")
	}
	if !same(honest.Params) {
		t.Fatal("the refused state was installed")
	}

	// A donor that announces the honest header and serves other bytes.
	bad := testutil.Host(t)
	tr.h.Peerstore().AddAddrs(bad.ID(), bad.Addrs(), time.Hour)
	real := donorOf(t, tr, honest)
	bad.SetStreamHandler(statesync.Protocol, func(st network.Stream) {
		defer st.Close()
		up, err := bad.NewStream(ctx, real.ID(), statesync.Protocol)
		if err != nil {
			return
		}
		defer up.Close()
		for {
			var req [17]byte
			if _, err := io.ReadFull(st, req[:]); err != nil {
				return
			}
			if _, err := up.Write(req[:]); err != nil {
				return
			}
			var hdr [5]byte
			if _, err := io.ReadFull(up, hdr[:]); err != nil {
				return
			}
			body := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
			if _, err := io.ReadFull(up, body); err != nil {
				return
			}
			if req[0] == 2 { // a chunk: flip its bytes
				for i := range body {
					body[i] ^= 0x5a
				}
			}
			_, _ = st.Write(append(hdr[:], body...))
		}
	})
	bad.Peerstore().AddAddrs(real.ID(), real.Addrs(), time.Hour)
	for i, p := range []string{"x1", "x2"} { // the swarm reaches the honest epoch
		tr.tracker.Update(progress.Record{Peer: p, Seq: uint64(i + 3), Shard: 0, State: progress.StateOnline, Epoch: 5}, time.Now())
	}
	copy(sh.Params(), own)
	if _, err := tr.catchUpFrom(ctx, sh, 1, []peer.ID{bad.ID()}); !errors.Is(err, statesync.ErrNoDonor) {
		t.Fatalf("a lone corrupting donor: err = %v, want ErrNoDonor", err)
	}
	if !same(own) {
		t.Fatal("a corrupted state was installed")
	}
	if !ref.Banned(bad.ID()) || !tr.distrusted[bad.ID()] {
		t.Error("the donor whose chunk failed its hash is not banned")
	}
	if got := tr.trustedDonors([]peer.ID{bad.ID(), a.ID()}); len(got) != 1 || got[0] != a.ID() {
		t.Errorf("donors after the ban: %v, want the honest one only", got)
	}
	for _, p := range []peer.ID{a.ID(), b.ID()} {
		if ref.Banned(p) {
			t.Error("an honest donor was banned")
		}
	}
}

// A trained node whose only donor is ahead (no second donor to agree with)
// installs its state only when it passes the held-out check: on the last
// shard, the latest micro-batches it served. An honest donor's state (its
// own after a small step) passes; a lying donor's (finite garbage, N(0, 3²),
// correct hashes) is refused and counted; offered side by side with no quorum, the
// honest one is taken.
func TestCatchUpHeldOut(t *testing.T) {
	tr, ref, _ := victim(t, 32, true)
	tr.mu.Lock()
	sh := tr.shard
	tr.trained = true
	tr.mu.Unlock()
	for i, p := range []string{"x1", "x2"} { // the swarm is at epoch 3
		tr.tracker.Update(progress.Record{Peer: p, Seq: uint64(i + 1), Shard: 0, State: progress.StateOnline, Epoch: 3}, time.Now())
	}
	s := tr.stage.shape(1)
	rng := rand.New(rand.NewPCG(5, 6))
	for range heldOutInputs {
		q := &pipeline.Request{Kind: pipeline.KindTrain, Shard: 1, Epoch: 3, N: 8, Act: make([]float32, 8*s.ActPerSample), Targets: make([]int32, 8)}
		for i := range q.Act {
			q.Act[i] = float32(rng.NormFloat64())
		}
		for i := range q.Targets {
			q.Targets[i] = int32(rng.IntN(s.Classes))
		}
		tr.stage.keepInput(q)
	}
	own := append([]float32(nil), sh.Params()...)
	snapOf := func(v func(i int) float32) *statesync.Snapshot {
		s := &statesync.Snapshot{Shard: 1, Epoch: 4, Step: 4, Params: make([]float32, len(own)), Opt: make([]float32, len(sh.OptState()))}
		for i := range s.Params {
			s.Params[i] = v(i)
		}
		return s
	}
	honestSnap := snapOf(func(i int) float32 { return own[i] * 0.999 })
	liar := donorOf(t, tr, snapOf(func(int) float32 { return float32(3 * rng.NormFloat64()) })) // N(0, 3²)
	honest := donorOf(t, tr, honestSnap)
	ctx := context.Background()

	if _, err := tr.catchUpFrom(ctx, sh, 1, []peer.ID{liar.ID()}); !errors.Is(err, statesync.ErrHeldOut) {
		t.Fatalf("a lone lying donor: err = %v, want ErrHeldOut", err)
	}
	for i, v := range sh.Params() {
		if v != own[i] {
			t.Fatal("the lying donor's state was installed")
		}
	}
	found := false
	for _, c := range ref.Summary().Refusals {
		found = found || c.Protocol == protoState && c.Reason == whyHeldOut && c.Count == 1
	}
	if !found {
		t.Errorf("the failed held-out check was not counted: %+v", ref.Summary().Refusals)
	}
	epoch, err := tr.catchUpFrom(ctx, sh, 1, []peer.ID{liar.ID(), honest.ID()})
	if err != nil || epoch != 4 {
		t.Fatalf("a lying and an honest donor, no quorum: epoch %d, err %v; want the honest state of epoch 4", epoch, err)
	}
	for i, v := range sh.Params() {
		if v != honestSnap.Params[i] {
			t.Fatal("the honest donor's state is not the one installed")
		}
	}
	for _, p := range []peer.ID{liar.ID(), honest.ID()} {
		if ref.Banned(p) {
			t.Errorf("%s banned: a failed held-out check is a refusal, not a proof", p)
		}
	}

	// Two donors agree on a state; a third offers, alone and one epoch
	// later, one that does far worse on held-out data: a lie shown, the
	// donor banned (statesync-held-out). The agreed state is installed.
	agreed := snapOf(func(i int) float32 { return honestSnap.Params[i] * 0.999 })
	agreed.Epoch, agreed.Step = 5, 5
	later := snapOf(func(int) float32 { return float32(3 * rng.NormFloat64()) })
	later.Epoch, later.Step = 6, 6
	for i, p := range []string{"x1", "x2"} { // the swarm is at epoch 5
		tr.tracker.Update(progress.Record{Peer: p, Seq: uint64(i + 10), Shard: 0, State: progress.StateOnline, Epoch: 5}, time.Now())
	}
	a, b, x := donorOf(t, tr, agreed), donorOf(t, tr, agreed), donorOf(t, tr, later)
	if epoch, err := tr.catchUpFrom(ctx, sh, 1, []peer.ID{x.ID(), a.ID(), b.ID()}); err != nil || epoch != 5 {
		t.Fatalf("two agreeing donors and a liar: epoch %d, err %v; want the agreed state of epoch 5", epoch, err)
	}
	if !ref.Banned(x.ID()) || !tr.distrusted[x.ID()] {
		t.Error("the donor whose later state does far worse on held-out data is not banned")
	}
	for _, p := range []peer.ID{a.ID(), b.ID()} {
		if ref.Banned(p) {
			t.Error("an agreeing donor was banned")
		}
	}
}
