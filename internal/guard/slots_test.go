package guard

import (
	"runtime"
	"sync"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Slots serve at most the per-peer cap of one peer's requests at once and
// forget peers with nothing in progress.
func TestSlotsCapPerPeer(t *testing.T) {
	s := NewSlots(4, 10)
	var mu sync.Mutex
	served, refused := 0, 0
	var wg sync.WaitGroup
	hold := make(chan struct{})
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok := s.Acquire("attacker")
			mu.Lock()
			if ok {
				served++
			} else {
				refused++
			}
			mu.Unlock()
			if ok {
				<-hold
				s.Release("attacker")
			}
		}()
	}
	for {
		mu.Lock()
		n := served + refused
		mu.Unlock()
		if n == 64 {
			break
		}
		runtime.Gosched()
	}
	if !s.Acquire("honest") {
		t.Fatal("an attacker at its cap blocked another peer")
	}
	s.Release("honest")
	close(hold)
	wg.Wait()
	if served != 4 || refused != 60 {
		t.Fatalf("served %d, refused %d of 64 parallel requests; want 4 and 60", served, refused)
	}
	for i := range 10 {
		if !s.Acquire(peer.ID(rune('a' + i))) {
			t.Fatalf("peer %d refused under the total cap", i)
		}
	}
	if s.Acquire("k") {
		t.Fatal("total cap exceeded")
	}
	for i := range 10 {
		s.Release(peer.ID(rune('a' + i)))
	}
	if n := s.Peers(); n != 0 {
		t.Fatalf("%d peers remembered with nothing in progress", n)
	}
}
