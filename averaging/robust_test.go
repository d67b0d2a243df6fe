package averaging

import (
	"context"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/swarm-train/swarm/internal/guard"
)

// A group of 4 honest peers and 1 Byzantine member whose vector is its
// honest one sign-flipped and scaled by 100 (it sends that to every reducer
// and reduces its own share with it). Returns the honest peers' distance to
// the honest weighted mean (worst), the honest radius, and the guards.
func byzantineRound(t *testing.T, mod func(c *Config)) (worst, radius float64, ps []*testPeer, refs []*guard.Refusals, out []stepOut) {
	t.Helper()
	const n, vecLen = 5, 6000
	const byz = n - 1
	ps = newPeers(t, n, vecLen, func(i int, c *Config) {
		roomyMatch(c)
		ref, err := guard.New(prometheus.NewRegistry(), nil, guard.Policy{})
		if err != nil {
			t.Fatal(err)
		}
		c.Refusals = ref
		refs = append(refs, ref)
		if mod != nil {
			mod(c)
		}
	})
	for j := range ps[byz].vec {
		ps[byz].vec[j] *= -100
	}
	ps[byz].w = 5 // the most any member declares here
	hx, hw := make([][]float32, 0, n-1), make([]float64, 0, n-1)
	for _, p := range ps[:byz] {
		hx, hw = append(hx, p.orig), append(hw, p.w)
	}
	m := weightedMean(hx, hw)
	radius = honestRadius(hx, m)
	out = stepAll(ps, "run/byz", 1, nil)
	for i, o := range out[:byz] {
		if o.err != nil || o.res.Mode != ModeGroup || len(o.res.Members) != n {
			t.Fatalf("honest peer %d: %v, mode %s, %d members", i, o.err, o.res.Mode, len(o.res.Members))
		}
		worst = max(worst, dist(ps[i].vec, m))
	}
	return worst, radius, ps, refs, out
}

// TestByzantineMemberMean: the plain mean hands the liar the result.
func TestByzantineMemberMean(t *testing.T) {
	worst, r, _, _, _ := byzantineRound(t, nil)
	if worst < 5*r {
		t.Fatalf("mean: honest result %.4g from the honest mean, radius %.4g: the attack did not bite", worst, r)
	}
	t.Logf("mean: %.4g from the honest mean (%.1f honest radii)", worst, worst/r)
}

// TestByzantineMemberCenteredClip: with CenteredClip every honest peer ends
// within 1.25 honest radii of the honest mean (the bound of the pure test),
// everywhere in the vector, including the share the liar reduced itself.
func TestByzantineMemberCenteredClip(t *testing.T) {
	worst, r, _, refs, _ := byzantineRound(t, func(c *Config) { c.Aggregation = AggregateCenteredClip })
	if !(worst <= 1.25*r) {
		t.Fatalf("centered-clip: honest result %.4g from the honest mean, over 1.25 × radius %.4g", worst, r)
	}
	for i, ref := range refs[:4] {
		if len(ref.Summary().Refusals) != 0 {
			t.Errorf("peer %d refused something without NormK: %+v", i, ref.Summary().Refusals)
		}
	}
	t.Logf("centered-clip: %.4g from the honest mean (%.2f honest radii)", worst, worst/r)
}

// TestByzantineMemberRejected: with NormK = 10 every honest reducer refuses
// the liar's parts as "outlier" (its norm is ~100× the group's median),
// names it among the excluded with the evidence, and never counts an honest
// member; the honest peers end within the same bound.
func TestByzantineMemberRejected(t *testing.T) {
	worst, r, ps, refs, out := byzantineRound(t, func(c *Config) {
		c.Aggregation = AggregateCenteredClip
		c.NormK = 10
	})
	if !(worst <= 1.25*r) {
		t.Fatalf("honest result %.4g from the honest mean, over 1.25 × radius %.4g", worst, r)
	}
	liar := ps[4].h.ID()
	for i := range 4 {
		var n uint64
		for _, c := range refs[i].Summary().Refusals {
			if c.Reason != reasonOutlier || c.Protocol != ProtoReduce {
				t.Errorf("peer %d refused %+v", i, c)
			}
			n += c.Count
		}
		if n != 1 {
			t.Errorf("peer %d: %d outlier refusals, want 1 (one per round)", i, n)
		}
		why := out[i].res.Excluded[liar]
		if !strings.Contains(why, "rejected") || !strings.Contains(why, "median") {
			t.Errorf("peer %d: liar excluded as %q", i, why)
		}
		for p, why := range out[i].res.Excluded {
			if p != liar {
				t.Errorf("peer %d excluded honest %s: %s", i, p, why)
			}
		}
		for _, sp := range out[i].res.Spans {
			if len(sp.Contributors) < 4 {
				t.Errorf("peer %d: span %d-%d averaged by %d members", i, sp.Start, sp.End, len(sp.Contributors))
			}
		}
	}
	t.Logf("norm check: %.4g from the honest mean (%.2f honest radii)", worst, worst/r)
}

// TestGossipPairRobust: a pair has no majority. With a robust aggregation
// both sides weigh the same whatever they declare; with NormK the honest
// side refuses a partner 100× its norm (outlier) and keeps its vector.
func TestGossipPairRobust(t *testing.T) {
	t.Run("equal weights", func(t *testing.T) {
		ps := newPeers(t, 2, 3000, func(_ int, c *Config) {
			c.Aggregation = AggregateCenteredClip
			c.GossipTimeout = slow * 2 * time.Second
		})
		ps[1].w = 1e6 // the liar declares a huge weight (MaxWeight is the default here)
		out := make([]stepOut, 2)
		var wg sync.WaitGroup
		for i, p := range ps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out[i].res, out[i].err = p.a.Gossip(context.Background(), "pair", 1, p.vec, p.w)
			}()
		}
		wg.Wait()
		for i, o := range out {
			if o.err != nil {
				t.Fatalf("peer %d: %v", i, o.err)
			}
		}
		for k, v := range ps[0].vec {
			if want := (ps[0].orig[k] + ps[1].orig[k]) / 2; math.Abs(float64(v-want)) > 1e-6 {
				t.Fatalf("value %d: %v, want the equal-weight mean %v", k, v, want)
			}
		}
	})
	t.Run("outlier refused", func(t *testing.T) {
		var refs []*guard.Refusals
		ps := newPeers(t, 2, 3000, func(_ int, c *Config) {
			c.NormK = 10
			c.GossipTimeout = slow * 500 * time.Millisecond
			ref, err := guard.New(prometheus.NewRegistry(), nil, guard.Policy{})
			if err != nil {
				t.Fatal(err)
			}
			c.Refusals = ref
			refs = append(refs, ref)
		})
		for j := range ps[1].vec {
			ps[1].vec[j] *= -100
		}
		var wg sync.WaitGroup
		for _, p := range ps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = p.a.Gossip(context.Background(), "pair", 1, p.vec, p.w)
			}()
		}
		wg.Wait()
		if !slices.Equal(ps[0].vec, ps[0].orig) {
			t.Fatal("the honest peer mixed in the outlier's vector")
		}
		var n uint64
		for _, c := range refs[0].Summary().Refusals {
			if c.Protocol == ProtoGossip && c.Reason == reasonOutlier {
				n += c.Count
			}
		}
		if n == 0 {
			t.Fatalf("no outlier refusal: %+v", refs[0].Summary().Refusals)
		}
	})
}
