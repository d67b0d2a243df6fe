package guard

import (
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Slots counts the requests being served for each peer and refuses one over
// a per-peer cap or a total cap. Its map holds only peers with a request in
// progress, so it never outgrows the total cap. It is safe for concurrent use.
type Slots struct {
	perPeer, total int

	mu    sync.Mutex
	busy  map[peer.ID]int
	count int
}

// NewSlots returns slots allowing perPeer requests of one peer and total of
// all peers at once.
func NewSlots(perPeer, total int) *Slots {
	return &Slots{perPeer: perPeer, total: total, busy: map[peer.ID]int{}}
}

// Acquire takes a slot for p; false when p or everyone is at the cap.
func (s *Slots) Acquire(p peer.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy[p] >= s.perPeer || s.count >= s.total {
		return false
	}
	s.busy[p]++
	s.count++
	return true
}

// Release returns a slot Acquire gave p.
func (s *Slots) Release(p peer.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy[p] <= 1 {
		delete(s.busy, p)
	} else {
		s.busy[p]--
	}
	s.count--
}

// Peers is the number of peers with a request in progress.
func (s *Slots) Peers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.busy)
}

// Held is the number of requests in progress, of all peers.
func (s *Slots) Held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}
