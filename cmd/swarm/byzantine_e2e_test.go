package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/swarm-train/swarm/node/client"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/epochs"
	"github.com/swarm-train/swarm/swarm/trainer"
)

// Process tests of the trust rules (swarm/epochs, state sync by agreement,
// the pipeline's and averaging's norm checks): a small honest swarm, 2
// shards × 2 pinned holders, plus one admitted Byzantine node (the hidden
// --fault flag) per attack class. Each run must complete with a test
// accuracy of at least 97% and within a point of the clean run's, the
// honest holders of each shard must end on one model, no honest peer may be
// banned, and the attacker must be banned by an honest node within a few
// epochs of its attack, for the attack's rule (log line with the peer, the
// rule and the evidence; swarm_security_bans_total{reason} on /metrics).
//
// `go test` runs the clean run and sign-flipped ×100 gradients in the
// pipeline's answers; SWARM_REDTEAM=long (make redteam) runs every class;
// SWARM_E2E_FAULTS=clean,samples,... picks some.

// byzantineCase is one attack class.
type byzantineCase struct {
	name  string
	fault string   // the attacker's --fault ("": no attacker)
	shard string   // the attacker's shard
	rules []string // ban reasons an honest node must count against it
	// joiner: a node joins the attacker's shard mid-run and syncs its
	// state (the attacker lies as a donor).
	joiner bool
	// audit: the run checks its reducers (averaging.audit_parts 1), in a
	// quarter of the rounds (audit_rate 0.25).
	audit bool
}

var byzantineCases = []byzantineCase{
	{name: "clean"},
	{name: "epoch-ahead", fault: trainer.FaultEpochAhead, shard: "0", rules: []string{"record-epoch"}},
	{name: "normsq", fault: trainer.FaultNormSq, shard: "0", rules: []string{"record-normsq"}},
	{name: "samples", fault: trainer.FaultSamples, shard: "0", rules: []string{"record-samples"}},
	{name: "request-epoch", fault: trainer.FaultRequestEpoch, shard: "0", rules: []string{"pipeline-epoch"}},
	{name: "grad-flip", fault: trainer.FaultGradFlip, shard: "1", rules: []string{"pipeline-norm"}},
	{name: "avg-flip", fault: trainer.FaultAvgFlip, shard: "1", rules: []string{"averaging-outlier"}},
	{name: "donor", fault: trainer.FaultDonor, shard: "0", rules: []string{"statesync-held-out"}, joiner: true},
	{name: "donor-chunks", fault: trainer.FaultDonorChunks, shard: "0", rules: []string{"statesync-chunk"}, joiner: true},
	{name: "reduce-lie", fault: trainer.FaultReduceLie, shard: "1", rules: []string{"reduce-result"}, audit: true},
}

// byzantineDefault are the cases `go test` runs.
var byzantineDefault = []string{"clean", "grad-flip"}

// banWithin is how many epochs after its attack began an attacker must be
// banned.
const banWithin = 40

// byzantineSteps is the run's length; the joiner comes at joinAt.
const (
	byzantineSteps = 600
	joinAt         = 150
)

// cleanAcc and cleanTook are the clean run's accuracy and duration, for
// the attacks run after it in the same process.
var (
	cleanMu   sync.Mutex
	cleanAcc  float64
	cleanTook time.Duration
)

// byzantineSwarm starts the honest swarm, every holder of a shard in one
// averaging group (so that a third holder never leaves one out), with
// robust aggregation: centered-clip, and norm_k 10 for the reducers and
// the pipeline.
func byzantineSwarm(t *testing.T, steps int, audit bool) (*e2eSwarm, []string) {
	s := newE2E(t, 2, steps)
	m, err := run.Load(s.manifest)
	if err != nil {
		t.Fatal(err)
	}
	m.Averaging.GroupSize = 4
	m.Averaging.Aggregation, m.Averaging.NormK = run.AggregateCenteredClip, 10
	if audit {
		m.Averaging.AuditParts, m.Averaging.AuditRate = 1, 0.25
	}
	if err := m.Save(s.manifest); err != nil {
		t.Fatal(err)
	}
	var honest []string
	for _, shard := range []string{"0", "0", "1", "1"} {
		honest = append(honest, s.add(nil, "--shard", shard))
	}
	return s, honest
}

// peerID is a node's peer ID, from its start line.
func (s *e2eSwarm) peerID(name string) string {
	var id string
	s.wait(30*time.Second, name+"'s start line", func() bool {
		out := s.nodes[name].output(true)
		i := strings.Index(out, "peer_id=")
		if i < 0 {
			return false
		}
		id = strings.Fields(out[i+len("peer_id="):])[0]
		return true
	})
	return id
}

// bans are the lines of name's log that ban a peer.
func (s *e2eSwarm) bans(name string) []string {
	var out []string
	for _, l := range strings.Split(s.nodes[name].output(true), "\n") {
		if strings.Contains(l, "banning a peer that lied") {
			out = append(out, l)
		}
	}
	return out
}

// bansTotal is swarm_security_bans_total{reason} on name's /metrics.
func (s *e2eSwarm) bansTotal(name, reason string) float64 {
	cl, err := client.FromHome(filepath.Join(s.dir, name))
	if err != nil {
		s.t.Fatal(err)
	}
	page, err := cl.Metrics(context.Background())
	if err != nil {
		s.t.Errorf("%s /metrics: %v", name, err)
		return 0
	}
	series := fmt.Sprintf(`swarm_security_bans_total{reason=%q} `, reason)
	for _, l := range strings.Split(page, "\n") {
		if rest, ok := strings.CutPrefix(l, series); ok {
			v, _ := strconv.ParseFloat(rest, 64)
			return v
		}
	}
	return 0
}

// finish waits for the run's end and returns the best test accuracy and
// the honest nodes' statuses.
func (s *e2eSwarm) finish(honest []string) (float64, map[string]*trainer.Status) {
	var acc float64
	var out map[string]*trainer.Status
	s.wait(6*time.Minute, "the honest nodes to finish the run with a test accuracy", func() bool {
		acc, out = -1, map[string]*trainer.Status{}
		done := true
		for _, n := range honest { // every one asked: the failure summary shows them all
			st := s.training(n)
			if st == nil || st.State != "done" {
				done = false
				continue
			}
			acc = max(acc, st.Accuracy)
			out[n] = st
		}
		return done && acc >= 0
	})
	return acc, out
}

// checkBans fails when an honest node banned an honest peer; liar (if any)
// is the only peer that may be banned.
func (s *e2eSwarm) checkBans(honest []string, liar string) {
	for _, n := range honest {
		for _, l := range s.bans(n) {
			if liar == "" || !strings.Contains(l, liar) {
				s.t.Errorf("%s banned an honest peer: %s", n, l)
			} else if strings.Contains(l, "reason="+epochs.RuleBannedByPeers) {
				s.t.Logf("%s: %s", n, l) // a ban the attack's rules do not log
			}
		}
	}
}

// atEpoch reads the epoch the banning node was in from a ban line.
var atEpoch = regexp.MustCompile(`this node at epoch (\d+)`)

// checkBanned checks that an honest node banned liar for each rule, within
// banWithin epochs of from, in its log and on its /metrics.
func (s *e2eSwarm) checkBanned(honest []string, liar string, rules []string, from uint64) {
	for _, rule := range rules {
		banned := false
		for _, n := range honest {
			for _, l := range s.bans(n) {
				if !strings.Contains(l, liar) || !strings.Contains(l, "reason="+rule) {
					continue
				}
				banned = true
				s.t.Logf("%s: %s", n, l)
				if m := atEpoch.FindStringSubmatch(l); m != nil {
					if e, _ := strconv.ParseUint(m[1], 10, 64); e > from+banWithin {
						s.t.Errorf("%s banned the attacker for %s at epoch %d, its attack began at %d", n, rule, e, from)
					}
				}
				if v := s.bansTotal(n, rule); v < 1 {
					s.t.Errorf("%s logged a ban for %s but swarm_security_bans_total{reason=%q} is %v", n, rule, rule, v)
				}
			}
		}
		if !banned {
			s.t.Errorf("no honest node banned the attacker %s for %s", liar, rule)
		}
	}
}

// epochOf is the highest epoch of the named nodes.
func (s *e2eSwarm) epochOf(names []string) uint64 {
	var e uint64
	for _, n := range names {
		if st := s.training(n); st != nil {
			e = max(e, st.Epoch)
		}
	}
	return e
}

func TestSwarmByzantine(t *testing.T) {
	want := byzantineDefault
	if os.Getenv("SWARM_REDTEAM") == "long" {
		want = nil
		for _, c := range byzantineCases {
			want = append(want, c.name)
		}
	}
	if f := os.Getenv("SWARM_E2E_FAULTS"); f != "" {
		want = strings.Split(f, ",")
	}
	for _, c := range byzantineCases {
		if !slices.Contains(want, c.name) {
			continue
		}
		t.Run(c.name, func(t *testing.T) { runByzantine(t, c) })
	}
}

func runByzantine(t *testing.T, c byzantineCase) {
	s, honest := byzantineSwarm(t, byzantineSteps, c.audit)
	start := time.Now()
	var liar, joiner string
	var from uint64
	// The attacker joins a running swarm: a sender alone is judged by
	// nothing (pipeline.NormWatch), as a liar that is a shard's only other
	// holder is not.
	s.wait(2*time.Minute, "the honest nodes online at epoch 5", func() bool {
		for _, n := range honest {
			if st := s.training(n); st == nil || st.State != "online" || st.Epoch < 5 {
				return false
			}
		}
		return true
	})
	if c.fault != "" {
		x := s.add(nil, "--shard", c.shard, "--fault", c.fault)
		liar = s.peerID(x)
		s.wait(time.Minute, "the attacker online", func() bool {
			st := s.training(x)
			return st != nil && st.State == "online"
		})
		from = s.epochOf(honest)
	}
	if c.joiner {
		s.wait(3*time.Minute, fmt.Sprintf("the honest nodes at epoch %d", joinAt), func() bool { return s.epochOf(honest[:1]) >= joinAt })
		from = s.epochOf(honest)
		joiner = s.add(nil, "--shard", c.shard)
		s.wait(time.Minute, "the joiner synced", func() bool {
			return strings.Contains(s.nodes[joiner].output(true), "state synced")
		})
		out := s.nodes[joiner].output(true)
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "state synced") {
				t.Logf("joiner: %s", l)
				if strings.Contains(l, "donors=1 ") && !strings.Contains(out, "passed the held-out check") {
					t.Errorf("the joiner installed a state that a single donor offered, unchecked: %s", l)
				}
			}
		}
		honest = append(honest, joiner)
	}
	acc, sts := s.finish(honest)
	took := time.Since(start)
	t.Logf("%s: accuracy %.4f in %v", c.name, acc, took.Round(time.Second))
	if acc < 0.97 {
		t.Errorf("accuracy %.4f, want >= 0.97", acc)
	}
	cleanMu.Lock()
	if c.fault == "" {
		cleanAcc, cleanTook = acc, took
	}
	refAcc, refTook := cleanAcc, cleanTook
	cleanMu.Unlock()
	if c.fault != "" && refAcc > 0 {
		t.Logf("clean: accuracy %.4f in %v", refAcc, refTook.Round(time.Second))
		if acc < refAcc-0.01 {
			t.Errorf("accuracy %.4f under attack, more than a point below the clean run's %.4f", acc, refAcc)
		}
		if !c.joiner && took > 2*refTook {
			t.Errorf("the run took %v under attack, the clean one %v", took.Round(time.Second), refTook.Round(time.Second))
		}
	}
	sameShardParams(t, sts)
	s.checkBans(honest, liar)
	if liar != "" {
		s.checkBanned(honest, liar, c.rules, from)
	}
}
