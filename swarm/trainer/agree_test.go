package trainer

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/testutil"
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
