package node

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/swarm-train/swarm/internal/testutil"
)

// The bucket in virtual time: a full burst goes at once, then bytes go at
// the rate, shared by writers in the order they asked.
func TestUploadBucket(t *testing.T) {
	now := time.Unix(0, 0)
	var slept time.Duration
	b := newBucket(8, func() time.Time { return now }, func(d time.Duration) { slept += d; now = now.Add(d) })
	// 8 Mbit/s = 1 MB/s; burst a quarter second = 250 kB.
	if b.rate != 1e6 || b.burst != 250e3 {
		t.Fatalf("rate %v burst %v", b.rate, b.burst)
	}
	s := limitedStream{Stream: discard{}, b: b}
	if _, err := s.Write(make([]byte, 250_000)); err != nil || slept != 0 {
		t.Fatalf("the burst waited %v (%v)", slept, err)
	}
	if _, err := s.Write(make([]byte, 2_000_000)); err != nil {
		t.Fatal(err)
	}
	if slept < 1990*time.Millisecond || slept > 2010*time.Millisecond {
		t.Errorf("2 MB at 1 MB/s after the burst waited %v, want 2 s", slept)
	}
	// Idle refills the bucket to the burst, no more.
	now = now.Add(time.Hour)
	slept = 0
	if _, err := s.Write(make([]byte, 500_000)); err != nil {
		t.Fatal(err)
	}
	if slept < 240*time.Millisecond || slept > 260*time.Millisecond {
		t.Errorf("500 kB after an idle hour waited %v, want 250 ms (burst 250 kB)", slept)
	}
}

type discard struct{ network.Stream }

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// A node with --max-upload-mbps sends a training stream no faster than the
// limit (a lower bound on the time: never flaky under load).
func TestMaxUploadLimitsTrainingStreams(t *testing.T) {
	const proto = protocol.ID("/swarm/test-upload/1.0.0")
	recv := startNode(t, testConfig("upload-run"))
	got := make(chan int64, 1)
	recv.RunHost().SetStreamHandler(proto, func(s network.Stream) {
		n, _ := io.Copy(io.Discard, s)
		got <- n
		s.Close()
	})
	cfg := testConfig("upload-run")
	cfg.MaxUploadMbps = 16 // 2 MB/s
	send := startNode(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	testutil.Connect(t, send.Host(), recv.Host())
	start := time.Now()
	s, err := send.RunHost().NewStream(ctx, recv.Host().ID(), proto)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(make([]byte, 3_000_000)); err != nil {
		t.Fatal(err)
	}
	s.CloseWrite()
	if n := <-got; n != 3_000_000 {
		t.Fatalf("received %d bytes", n)
	}
	// 3 MB at 2 MB/s with a 0.5 MB burst: at least 1.25 s.
	if el := time.Since(start); el < 1200*time.Millisecond {
		t.Errorf("3 MB went in %v at a 16 Mbit/s limit", el)
	}
	if st := send.Status(); st.MaxUploadMbps != 16 {
		t.Errorf("status max_upload_mbps %v", st.MaxUploadMbps)
	}
}
