package claims

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// A node does not take a shard whose holders, or whose neighbouring
// stages' holders, it cannot reach; with no shard trainable it takes
// Choose's pick.
func TestChooseReachable(t *testing.T) {
	flops := []float64{1, 1, 1}
	v := View{FLOPs: flops, Holders: []Holder{
		{Peer: "a", Shard: 0, Rate: 1}, {Peer: "b", Shard: 1, Rate: 5}, {Peer: "c", Shard: 2, Rate: 1},
		{Peer: "d", Shard: 0, Rate: 1}, {Peer: "e", Shard: 2, Rate: 1},
	}}
	not := func(ids ...string) func(string) bool {
		return func(p string) bool { return !slices.Contains(ids, p) }
	}
	for _, c := range []struct {
		name      string
		reach     func(string) bool
		trainable []bool
		want      int
	}{
		// Choose alone takes shard 1 (one holder, the others have two).
		{name: "everyone reachable", reach: not(), trainable: []bool{true, true, true}, want: 1},
		{name: "nil reach", trainable: []bool{true, true, true}, want: 1},
		// b unreachable: shard 1 and both its neighbours are out; shard 0 and
		// 2 need shard 1's holder for the pipeline.
		{name: "the only holder of the middle stage", reach: not("b"), trainable: []bool{false, false, false}, want: 1},
		// c and e unreachable: shard 2 and shard 1 (its neighbour) are out.
		{name: "every holder of the last stage", reach: not("c", "e"), trainable: []bool{true, false, false}, want: 0},
		// One of shard 0's two holders unreachable: still trainable.
		{name: "one of two holders", reach: not("a"), trainable: []bool{true, true, true}, want: 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := Trainable(v, c.reach); !slices.Equal(got, c.trainable) {
				t.Errorf("trainable %v, want %v", got, c.trainable)
			}
			if got := ChooseReachable(v, rand.New(rand.NewPCG(1, 2)), c.reach); got != c.want {
				t.Errorf("chose %d, want %d", got, c.want)
			}
		})
	}
	// An uncovered shard has no holder to reach: it stays trainable.
	if got := Trainable(View{FLOPs: flops, Holders: []Holder{{Peer: "a", Shard: 0, Rate: 1}}}, not("a")); !slices.Equal(got, []bool{false, false, true}) {
		t.Errorf("uncovered shards %v, want shard 2 only (shard 1 neighbours a's shard 0)", got)
	}
}
