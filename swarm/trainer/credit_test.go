package trainer

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/swarm-train/swarm/internal/guard"
	"github.com/swarm-train/swarm/internal/testutil"
)

// Two nodes on two shards credit each other for every micro-batch (the
// stage for what it was sent, the sender for the answer); each checks the
// other's claim against its receipts: an honest claim passes, a claim four
// times what the receipts back is caught and its node banned.
func TestCreditReceiptsAndInflatedClaim(t *testing.T) {
	for _, liar := range []bool{false, true} {
		t.Run(fmt.Sprintf("liar=%v", liar), func(t *testing.T) {
			s := &swarmT{t: t, m: smallMNIST(2, 32, 100000)}
			refs := make([]*guard.Refusals, 2)
			for i := range refs {
				var err error
				if refs[i], err = guard.New(nil, nil, guard.Policy{}); err != nil {
					t.Fatal(err)
				}
			}
			a := s.add(0, func(c *Config) { c.Refusals, c.CreditEvery = refs[0], 300*time.Millisecond })
			b := s.add(1, func(c *Config) {
				c.Refusals, c.CreditEvery = refs[1], 300*time.Millisecond
				if liar {
					c.Fault = FaultCredit
				}
			})
			bID := s.hosts[1].ID()
			aID := s.hosts[0].ID()
			// Both earn receipts (the liar may be caught before it earns any:
			// it claims 10,000 samples from the start).
			if !liar {
				testutil.Eventually(t, 60*time.Second, func() string {
					return fmt.Sprintf("credited: a %+v, b %+v", a.credit.Credited(), b.credit.Credited())
				}, func() bool { return a.credit.Credited().Samples > 0 && b.credit.Credited().Samples > 0 })
			}
			// a checks b's claim.
			testutil.Eventually(t, 60*time.Second, func() string { return fmt.Sprintf("a's checks %+v", a.credit.Verified()) }, func() bool {
				c, ok := a.credit.LastCheck(bID)
				return ok && (c.Err != "" || c.Backed > 0)
			})
			c, _ := a.credit.LastCheck(bID)
			if liar {
				if !strings.Contains(c.Err, "claims") || !refs[0].Banned(bID) {
					t.Fatalf("inflated claim not caught: check %+v, banned %v", c, refs[0].Banned(bID))
				}
				return
			}
			if c.Err != "" || c.Backed < c.Claimed || refs[0].Banned(bID) {
				t.Fatalf("honest claim failed: %+v", c)
			}
			// and b checks a's.
			testutil.Eventually(t, 60*time.Second, func() string { return fmt.Sprintf("b's checks %+v", b.credit.Verified()) }, func() bool {
				c, ok := b.credit.LastCheck(aID)
				return ok && (c.Err != "" || c.Backed > 0)
			})
			if c, _ := b.credit.LastCheck(aID); c.Err != "" || refs[1].Banned(aID) {
				t.Fatalf("honest claim of the first stage failed: %+v", c)
			}
		})
	}
}
