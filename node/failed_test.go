package node

import (
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// A flood of fresh peer IDs that fail does not grow the failed map past
// maxFailed; marks past the backoff go first.
func TestFailedBounded(t *testing.T) {
	m := &membership{failed: map[peer.ID]time.Time{}}
	now := time.Unix(1000, 0)
	for i := range 3 * maxFailed {
		m.failLocked(peer.ID(fmt.Sprint("fake-", i)), now)
		now = now.Add(time.Millisecond)
	}
	if n := len(m.failed); n > maxFailed {
		t.Fatalf("%d failed peers remembered, bound %d", n, maxFailed)
	}
	if _, ok := m.failed[peer.ID(fmt.Sprint("fake-", 3*maxFailed-1))]; !ok {
		t.Fatal("the latest failure was not recorded")
	}
}
