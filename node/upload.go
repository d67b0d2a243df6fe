package node

// The volunteer's upload limit (--max-upload-mbps): every byte this node
// writes on a training stream (pipeline, averaging, state sync, progress
// records: all go through RunHost) takes tokens from one bucket filled at
// the limit's rate. Writers reserve their bytes and sleep until the bucket
// covers them, so concurrent streams share the limit in arrival order.
// The DHT, the hello and the control API are not limited: they are small.

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// uploadChunk is the most bytes one reservation takes: a large write is
// sent in chunks so that concurrent streams interleave.
const uploadChunk = 16 << 10

// MaxUploadMbpsLimit bounds --max-upload-mbps (100 Gbit/s).
const MaxUploadMbpsLimit = 100_000

// bucket is a token bucket of bytes. Safe for concurrent use.
type bucket struct {
	rate  float64 // bytes per second
	burst float64
	now   func() time.Time
	sleep func(time.Duration)

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

// newBucket holds at most a quarter second of the rate (at least one
// chunk), full at the start.
func newBucket(mbps float64, now func() time.Time, sleep func(time.Duration)) *bucket {
	rate := mbps * 1e6 / 8
	burst := max(rate/4, uploadChunk)
	return &bucket{rate: rate, burst: burst, now: now, sleep: sleep, tokens: burst, last: now()}
}

// reserve takes n bytes (n ≤ uploadChunk) and says how long to wait before
// sending them. The bucket may go negative: later reservations wait for the
// earlier ones' bytes too.
func (b *bucket) reserve(n int) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = min(b.burst, b.tokens+el*b.rate)
	}
	b.last = now
	b.tokens -= float64(n)
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}

// limitedStream is a stream whose writes take from the upload bucket.
type limitedStream struct {
	network.Stream
	b *bucket
}

func (s limitedStream) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), uploadChunk)
		if wait := s.b.reserve(n); wait > 0 {
			s.b.sleep(wait)
		}
		k, err := s.Stream.Write(p[:n])
		written += k
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// limitUpload wraps s when the node has an upload limit.
func (n *Node) limitUpload(s network.Stream) network.Stream {
	if n.upload == nil || s == nil {
		return s
	}
	return limitedStream{Stream: s, b: n.upload}
}
