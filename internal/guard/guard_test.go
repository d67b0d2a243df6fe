package guard

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/swarm-train/swarm/internal/clock"
)

func TestOffenderAfterStrikesInWindow(t *testing.T) {
	reg := prometheus.NewRegistry()
	r, err := New(reg, nil, Policy{Strikes: 3, Window: time.Minute, Ban: 10 * time.Minute, MaxPeers: 16})
	if err != nil {
		t.Fatal(err)
	}
	clk := clock.NewManual(time.Unix(1000, 0))
	r.SetClock(clk)
	var hit []peer.ID
	r.OnOffender(func(p peer.ID, _ string) { hit = append(hit, p) })
	p := peer.ID("attacker")
	if r.Refuse(p, "/p", "oversize", errors.New("x")) || r.Refuse(p, "/p", "oversize", nil) {
		t.Fatal("offender before 3 strikes")
	}
	clk.Advance(2 * time.Minute) // the first two fall out of the window
	if r.Refuse(p, "/p", "oversize", nil) {
		t.Fatal("strikes outside the window counted")
	}
	r.Refuse(p, "/p", "stall", nil)
	if !r.Refuse(p, "/p", "oversize", nil) || len(hit) != 1 || !r.Banned(p) {
		t.Fatalf("third strike in the window: hooks %v banned %v", hit, r.Banned(p))
	}
	clk.Advance(11 * time.Minute)
	if r.Banned(p) {
		t.Fatal("ban did not expire")
	}
	if got := testutil.ToFloat64(r.ctr.WithLabelValues("/p", "oversize")); got != 4 {
		t.Fatalf("counter %v, want 4", got)
	}
	s := r.Summary()
	if s.Offenders != 1 || len(s.Refusals) != 2 || s.Refusals[0].Reason != "oversize" || s.Refusals[0].Count != 4 {
		t.Fatalf("summary %+v", s)
	}
}

func TestPeersBounded(t *testing.T) {
	r, _ := New(nil, nil, Policy{MaxPeers: 8})
	for i := range 1000 {
		r.Refuse(peer.ID(rune(i)), "/p", "not-admitted", nil)
	}
	if len(r.peers) != 8 || r.lru.Len() != 8 {
		t.Fatalf("remembered %d peers, want 8", len(r.peers))
	}
}

func TestNilRefusals(t *testing.T) {
	var r *Refusals
	if r.Refuse("p", "/p", "x", nil) || r.Banned("p") {
		t.Fatal("nil refusals acted")
	}
	r.Ban("p")
	_ = r.Summary()
}

// stingy hands out at most k bytes per Read and counts them.
type stingy struct {
	r    io.Reader
	k    int
	read int
}

func (s *stingy) Read(b []byte) (int, error) {
	n, err := s.r.Read(b[:min(len(b), s.k)])
	s.read += n
	return n, err
}

func TestReadFullGrowsWithData(t *testing.T) {
	data := bytes.Repeat([]byte{7}, 300<<10)
	got, err := ReadFull(&stingy{r: bytes.NewReader(data), k: 1000}, len(data))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("err %v, equal %v", err, bytes.Equal(got, data))
	}
	// A declared 1 GiB with 10 bytes behind it allocates about one chunk.
	got, err = ReadFull(bytes.NewReader(make([]byte, 10)), 1<<30)
	if !errors.Is(err, io.ErrUnexpectedEOF) || len(got) != 10 || cap(got) > 2*readChunk {
		t.Fatalf("err %v len %d cap %d", err, len(got), cap(got))
	}
	if _, err := ReadFull(bytes.NewReader(nil), -1); err == nil {
		t.Fatal("negative size accepted")
	}
}

// BanFor bans for the policy's period, counts the ban by reason, logs once
// and has the node disconnect the peer.
func TestBanFor(t *testing.T) {
	reg := prometheus.NewRegistry()
	r, err := New(reg, nil, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	var hooked []string
	r.OnOffender(func(_ peer.ID, reason string) { hooked = append(hooked, reason) })
	p := peer.ID("liar")
	r.BanFor(p, "statesync-chunk", errors.New("chunk 3 does not match its hash"))
	r.BanFor(p, "statesync-chunk", errors.New("again"))
	if !r.Banned(p) {
		t.Fatal("not banned")
	}
	if got := testutil.ToFloat64(r.bans.WithLabelValues("statesync-chunk")); got != 2 {
		t.Errorf("bans_total = %v, want 2", got)
	}
	if len(hooked) != 2 {
		t.Errorf("disconnect hooks ran %d times", len(hooked))
	}
}

// Count counts and logs a refusal without a strike: the peer is judged by
// other rules and never becomes an offender through it.
func TestCountAddsNoStrike(t *testing.T) {
	var log bytes.Buffer
	r, _ := New(prometheus.NewRegistry(), slog.New(slog.NewTextHandler(&log, nil)), Policy{Strikes: 2})
	p := peer.ID("sender")
	for range 10 {
		r.Count(p, "/p", "norm", errors.New("scale 100 times the median"))
	}
	if r.Banned(p) || r.Summary().Offenders != 0 {
		t.Fatal("counted refusals made an offender")
	}
	if got := testutil.ToFloat64(r.ctr.WithLabelValues("/p", "norm")); got != 10 {
		t.Fatalf("counter %v, want 10", got)
	}
	if n := strings.Count(log.String(), "refused peer input"); n != 1 {
		t.Fatalf("logged %d times, want once:\n%s", n, log.String())
	}
	var nilR *Refusals
	nilR.Count(p, "/p", "norm", nil)
}
