// Package kth selects the k-th largest value of a slice in linear expected
// time (quickselect), the threshold of top-k sparsification: local mode's
// compressed deltas (internal/sparseq) and topk activations between shards
// (swarm/pipeline).
package kth

import "cmp"

// Largest returns the k-th largest value of a (1 ≤ k ≤ len(a)); it
// reorders a. NaN compares as neither smaller nor larger than anything, so
// callers select among values without NaN (or among keys that order it).
func Largest[T cmp.Ordered](a []T, k int) T {
	target := len(a) - k // index of the k-th largest in ascending order
	lo, hi := 0, len(a)-1
	for lo < hi {
		// Median of three as the pivot keeps sorted input linear; a
		// Hoare partition leaves values ≤ p on the left, ≥ p on the right
		// and values equal to p between them.
		mid := lo + (hi-lo)/2
		p := max(min(a[lo], a[mid]), min(max(a[lo], a[mid]), a[hi]))
		i, j := lo, hi
		for i <= j {
			for a[i] < p {
				i++
			}
			for a[j] > p {
				j--
			}
			if i <= j {
				a[i], a[j] = a[j], a[i]
				i++
				j--
			}
		}
		switch {
		case target <= j:
			hi = j
		case target >= i:
			lo = i
		default:
			return a[target]
		}
	}
	return a[target]
}
