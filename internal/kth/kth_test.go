package kth

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// Largest agrees with a sort, with and without many equal values, for
// floats and for integers.
func TestLargest(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{1, 2, 3, 10, 1000} {
		for _, dup := range []bool{false, true} {
			a := make([]float32, n)
			b := make([]uint32, n)
			for i := range a {
				a[i] = float32(r.IntN(1000))
				if dup {
					a[i] = float32(r.IntN(3))
				}
				b[i] = uint32(a[i])
			}
			sa, sb := slices.Clone(a), slices.Clone(b)
			slices.Sort(sa)
			slices.Sort(sb)
			for _, k := range []int{1, n / 2, n} {
				if k < 1 {
					continue
				}
				if got, want := Largest(slices.Clone(a), k), sa[n-k]; got != want {
					t.Errorf("float32, n %d k %d: %v, want %v", n, k, got, want)
				}
				if got, want := Largest(slices.Clone(b), k), sb[n-k]; got != want {
					t.Errorf("uint32, n %d k %d: %v, want %v", n, k, got, want)
				}
			}
		}
	}
}
