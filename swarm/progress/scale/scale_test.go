package scale

import (
	"context"
	"testing"
	"time"
)

// A small run of the simulation: 16 peers in 4 shards bring up a mesh in
// which every node holds every record; an epoch change reaches 95% of them,
// a joiner sees all holders of its shard, a clean departure is forgotten by
// 95%, and the matchmaker groups every shard from the trackers' view. The
// bounds are for failure, not speed (the speeds are BENCHMARKS.md's).
//
// The race pass of make test (-short) leaves it out: under the race
// detector, on a shared machine, sixteen routers in one process fall
// behind their records' TTL.
func TestSmallSwarm(t *testing.T) {
	if testing.Short() {
		t.Skip("16 routers in one process: not under -short (the race pass)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Records change every second (not every 100 ms as in the bench): the
	// test checks what reaches whom, on a machine other tests share.
	res, err := Run(ctx, Config{N: 16, Shards: 4, Degree: 4, Window: time.Second, Trials: 1, Change: time.Second,
		Joiners: 1, Leavers: 1, Match: true, Group: 4, Seed: 7, Log: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Failures) > 0 {
		t.Fatalf("failures: %v", res.Failures)
	}
	t.Logf("%+v", res)
	if res.Coverage < 1 {
		t.Errorf("a node holds %.0f%% of the records, want all", 100*res.Coverage)
	}
	if res.Epoch95 <= 0 || res.JoinMax <= 0 || res.Leave95 <= 0 {
		t.Errorf("epoch %v s, join %v s, leave %v s: each must have been measured", res.Epoch95, res.JoinMax, res.Leave95)
	}
	if res.Leave95 >= 8 {
		t.Errorf("a departure took %.1f s to be known, as long as expiry (8 s): the goodbye was lost", res.Leave95)
	}
	if res.GroupedFrac < 0.9 {
		t.Errorf("%.0f%% of peers grouped, want at least 90%%", 100*res.GroupedFrac)
	}
	if res.ConnsMax > 4*res.Degree {
		t.Errorf("a node holds %d connections, more than 4× the %d it dials", res.ConnsMax, res.Degree)
	}
	if res.Rejected > 0 || res.ScoreMin < 0 {
		t.Errorf("honest peers: %d records rejected, lowest score %v", res.Rejected, res.ScoreMin)
	}
}
