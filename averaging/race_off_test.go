//go:build !race

package averaging

const slow = 1
