package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/swarm-train/swarm/internal/redteam"
	"github.com/swarm-train/swarm/node/api"
	"github.com/swarm-train/swarm/spec/run"
)

// Red team: a small honest swarm (bootstrap + 4 nodes, mlp-mnist in 2
// shards) trains while internal/redteam attacks two of its nodes with every
// protocol's hostile values. The victims must refuse (counted in status),
// stay within 1.5× the memory they used before the attack, stay alive, and
// the swarm must keep training. `go test` runs a short version;
// SWARM_REDTEAM=long (make redteam) runs 64 streams per peer and 1,000 fake
// peers.

type redteamPlan struct {
	streams    int // parallel pipeline streams from one identity (the trainer serves 32 at once)
	fakePeers  int
	fakeConc   int
	stateReqs  int // state-sync header requests, two streams at a time
	stateConc  int // then this many streams at once
	leaderTime time.Duration
}

func redteamPlanFor(long bool) redteamPlan {
	if long {
		return redteamPlan{streams: 64, fakePeers: 1000, fakeConc: 8, stateReqs: 500, stateConc: 16, leaderTime: 20 * time.Second}
	}
	return redteamPlan{streams: 40, fakePeers: 100, fakeConc: 4, stateReqs: 100, stateConc: 16, leaderTime: 6 * time.Second}
}

// rssKiB is a process's resident set (VmRSS) in KiB, or 0 when it is gone.
func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// rssWatch samples victims' RSS until stopped and keeps the largest per
// phase.
type rssWatch struct {
	mu   sync.Mutex
	max  map[string]int
	stop chan struct{}
	done chan struct{}
}

func watchRSS(pids map[string]int, every time.Duration) *rssWatch {
	w := &rssWatch{max: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			w.mu.Lock()
			for name, pid := range pids {
				w.max[name] = max(w.max[name], rssKiB(pid))
			}
			w.mu.Unlock()
			select {
			case <-w.stop:
				return
			case <-time.After(every):
			}
		}
	}()
	return w
}

func (w *rssWatch) end() map[string]int {
	close(w.stop)
	<-w.done
	return w.max
}

// refusals is a victim's security.refusals as protocol → reason → count.
func refusalsOf(st *api.Status) map[string]map[string]uint64 {
	out := map[string]map[string]uint64{}
	if st == nil || st.Security == nil {
		return out
	}
	for _, r := range st.Security.Refusals {
		if out[r.Protocol] == nil {
			out[r.Protocol] = map[string]uint64{}
		}
		out[r.Protocol][r.Reason] += r.Count
	}
	return out
}

func TestRedTeam(t *testing.T) {
	long := os.Getenv("SWARM_REDTEAM") == "long"
	plan := redteamPlanFor(long)
	began := time.Now()
	s := newE2E(t, 2, 100000) // the run does not end during the test
	m, err := run.Load(s.manifest)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for range 4 {
		// The victims keep their shards through the attacks: a node that
		// moves holds a second shard's state for a while, which the RSS
		// bound below would charge to the attackers (CI at fb9e3b5: victim
		// A moved from shard 1 to shard 0 mid-attack and peaked at 1.55×).
		names = append(names, s.add(nil, "--rebalance-every", "1h"))
	}
	epochs := func() map[string]uint64 {
		out := map[string]uint64{}
		for _, n := range names {
			if st := s.training(n); st != nil && st.State == "online" {
				out[n] = st.Epoch
			}
		}
		return out
	}
	byShard := map[int]string{}
	s.wait(2*time.Minute, "all four nodes online in epoch 2 or later", func() bool {
		clear(byShard)
		for _, n := range names {
			st := s.training(n)
			if st == nil || st.State != "online" || st.Epoch < 2 {
				return false
			}
			byShard[st.Shard] = n
		}
		return len(byShard) == 2
	})
	// Victim A holds shard 1 (it serves the pipeline, state sync and
	// averaging of a stage); victim B holds shard 0 and meets the crowds.
	victims := map[string]string{"A": byShard[1], "B": byShard[0]}
	targets := map[string]redteam.Target{}
	pids := map[string]int{}
	for role, name := range victims {
		st, err := status(t, s.bin, filepath.Join(s.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		tg, err := redteam.ParseTarget(st.PeerID, st.Addrs, st.RunID)
		if err != nil {
			t.Fatal(err)
		}
		targets[role], pids[role] = tg, s.nodes[name].cmd.Process.Pid
	}
	// The attacker must get in as any stranger of an open run can, or every
	// attack below would only test the gate.
	for role, tg := range targets {
		probe, err := redteam.New(tg, false)
		if err != nil {
			t.Fatal(err)
		}
		err = probe.Join(context.Background())
		admitted := err == nil && probe.Admitted(context.Background())
		probe.Close()
		if !admitted {
			t.Fatalf("the attacker could not pass victim %s's hello (err %v, admitted %v): the attacks would test nothing past the gate", role, err, admitted)
		}
	}
	// Each victim's shard-mate is not attacked: its memory over the same
	// minutes is what training alone grows a holder of that shard by
	// (heap, pools, checkpoints), which the victim's bound allows too.
	mates := map[string]string{}
	for role, shard := range map[string]int{"A": 1, "B": 0} {
		for _, n := range names {
			if st := s.training(n); n != victims[role] && st != nil && st.Shard == shard {
				mates[role] = n
				pids[role+"-mate"] = s.nodes[n].cmd.Process.Pid
			}
		}
	}
	base := watchRSS(pids, 400*time.Millisecond)
	time.Sleep(3 * time.Second)
	baseline := base.end()
	before := epochs()
	t.Logf("online after %v; baseline RSS A (%s) %d MiB, B (%s) %d MiB; epochs %v",
		time.Since(began).Round(time.Second), victims["A"], baseline["A"]>>10, victims["B"], baseline["B"]>>10, before)

	shape := redteam.Shape{Shard: 1, N: uint32(m.Training.BatchSize), ActPerSample: m.ActivationSize(0), TargetsPerSample: 1}
	key := fmt.Sprintf("%s/shard/%d/grad", targets["A"].Run, 1)
	attackStart := time.Now()
	during := watchRSS(pids, 200*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var (
		mu      sync.Mutex
		results []redteam.Result
		wg      sync.WaitGroup
	)
	attack := func(name string, f func() redteam.Result) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := f()
			if name != "" {
				r.Attack = name
			}
			mu.Lock()
			results = append(results, r)
			mu.Unlock()
		}()
	}
	a, b := targets["A"], targets["B"]
	epochA := before[victims["A"]]
	// Victim A: the stage's protocols, one wave of pipeline attacks (all
	// bounded by the 15 s a stalled sender holds on), then the rest.
	attack("", func() redteam.Result { return redteam.PipelineOversize(ctx, a, shape, plan.streams, 15*time.Second) })
	attack("pipeline-flood", func() redteam.Result {
		return redteam.PipelineStall(ctx, a, shape, plan.streams, 15*time.Second)
	})
	attack("", func() redteam.Result { return redteam.PipelineStall(ctx, a, shape, 3, 15*time.Second) })
	attack("", func() redteam.Result { return redteam.Averaging(ctx, a, key, 5*time.Second) })
	attack("", func() redteam.Result { return redteam.HostileLeader(ctx, a, 1, epochA, plan.leaderTime) })
	attack("", func() redteam.Result {
		return redteam.StateSync(ctx, a, 1, plan.stateReqs, plan.stateConc, 10*time.Second)
	})
	attack("", func() redteam.Result { return redteam.Progress(ctx, a, 3*time.Second) })
	// Victim B: strangers, forgers and a crowd of fresh identities.
	attack("", func() redteam.Result { return redteam.NotAdmitted(ctx, b, 5*time.Second) })
	attack("", func() redteam.Result { return redteam.ForgedHello(ctx, b) })
	attack("", func() redteam.Result { return redteam.FakePeers(ctx, b, shape, plan.fakePeers, plan.fakeConc) })
	wg.Wait()
	attackTook := time.Since(attackStart)
	peak := during.end()
	for _, r := range results {
		t.Logf("attack %s", r.String())
	}
	after := watchRSS(pids, 300*time.Millisecond)
	time.Sleep(2 * time.Second)
	settled := after.end()

	// No process died.
	for name, d := range s.nodes {
		select {
		case err := <-d.done:
			t.Errorf("%s exited during the attacks: %v\n%s", name, err, tail(d.output(true), 4000))
		default:
		}
	}
	// Memory stayed within 1.5× the victim's own baseline, plus what its
	// unattacked shard-mate grew by meanwhile (CI at d02f13e and 46fef58:
	// victims at 1.52× and 1.62× of a baseline taken 11 s into the run,
	// after two minutes of training at 2,500 epochs).
	for _, role := range []string{"A", "B"} {
		natural := 0
		if mate := role + "-mate"; mates[role] != "" {
			natural = max(0, max(peak[mate], settled[mate])-baseline[mate])
			t.Logf("RSS shard-mate of %s (%s, not attacked): baseline %d MiB, then up to %d MiB",
				role, mates[role], baseline[mate]>>10, max(peak[mate], settled[mate])>>10)
		}
		t.Logf("RSS victim %s (%s): baseline %d MiB, peak under attack %d MiB (%.2f×), after %d MiB",
			role, victims[role], baseline[role]>>10, peak[role]>>10,
			float64(peak[role])/float64(max(baseline[role], 1)), settled[role]>>10)
		if worst := max(peak[role], settled[role]); worst > baseline[role]*3/2+natural {
			t.Errorf("victim %s (%s): RSS %d MiB during or after the attacks, more than 1.5× its baseline %d MiB plus its shard-mate's growth %d MiB",
				role, victims[role], worst>>10, baseline[role]>>10, natural>>10)
		}
	}
	// Refusals were counted for every attacked protocol.
	for role, want := range map[string][][2]string{
		"A": {
			{"pipeline", "oversize"}, {"pipeline", "flood"}, {"pipeline", "stall"},
			{string(redteam.ProtoMatch), "out-of-range"}, {string(redteam.ProtoMatch), "oversize"},
			{string(redteam.ProtoReduce), "out-of-range"}, {string(redteam.ProtoReduce), "oversize"},
			{string(redteam.ProtoGossip), "out-of-range"}, {string(redteam.ProtoGossip), "oversize"},
			{"statesync", "range"}, {"statesync", "op"},
			{"progress", "*"},
		},
		"B": {
			{string(redteam.ProtoHello), "malformed"},
			{string(redteam.ProtoPipeline), "not-admitted"}, {string(redteam.ProtoProgress), "not-admitted"},
			{string(redteam.ProtoState), "not-admitted"}, {string(redteam.ProtoMatch), "not-admitted"},
			{string(redteam.ProtoReduce), "not-admitted"}, {string(redteam.ProtoGossip), "not-admitted"},
		},
	} {
		st, err := status(t, s.bin, filepath.Join(s.dir, victims[role]))
		if err != nil {
			t.Errorf("victim %s: status: %v", role, err)
			continue
		}
		got := refusalsOf(st)
		t.Logf("victim %s refusals %v; offenders %d, banned %d", role, got, st.Security.Offenders, st.Security.Banned)
		for _, w := range want {
			if w[1] == "*" {
				var n uint64
				for proto, rs := range got {
					for reason, c := range rs {
						if strings.Contains(proto, w[0]) && reason != "not-admitted" {
							n += c
						}
					}
				}
				if n == 0 {
					t.Errorf("victim %s counted no refusal of hostile %s input (records with out-of-range fields, lengths 0 and 0xFFFFFFFF)", role, w[0])
				}
				continue
			}
			if got[w[0]][w[1]] == 0 {
				t.Errorf("victim %s counted no refusal %s/%s", role, w[0], w[1])
			}
		}
	}
	for _, r := range results {
		if r.Attack == "forged-hello" && r.Served > 0 {
			t.Errorf("a forged hello was admitted: %v", r.Notes)
		}
		if r.Attack == "not-admitted" && r.Served > 0 {
			t.Errorf("a stranger was served without a hello: %v", r.Notes)
		}
	}
	// Training goes on: every node advances two epochs past where it was
	// when the attacks ended.
	end := epochs()
	t.Logf("attacks took %v; epochs before %v, after %v", attackTook.Round(time.Second), before, end)
	s.wait(90*time.Second, "every node two epochs past the attacks", func() bool {
		now := epochs()
		for _, n := range names {
			if now[n] < end[n]+2 || now[n] == 0 {
				return false
			}
		}
		return true
	})
	t.Logf("red team (%s) took %v; epochs now %v", map[bool]string{true: "long", false: "short"}[long],
		time.Since(began).Round(time.Second), epochs())
}

// tail is the last n bytes of s.
func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
