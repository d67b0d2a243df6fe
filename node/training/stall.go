package training

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/node"
	"github.com/swarm-train/swarm/node/api"
	"github.com/swarm-train/swarm/swarm/trainer"
)

// How often the service looks for shard-mates and neighbouring stages it
// cannot train with, and how often at most it warns about them.
const (
	stallCheck    = 15 * time.Second
	stallLogEvery = time.Minute
)

// stallReport names the peers this node needs and cannot train with: the
// other holders of its shard (averaging) and the holders of the stages
// before and after it (the pipeline), each blocked as link says. It is nil
// when none is blocked. Training is stalled when every holder of a shard
// it needs is blocked; otherwise it goes on with the others, slower.
func stallReport(self string, shard, shards int, peers []trainer.PeerStatus, link func(string) node.Link, advice string) *api.Stall {
	if shard < 0 {
		return nil
	}
	holders := map[int][]string{}
	for _, p := range peers {
		if p.PeerID != self && p.Shard >= 0 && p.State != "done" {
			holders[p.Shard] = append(holders[p.Shard], p.PeerID)
		}
	}
	st := &api.Stall{Peers: []api.Peer{}}
	var parts []string
	for _, k := range []int{shard - 1, shard, shard + 1} {
		if k < 0 || k >= shards || len(holders[k]) == 0 {
			continue
		}
		ids := holders[k]
		sort.Strings(ids)
		var blocked []string
		for _, id := range ids {
			l := link(id)
			if !l.Blocked {
				continue
			}
			s := k
			st.Peers = append(st.Peers, api.Peer{PeerID: id, Addrs: []string{}, Shard: &s, Connection: l.Connection, Error: l.Why})
			blocked = append(blocked, fmt.Sprintf("%s (%s: %s)", short(id), l.Connection, l.Why))
		}
		if len(blocked) == 0 {
			continue
		}
		all := len(blocked) == len(ids)
		st.Stalled = st.Stalled || all
		role := "the previous stage"
		switch k {
		case shard:
			role = "the other holders of this node's shard"
		case shard + 1:
			role = "the next stage"
		}
		parts = append(parts, fmt.Sprintf("%s (shard %d): %d of %d unreachable: %s", role, k, len(blocked), len(ids), strings.Join(blocked, ", ")))
	}
	if len(st.Peers) == 0 {
		return nil
	}
	what := "training is slowed"
	if st.Stalled {
		what = "training is stalled"
	}
	st.Message = fmt.Sprintf("%s: this node (shard %d) cannot reach %s; to fix: %s", what, shard, strings.Join(parts, "; "), advice)
	return st
}

// short is the tail of a peer ID, as peers are shown in logs.
func short(id string) string {
	if len(id) > 8 {
		return "…" + id[len(id)-8:]
	}
	return id
}

// stallWatch keeps the latest stall report for status and logs it, at
// most once every stallLogEvery while it lasts.
type stallWatch struct {
	mu     sync.Mutex
	last   *api.Stall
	since  time.Time
	logged time.Time
}

func (w *stallWatch) current() *api.Stall {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.last == nil {
		return nil
	}
	c := *w.last
	return &c
}

// update takes a new report at now and says whether to log it.
func (w *stallWatch) update(st *api.Stall, now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if st == nil {
		w.last, w.since = nil, time.Time{}
		return false
	}
	if w.last == nil {
		w.since = now
	}
	st.Since = w.since.UTC().Format(time.RFC3339)
	w.last = st
	if !w.logged.IsZero() && now.Sub(w.logged) < stallLogEvery {
		return false
	}
	w.logged = now
	return true
}

// watchStalls checks every stallCheck whether training is held up by
// connectivity, for status and the log.
func (s *Service) watchStalls(ctx context.Context, n *node.Node, t *trainer.Trainer) {
	clk := s.clk()
	tick := clk.NewTicker(stallCheck)
	defer tick.Stop()
	self := n.Host().ID().String()
	shards := len(s.Config.Manifest.Shards)
	link := func(id string) node.Link {
		p, err := peer.Decode(id)
		if err != nil {
			return node.Link{}
		}
		return n.TrainingLink(p)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C():
		}
		ts := s.trainerStatus(t)
		st := stallReport(self, ts.Shard, shards, ts.Peers, link, n.ConnectivityAdvice())
		if s.stall.update(st, clk.Now()) {
			n.Logger().Warn("connectivity: "+st.Message, "stalled", st.Stalled, "blocked_peers", len(st.Peers))
		}
	}
}
