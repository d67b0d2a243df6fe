package averaging

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"

	"github.com/swarm-train/swarm/internal/bulk"
	"github.com/swarm-train/swarm/internal/guard"
	"github.com/swarm-train/swarm/internal/testutil"
)

// TestAllreduceOverBulk: peers with bulk services move their reduce
// transfers to direct connections among themselves and stay on libp2p
// streams with a peer that has none, and every member ends with the same
// exact mean either way.
func TestAllreduceOverBulk(t *testing.T) {
	for _, agg := range []Aggregation{AggregateMean, AggregateCenteredClip} {
		t.Run(agg.String(), func(t *testing.T) {
			const n = 4
			svcs := make([]*bulk.Service, n)
			ps := newPeersOn(t, n, 3*4096+17, func(i int, h host.Host, c *Config) {
				roomyMatch(c)
				c.PartSize = 1024
				c.Aggregation = agg
				if i == n-1 {
					return // the last peer has no bulk listener
				}
				s, err := bulk.New(h, bulk.Config{Listen: "127.0.0.1:0"})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = s.Close() })
				svcs[i] = s
				c.Bulk = s
			})
			out := stepAll(ps, "run/shard0", 1, nil)
			for i, o := range out {
				if o.err != nil {
					t.Fatalf("peer %d: %v", i, o.err)
				}
				if o.res.Fraction != 1 || len(o.res.Excluded) > 0 {
					t.Fatalf("peer %d: fraction %v, excluded %v", i, o.res.Fraction, o.res.Excluded)
				}
				if agg == AggregateMean {
					checkAgainstReport(t, ps, i, o.res, 1e-5)
				}
			}
			for k := range ps[0].vec {
				for i := 1; i < n; i++ {
					if ps[i].vec[k] != ps[0].vec[k] {
						t.Fatalf("peer %d differs from peer 0 at %d", i, k)
					}
				}
			}
			// Among the 3 bulk peers each ordered pair is one transfer,
			// counted on both sides. Streams to and from the plain peer
			// never offer: it does not speak ProtoReduceBulk.
			var up, stayed int64
			for _, s := range svcs[:n-1] {
				u, st := s.Stats()
				up += u
				stayed += st
			}
			if want := int64(2 * 3 * 2); up != want {
				t.Errorf("%d transfers upgraded, want %d", up, want)
			}
			if stayed != 0 {
				t.Errorf("%d offers stayed on libp2p, want none (the plain peer has no bulk protocol)", stayed)
			}
		})
	}
}

// A peer that breaks the bulk handshake is refused as malformed on the
// reduce protocol (and so counts towards its ban), and the reducer goes on
// serving others.
func TestBulkBadHandshakeRefused(t *testing.T) {
	ref, err := guard.New(nil, nil, guard.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	ps := newPeersOn(t, 2, 16, func(_ int, h host.Host, c *Config) {
		s, err := bulk.New(h, bulk.Config{Listen: "127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		c.Bulk = s
		c.Refusals = ref
	})
	atk := testutil.Host(t)
	testutil.Connect(t, atk, ps[0].h)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := atk.NewStream(ctx, ps[0].h.ID(), ProtoReduceBulk)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Reset()
	if _, err := st.Write([]byte{9, 1}); err != nil {
		t.Fatal(err)
	}
	count := func() uint64 {
		for _, c := range ref.Summary().Refusals {
			if c.Protocol == ProtoReduce && c.Reason == reasonMalformed {
				return c.Count
			}
		}
		return 0
	}
	testutil.Eventually(t, 10*time.Second, testutil.Says("a malformed refusal for the bad offer"), func() bool { return count() == 1 })
}
