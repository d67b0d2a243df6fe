package claims

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

func view(flops []float64, hs ...Holder) View { return View{FLOPs: flops, Holders: hs} }

func TestChoose(t *testing.T) {
	eq := []float64{1, 1, 1}
	cases := []struct {
		name string
		v    View
		want []int // acceptable answers
	}{
		{"empty run: any shard", view(eq), []int{0, 1, 2}},
		{"uncovered first", view(eq, Holder{"a", 0, 1}, Holder{"b", 1, 1}), []int{2}},
		{"uncovered beats slow", view(eq, Holder{"a", 0, 100}, Holder{"b", 1, 0.1}), []int{2}},
		{"least throughput", view(eq, Holder{"a", 0, 3}, Holder{"b", 1, 1}, Holder{"c", 2, 2}), []int{1}},
		{"flops matter", view([]float64{1, 4}, Holder{"a", 0, 2}, Holder{"b", 1, 4}), []int{1}},
		{"single holder before throughput", view([]float64{100, 1}, Holder{"a", 0, 1}, Holder{"b", 0, 1}, Holder{"c", 1, 1}), []int{1}},
		{"past redundancy throughput decides", view([]float64{100, 1}, Holder{"a", 0, 1}, Holder{"b", 0, 1}, Holder{"c", 1, 1}, Holder{"d", 1, 1}), []int{0}},
		{"tie is random", view(eq, Holder{"a", 0, 1}, Holder{"b", 1, 1}, Holder{"c", 2, 1}), []int{0, 1, 2}},
		{"zero-rate holder still covers", view([]float64{1, 1}, Holder{"a", 0, 0}, Holder{"b", 1, 5}), []int{0}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			seen := map[int]bool{}
			for seed := range uint64(64) {
				got := Choose(c.v, rand.New(rand.NewPCG(seed, 1)))
				ok := false
				for _, w := range c.want {
					ok = ok || got == w
				}
				if !ok {
					t.Fatalf("Choose = %d, want one of %v", got, c.want)
				}
				seen[got] = true
			}
			if len(seen) != len(c.want) {
				t.Fatalf("over 64 seeds chose %v, want every one of %v", seen, c.want)
			}
		})
	}
}

func TestPlan(t *testing.T) {
	eq3 := []float64{1, 1, 1}
	cases := []struct {
		name     string
		v        View
		wantMove bool
		from, to int
	}{
		{"balanced 2-2-2 stays", view(eq3, Holder{"a", 0, 1}, Holder{"b", 0, 1}, Holder{"c", 1, 1}, Holder{"d", 1, 1}, Holder{"e", 2, 1}, Holder{"f", 2, 1}), false, 0, 0},
		{"3-2-1 moves one from 0 to 2", view(eq3, Holder{"a", 0, 1}, Holder{"b", 0, 1}, Holder{"c", 0, 1}, Holder{"d", 1, 1}, Holder{"e", 1, 1}, Holder{"f", 2, 1}), true, 0, 2},
		{"uncovered shard gets covered", view(eq3, Holder{"a", 0, 1}, Holder{"b", 0, 1}, Holder{"c", 1, 1}, Holder{"d", 1, 1}), true, -1, 2},
		{"last holder never leaves", view(eq3, Holder{"a", 0, 1}, Holder{"b", 1, 1}), false, 0, 0},
		{"small gain below hysteresis", view([]float64{1, 1}, Holder{"a", 0, 1}, Holder{"b", 0, 1.2}, Holder{"c", 1, 1}, Holder{"d", 1, 1.1}, Holder{"e", 1, 0.3}), false, 0, 0},
		{"2-1 with equal nodes stays (a move would only swap the minimum)", view([]float64{1, 1}, Holder{"a", 0, 1}, Holder{"b", 0, 1}, Holder{"c", 1, 1}), false, 0, 0},
		{"fast node moves to starved shard", view([]float64{1, 1}, Holder{"a", 0, 10}, Holder{"b", 0, 10}, Holder{"c", 1, 1}), true, 0, 1},
		{"3-1 on a cheap last shard still ends 2-2", view([]float64{100, 1}, Holder{"a", 0, 1}, Holder{"b", 0, 1}, Holder{"c", 0, 1}, Holder{"d", 1, 1}), true, 0, 1},
		{"2-2 on unequal shards stays (redundancy beats throughput)", view([]float64{100, 1}, Holder{"a", 0, 1}, Holder{"b", 0, 1}, Holder{"c", 1, 1}, Holder{"d", 1, 1}), false, 0, 0},
		{"extra nodes go to the expensive shard", view([]float64{100, 1}, Holder{"a", 0, 1}, Holder{"b", 0, 1}, Holder{"c", 1, 1}, Holder{"d", 1, 1}, Holder{"e", 1, 1}), true, 1, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, ok := Plan(c.v, DefaultThreshold, 7)
			if ok != c.wantMove {
				t.Fatalf("Plan = %+v, %v; want move %v", m, ok, c.wantMove)
			}
			if !ok {
				return
			}
			if (c.from >= 0 && m.From != c.from) || m.To != c.to {
				t.Fatalf("Plan moved %s %d→%d, want %d→%d", m.Peer, m.From, m.To, c.from, c.to)
			}
			_, before := c.v.Totals()
			if before[m.From] > Redundancy && before[m.To] < Redundancy {
				return // a redundancy move
			}
			if !(m.OldMin/m.NewMin < DefaultThreshold) {
				t.Fatalf("move %+v does not pass the hysteresis", m)
			}
		})
	}
}

// TestSettles simulates rounds of join and rebalance: every node applies the
// plan computed from the shared view. It must end balanced, never uncover a
// shard, and never move a node back to a shard it left.
func TestSettles(t *testing.T) {
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 2))
		v := View{FLOPs: []float64{1, 1, 1}}
		// Six nodes join in pairs that see the same (stale) view: collisions happen.
		for i := 0; i < 6; i += 2 {
			a, b := Choose(v, rng), Choose(v, rng)
			v.Holders = append(v.Holders, Holder{fmt.Sprint("n", i), a, 1}, Holder{fmt.Sprint("n", i+1), b, 1})
		}
		left := map[string]int{}
		for round := uint64(0); round < 20; round++ {
			m, ok := Plan(v, DefaultThreshold, round)
			if !ok {
				break
			}
			if prev, moved := left[m.Peer]; moved && prev == m.To {
				t.Fatalf("seed %d: %s moved back to %d", seed, m.Peer, m.To)
			}
			left[m.Peer] = m.From
			for i := range v.Holders {
				if v.Holders[i].Peer == m.Peer {
					v.Holders[i].Shard = m.To
				}
			}
			if _, cnt := v.Totals(); cnt[m.From] == 0 {
				t.Fatalf("seed %d: move %+v uncovered shard %d", seed, m, m.From)
			}
		}
		if _, cnt := v.Totals(); cnt[0] != 2 || cnt[1] != 2 || cnt[2] != 2 {
			t.Fatalf("seed %d: ended %v, want 2-2-2", seed, cnt)
		}
	}
}

// TestCoverAfterDeath: both holders of a shard die; the plan moves others
// to cover it, one at a time.
func TestCoverAfterDeath(t *testing.T) {
	v := view([]float64{1, 1, 1}, Holder{"a", 0, 1}, Holder{"b", 0, 1}, Holder{"c", 1, 1}, Holder{"d", 1, 1})
	m, ok := Plan(v, DefaultThreshold, 0)
	if !ok || m.To != 2 {
		t.Fatalf("Plan = %+v %v, want a move to shard 2", m, ok)
	}
	for i := range v.Holders {
		if v.Holders[i].Peer == m.Peer {
			v.Holders[i].Shard = 2
		}
	}
	if m2, ok := Plan(v, DefaultThreshold, 1); ok {
		t.Fatalf("second move %+v after shard 2 was covered (2-1-1 or 1-2-1 is as good as it gets with 4 nodes)", m2)
	}
}

// TestSettlesUnequalShards: with shards of very different cost, 6 nodes
// still end 2-2-2 (redundancy), and the plan settles.
func TestSettlesUnequalShards(t *testing.T) {
	v := view([]float64{50, 10, 1}, Holder{"a", 0, 1}, Holder{"b", 0, 1}, Holder{"c", 0, 1}, Holder{"d", 0, 1}, Holder{"e", 1, 1}, Holder{"f", 2, 1})
	for round := uint64(0); round < 10; round++ {
		m, ok := Plan(v, DefaultThreshold, round)
		if !ok {
			break
		}
		for i := range v.Holders {
			if v.Holders[i].Peer == m.Peer {
				v.Holders[i].Shard = m.To
			}
		}
	}
	if _, cnt := v.Totals(); cnt[0] != 2 || cnt[1] != 2 || cnt[2] != 2 {
		t.Fatalf("ended %v, want 2-2-2", cnt)
	}
}
