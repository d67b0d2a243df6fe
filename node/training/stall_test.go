package training

import (
	"strings"
	"testing"
	"time"

	"github.com/swarm-train/swarm/node"
	"github.com/swarm-train/swarm/node/api"
	"github.com/swarm-train/swarm/swarm/trainer"
)

func TestStallReport(t *testing.T) {
	blocked := node.Link{Connection: node.ConnRelayed, Blocked: true, Why: "hole punching failed and no training relay"}
	ok := node.Link{Connection: node.ConnDirect}
	peers := func(shards ...int) []trainer.PeerStatus {
		out := []trainer.PeerStatus{{PeerID: "self", Shard: 1}}
		for i, s := range shards {
			out = append(out, trainer.PeerStatus{PeerID: string(rune('a' + i)), Shard: s, State: "online"})
		}
		return out
	}
	for _, c := range []struct {
		name    string
		shard   int
		shards  int
		peers   []trainer.PeerStatus
		blocked string // peer IDs blocked
		stalled bool
		none    bool
		says    string
	}{
		{name: "all reachable", shard: 1, shards: 3, peers: peers(0, 1, 2), none: true},
		{name: "no shard yet", shard: -1, shards: 3, peers: peers(0), blocked: "a", none: true},
		{name: "next stage's only holder", shard: 1, shards: 3, peers: peers(0, 2), blocked: "b", stalled: true, says: "the next stage (shard 2): 1 of 1"},
		{name: "one of two previous", shard: 1, shards: 3, peers: peers(0, 0, 2), blocked: "a", says: "training is slowed"},
		{name: "shard-mate alone", shard: 1, shards: 2, peers: peers(1, 0), blocked: "a", stalled: true, says: "other holders of this node's shard"},
		{name: "a far stage does not count", shard: 0, shards: 3, peers: peers(1, 2), blocked: "b", none: true},
		{name: "done peers do not count", shard: 1, shards: 2, peers: append(peers(0), trainer.PeerStatus{PeerID: "z", Shard: 0, State: "done"}), blocked: "z", none: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			link := func(id string) node.Link {
				if strings.Contains(c.blocked, id) {
					return blocked
				}
				return ok
			}
			st := stallReport("self", c.shard, c.shards, c.peers, link, "forward port 4001")
			if c.none {
				if st != nil {
					t.Fatalf("report %+v, want none", st)
				}
				return
			}
			if st == nil {
				t.Fatal("no report")
			}
			if st.Stalled != c.stalled || !strings.Contains(st.Message, c.says) || !strings.Contains(st.Message, "forward port 4001") {
				t.Errorf("stalled %v message %q; want stalled %v, saying %q and the advice", st.Stalled, st.Message, c.stalled, c.says)
			}
			if len(st.Peers) != len(c.blocked) || st.Peers[0].Connection != node.ConnRelayed || st.Peers[0].Shard == nil {
				t.Errorf("peers %+v, want the %d blocked with their link and shard", st.Peers, len(c.blocked))
			}
		})
	}
}

// The warning is logged at most once a minute while it lasts; since is
// when it began.
func TestStallWatchLogsOncePerMinute(t *testing.T) {
	var w stallWatch
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	report := func() *api.Stall { return &api.Stall{Message: "m"} }
	var logged []int
	for i := range 150 { // every second for 150 s
		if w.update(report(), t0.Add(time.Duration(i)*time.Second)) {
			logged = append(logged, i)
		}
	}
	if len(logged) != 3 || logged[0] != 0 || logged[1] != 60 || logged[2] != 120 {
		t.Errorf("logged at %v s, want 0, 60 and 120", logged)
	}
	if st := w.current(); st == nil || st.Since != "2026-12-01T10:00:00Z" {
		t.Errorf("current %+v, want since the first report", st)
	}
	w.update(nil, t0.Add(200*time.Second))
	if w.current() != nil {
		t.Error("cleared report still current")
	}
}
