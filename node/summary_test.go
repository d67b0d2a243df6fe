package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/testutil"
	"github.com/swarm-train/swarm/node/api"
)

// A run node answers the summary protocol for its own run ID, once per
// second per asker; a question for another run gets nothing; a bootstrap
// (no run) asks and checks the answer.
func TestSummaryProtocol(t *testing.T) {
	b, baddr := startBootstrap(t)
	a := startNode(t, testConfig("summary-run", baddr))
	a.SetSummary(func() (api.RunSummary, bool) {
		return api.RunSummary{Shard: 1, State: "online", Epoch: 7, Loss: 0.5, SamplesPerS: 900, Processed: 12800,
			BusySeconds: 3, Device: "Test CPU", Engine: "native"}, true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The node dials the bootstrap as it starts: a dial the other way at
	// the same moment can meet it as a TCP simultaneous open (both ends
	// on their listen ports), which fails the handshake; the next dial,
	// or the node's own connection, succeeds.
	var dialErr error
	testutil.Eventually(t, 10*time.Second, func() string { return fmt.Sprintf("the bootstrap to reach the node: %v", dialErr) }, func() bool {
		dialErr = b.Host().Connect(ctx, peer.AddrInfo{ID: a.Host().ID(), Addrs: a.Host().Addrs()})
		return dialErr == nil
	})
	sum, err := b.FetchSummary(ctx, a.Host().ID(), a.RunID(), 2, 100)
	if err != nil || sum.Epoch != 7 || sum.Shard != 1 || sum.Processed != 12800 || sum.RunID != a.RunID().String() {
		t.Fatalf("summary %+v, %v", sum, err)
	}
	// At once again: over the rate, refused.
	if _, err := b.FetchSummary(ctx, a.Host().ID(), a.RunID(), 2, 100); err == nil {
		t.Error("a second question within a second was answered")
	}
	// Checked against the asker's view of the run: epoch past the run's end.
	testutil.Eventually(t, 5*time.Second, func() string { return "no answer after the rate gap" }, func() bool {
		_, err := b.FetchSummary(ctx, a.Host().ID(), a.RunID(), 2, 5)
		return errors.Is(err, ErrSummaryRange)
	})
	// Another run's ID: no answer.
	other, _ := cid.Decode("bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
	testutil.Eventually(t, 5*time.Second, func() string { return "answered for another run" }, func() bool {
		_, err := b.FetchSummary(ctx, a.Host().ID(), other, 2, 100)
		return err != nil && !errors.Is(err, ErrSummaryRange)
	})
}

func TestDecodeSummaryRejects(t *testing.T) {
	run, _ := cid.Decode("bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
	good := `{"run_id":"` + run.String() + `","shard":0,"epoch":3,"loss":1.5,"samples_per_s":10,"processed":5,"busy_seconds":1}`
	if _, err := DecodeSummary(strings.NewReader(good), run, 2, 10); err != nil {
		t.Fatalf("good summary refused: %v", err)
	}
	for _, c := range []struct{ name, body, says string }{
		{"huge", `{"device":"` + strings.Repeat("x", MaxSummaryBytes) + `"}`, "larger than"},
		{"not JSON", `epoch=3`, "not a JSON summary"},
		{"other run", strings.Replace(good, run.String(), "bafy-other", 1), "another run"},
		{"shard", strings.Replace(good, `"shard":0`, `"shard":2`, 1), "shard 2 of 2"},
		{"epoch", strings.Replace(good, `"epoch":3`, `"epoch":18446744073709551615`, 1), "past the run"},
		{"loss", strings.Replace(good, `"loss":1.5`, `"loss":1e300`, 1), "loss"},
		{"negative rate", strings.Replace(good, `"samples_per_s":10`, `"samples_per_s":-1`, 1), "samples_per_s"},
		{"processed", strings.Replace(good, `"processed":5`, `"processed":-5`, 1), "processed"},
		{"long state", strings.Replace(good, `"shard":0`, `"shard":0,"state":"`+strings.Repeat("s", 200)+`"`, 1), "state of 200 bytes"},
	} {
		if _, err := DecodeSummary(strings.NewReader(c.body), run, 2, 10); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.says)
		}
	}
}

func FuzzDecodeSummary(f *testing.F) {
	run, _ := cid.Decode("bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
	f.Add([]byte(`{"run_id":"` + run.String() + `","shard":0,"epoch":3}`))
	f.Add([]byte(`{"shard":-7}`))
	f.Add(bytes.Repeat([]byte("{"), 5000))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeSummary(io.NopCloser(bytes.NewReader(b)), run, 4, 100)
		if err == nil && (s.Shard < -1 || s.Shard >= 4 || s.Epoch > 100 || s.RunID != run.String()) {
			t.Fatalf("accepted out of range: %+v", s)
		}
	})
}
