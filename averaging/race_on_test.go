//go:build race

package averaging

// slow scales test timeouts: the race detector slows everything down.
const slow = 4
