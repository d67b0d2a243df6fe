package averaging

import (
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// The draw audits a round with probability rate, the same for everyone
// holding the same seeds, always at rate 1; each member's seed changes it.
func TestAuditDraw(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	seeds := func(n int) []*[seedLen]byte {
		out := make([]*[seedLen]byte, n)
		for j := range out {
			var s [seedLen]byte
			for i := range s {
				s[i] = byte(rng.Uint32())
			}
			out[j] = &s
		}
		return out
	}
	var group [16]byte
	const trials = 4000
	for _, rate := range []float64{0.1, 0.25, 0.5} {
		hits := 0
		for range trials {
			if auditDraw(group, seeds(8), rate) {
				hits++
			}
		}
		if got := float64(hits) / trials; got < rate-0.03 || got > rate+0.03 {
			t.Errorf("rate %g: %d of %d rounds audited (%.3f)", rate, hits, trials, got)
		}
	}
	// One member's seed moves the outcome: over many rounds, changing only
	// the last seed changes the draw about 2·r·(1−r) of the time.
	changed := 0
	for range trials {
		s := seeds(8)
		a := auditDraw(group, s, 0.5)
		*s[7] = *seeds(1)[0]
		if auditDraw(group, s, 0.5) != a {
			changed++
		}
	}
	if changed < trials/3 {
		t.Errorf("the last member's seed changed the draw %d of %d times", changed, trials)
	}
	s := seeds(4)
	for range 100 {
		if !auditDraw(group, s, 1) {
			t.Fatal("rate 1 left a round unaudited")
		}
	}
	// Members that do not count (nil) are left out, not read as zeros.
	s[2] = nil
	zero := seeds(4)
	*zero[2] = [seedLen]byte{}
	copy(zero[:2], s[:2])
	zero[3] = s[3]
	differ := false
	for g := range 64 {
		group[0] = byte(g)
		if auditDraw(group, s, 0.5) != auditDraw(group, zero, 0.5) {
			differ = true
		}
	}
	if !differ {
		t.Error("a missing seed drew as an all-zero one")
	}
}

func TestSeedWire(t *testing.T) {
	m := seedMsg{Group: [16]byte{1, 2, 3}, Value: [seedLen]byte{9, 8, 7}}
	b := m.marshal()
	if len(b) != seedFrame {
		t.Fatalf("seed message of %d bytes, want %d", len(b), seedFrame)
	}
	got, err := unmarshalSeed(b)
	if err != nil || got != m {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for _, bad := range [][]byte{b[:len(b)-1], append(b, 0), nil} {
		if _, err := unmarshalSeed(bad); err == nil {
			t.Errorf("a seed message of %d bytes decoded", len(bad))
		}
	}
	v := append([]byte(nil), b...)
	v[1]++
	if _, err := unmarshalSeed(v); err == nil || !strings.Contains(err.Error(), "wire version") {
		t.Errorf("another wire version: %v", err)
	}
}

func FuzzSeed(f *testing.F) {
	f.Add((&seedMsg{Group: [16]byte{1}, Value: [seedLen]byte{2}}).marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := unmarshalSeed(b)
		if err != nil {
			return
		}
		if len(b) != seedFrame {
			t.Fatalf("a seed message decoded from %d bytes", len(b))
		}
		if m2, err := unmarshalSeed(m.marshal()); err != nil || !reflect.DeepEqual(m2, m) {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

// drawPeers is a group of auditN with audits drawn at rate.
func drawPeers(t *testing.T, rate float64, mod func(i int, c *Config)) *auditPeers {
	return newAuditPeers(t, auditN, maxAuditParts, func(i int, c *Config) {
		c.AuditRate = rate
		if mod != nil {
			mod(i, c)
		}
	})
}

// TestAuditDrawnRounds: at rate 0.5 every member of a round draws the same,
// an unaudited round takes every result (the honest mean, everyone on the
// same bytes) with no audit at all, and a reducer that lies in every round
// is convicted in the first audited one, by everyone, with proof.
func TestAuditDrawnRounds(t *testing.T) {
	const liar = 2
	ap := drawPeers(t, 0.5, nil)
	lying := false
	ap.ps[liar].a.faults.lieResult = func(k int, avg []float32) {
		if lying {
			for j := range avg {
				avg[j] *= 1.01
			}
		}
	}
	skipped, audited := 0, 0
	for r := 1; r <= 30; r++ {
		lying = skipped > 0 // lie once an unaudited round was seen honest
		out := ap.round(t, "drawn", uint64(r))
		for i, o := range out[1:] {
			if o.res.Audited != out[0].res.Audited {
				t.Fatalf("round %d: peer 0 drew audited=%v, peer %d %v", r, out[0].res.Audited, i+1, o.res.Audited)
			}
		}
		if !out[0].res.Audited {
			skipped++
			for i, o := range out {
				if o.res.Audits+o.res.Checks != 0 || len(o.res.Accusations) != 0 || len(o.res.Excluded) != 0 || o.res.Fraction != 1 {
					t.Fatalf("round %d, unaudited: peer %d audited %d, checked %d, accused %v, excluded %v, fraction %v",
						r, i, o.res.Audits, o.res.Checks, o.res.Accusations, o.res.Excluded, o.res.Fraction)
				}
				// (A lie in an unaudited round goes through: what a rate
				// below 1 allows.)
				if !lying && !slices.Equal(ap.ps[i].vec, ap.ps[0].vec) {
					t.Fatalf("round %d, unaudited: peers 0 and %d differ", r, i)
				}
			}
			continue
		}
		audited++
		if !lying {
			continue
		}
		for i, o := range out {
			if i == liar {
				continue
			}
			ac := ap.accusedBy(t, i, o.res, ap.id(liar))
			if ac == nil || ac.Rule != RuleResult || !ac.Proof {
				t.Fatalf("round %d, audited: peer %d accused %v, want a re-computation proof", r, i, ac)
			}
			if !ap.banned(i, ap.id(liar)) {
				t.Fatalf("round %d: peer %d did not ban the liar", r, i)
			}
		}
		t.Logf("round %d: the liar was convicted in the first audited round after it began lying", r)
		return
	}
	t.Fatalf("30 rounds at rate 0.5: %d audited, %d skipped, and the liar never convicted", audited, skipped)
}

// TestAuditDrawWithheld: a member that keeps its seed to itself, or reveals
// another than it committed to, cannot make a round unaudited: at a rate
// that almost never audits, every round is audited for the others. A wrong
// seed is refused (bad-seed); a withheld one is not (slow is not a lie).
func TestAuditDrawWithheld(t *testing.T) {
	for _, c := range []struct {
		name   string
		fault  func(f *faults)
		refuse bool
	}{
		{"withheld", func(f *faults) { f.withholdSeed = true }, false},
		{"wrong", func(f *faults) { f.wrongSeed = true }, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			const cheat = 1
			ap := drawPeers(t, 1e-9, nil)
			c.fault(&ap.ps[cheat].a.faults)
			for r := 1; r <= 2; r++ {
				out := ap.round(t, c.name, uint64(r))
				for i, o := range out {
					if i != cheat && (!o.res.Audited || o.res.Audits == 0 || len(o.res.Accusations) != 0) {
						t.Fatalf("round %d: peer %d audited=%v (%d parts), accused %v: want a forced, clean audit",
							r, i, o.res.Audited, o.res.Audits, o.res.Accusations)
					}
				}
			}
			for i := range ap.ps {
				if i == cheat {
					continue
				}
				got := uint64(0) // only the cheat sends seeds that can be refused
				for _, rc := range ap.refs[i].Summary().Refusals {
					if rc.Protocol == ProtoAudit && rc.Reason == reasonBadSeed {
						got += rc.Count
					}
				}
				if (got > 0) != c.refuse {
					t.Errorf("peer %d refused %d seeds (bad-seed), want refusals: %v", i, got, c.refuse)
				}
				if ap.banned(i, ap.id(cheat)) {
					t.Errorf("peer %d banned the member over its seed", i)
				}
			}
		})
	}
}

// TestAuditDrawDigestWithheld: a member that sends its parts but never the
// digest of its seed holds each other member's reveal up for at most
// AuditTimeout/8 (its digest is awaited: its parts were taken), and its
// seed then counts for nobody: every other member draws from the same
// seeds, so they agree, round after round, and every round ends within its
// timeouts. Not sending a digest is not a lie: nobody refuses or bans it.
func TestAuditDrawDigestWithheld(t *testing.T) {
	const cheat = 1
	ap := drawPeers(t, 0.5, nil)
	ap.ps[cheat].a.faults.withholdDigest = true
	wait := ap.ps[0].a.cfg.AuditTimeout / 8
	rounds := 4
	if testing.Short() {
		rounds = 2
	}
	for r := 1; r <= rounds; r++ {
		out := ap.round(t, "digest", uint64(r))
		var first *Result
		for i, o := range out {
			if i == cheat {
				continue
			}
			if first == nil {
				first = &out[i].res
			} else if o.res.Audited != first.Audited {
				t.Fatalf("round %d: the members other than the cheat drew differently (peer %d: audited=%v)", r, i, o.res.Audited)
			}
			// The digest wait, the seeds' wait and, where the cheat drew
			// otherwise than the rest and ran no audit, an audit waiting
			// out its commitment and report (AuditTimeout).
			if lim := wait + ap.ps[i].a.cfg.AuditTimeout*5/4 + slow*time.Second; o.res.ReduceTime > lim {
				t.Fatalf("round %d: peer %d took %v, over %v", r, i, o.res.ReduceTime, lim)
			}
		}
	}
	for i := range ap.ps {
		if i == cheat {
			continue
		}
		for _, rc := range ap.refs[i].Summary().Refusals {
			if rc.Protocol == ProtoAudit {
				t.Errorf("peer %d refused audit input: %+v", i, rc)
			}
		}
		if ap.banned(i, ap.id(cheat)) {
			t.Errorf("peer %d banned the member over its digest", i)
		}
	}
}
