package node

// The summary protocol: a training node answers "how is run R going here?"
// for anyone who names the run's ID. The bootstrap's public swarm page asks
// the run's announced peers, since a bootstrap is not a run peer and never
// receives progress records. The answer holds nothing the run's peers don't
// already exchange; a node that does not know the run ID learns nothing.
//
// Wire: the asker writes the run ID (its string form, at most maxRunIDLen
// bytes) and a newline; the node answers one JSON object of at most
// MaxSummaryBytes and closes. An asker gets one answer per summaryGap
// (questions in between are reset unanswered); a malformed question is
// refused and counted.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/swarm-train/swarm/node/api"
)

// SummaryProtocol is the run summary protocol.
const SummaryProtocol protocol.ID = "/swarm/run-summary/1.0.0"

const (
	// MaxSummaryBytes bounds an answer.
	MaxSummaryBytes = 4 << 10
	// summaryGap is the least time between two questions of one peer.
	summaryGap = time.Second
	// maxAskers bounds the peers remembered for summaryGap.
	maxAskers       = 1024
	summaryDeadline = 5 * time.Second
)

// Errors of a summary answer that fails the asker's checks.
var (
	ErrSummaryTooLarge = fmt.Errorf("summary: answer larger than %d bytes", MaxSummaryBytes)
	ErrSummaryRun      = errors.New("summary: answer for another run")
	ErrSummaryRange    = errors.New("summary: figure out of range")
)

type summaryServer struct {
	f func() (api.RunSummary, bool)

	mu   sync.Mutex
	last map[peer.ID]time.Time
}

// SetSummary makes the node answer the summary protocol for its run with
// what f returns (false: nothing to say yet, the stream is closed). A
// bootstrap node, which has no run, never answers.
func (n *Node) SetSummary(f func() (api.RunSummary, bool)) {
	if !n.Trains() {
		return
	}
	s := &summaryServer{f: f, last: make(map[peer.ID]time.Time)}
	n.host.SetStreamHandler(SummaryProtocol, func(st network.Stream) { s.serve(n, st) })
}

// allow says whether p may ask now (one question per summaryGap), keeping
// at most maxAskers peers in memory.
func (s *summaryServer) allow(p peer.ID, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.last[p]; ok && now.Sub(t) < summaryGap {
		return false
	}
	if len(s.last) >= maxAskers {
		for q, t := range s.last {
			if now.Sub(t) >= summaryGap {
				delete(s.last, q)
			}
		}
		if len(s.last) >= maxAskers {
			return false
		}
	}
	s.last[p] = now
	return true
}

func (s *summaryServer) serve(n *Node, st network.Stream) {
	defer st.Close()
	p := st.Conn().RemotePeer()
	proto := string(SummaryProtocol)
	if n.refusals.Banned(p) {
		_ = st.Reset()
		return
	}
	if !s.allow(p, time.Now()) {
		// Too soon: no answer, but no strike either (a page that refreshes
		// fast is not hostile, and the answer is cheap); a flood costs the
		// asker a stream per question within the host's resource limits.
		_ = st.Reset()
		return
	}
	_ = st.SetDeadline(time.Now().Add(summaryDeadline))
	line, err := bufio.NewReaderSize(io.LimitReader(st, maxRunIDLen+1), maxRunIDLen+1).ReadString('\n')
	if err != nil {
		n.refusals.Refuse(p, proto, "request", fmt.Errorf("summary question: want a run ID of at most %d bytes and a newline: %v", maxRunIDLen, err))
		_ = st.Reset()
		return
	}
	if strings.TrimSuffix(line, "\n") != n.runID.String() {
		_ = st.Reset() // another run: nothing to say, and no strike (an old page may still ask)
		return
	}
	sum, ok := s.f()
	if !ok {
		return
	}
	sum.RunID = n.runID.String()
	b, err := json.Marshal(sum)
	if err != nil || len(b) > MaxSummaryBytes {
		n.log.Warn("summary: answer not sent", "err", err, "bytes", len(b))
		_ = st.Reset()
		return
	}
	_, _ = st.Write(b)
}

// FetchSummary asks peer p how run runID goes there and checks the answer:
// at most MaxSummaryBytes, for that run, every figure finite and in range
// (shard below shards, epoch at most maxEpoch). The question may use a
// relayed connection: it is small.
func (n *Node) FetchSummary(ctx context.Context, p peer.ID, runID cid.Cid, shards int, maxEpoch uint64) (api.RunSummary, error) {
	ctx, cancel := context.WithTimeout(network.WithAllowLimitedConn(ctx, "run summary"), summaryDeadline)
	defer cancel()
	st, err := n.host.NewStream(ctx, p, SummaryProtocol)
	if err != nil {
		return api.RunSummary{}, err
	}
	defer st.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(dl)
	}
	if _, err := io.WriteString(st, runID.String()+"\n"); err != nil {
		_ = st.Reset()
		return api.RunSummary{}, err
	}
	_ = st.CloseWrite()
	sum, err := DecodeSummary(st, runID, shards, maxEpoch)
	if err != nil {
		_ = st.Reset()
		if errors.Is(err, ErrSummaryTooLarge) || errors.Is(err, ErrSummaryRun) || errors.Is(err, ErrSummaryRange) {
			n.refusals.Refuse(p, string(SummaryProtocol), "answer", err)
		}
	}
	return sum, err
}

// DecodeSummary reads one answer from r and checks it against the run.
func DecodeSummary(r io.Reader, runID cid.Cid, shards int, maxEpoch uint64) (api.RunSummary, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxSummaryBytes+1))
	if err != nil {
		return api.RunSummary{}, fmt.Errorf("summary: %w", err)
	}
	if len(b) > MaxSummaryBytes {
		return api.RunSummary{}, ErrSummaryTooLarge
	}
	var s api.RunSummary
	if err := json.Unmarshal(b, &s); err != nil {
		return api.RunSummary{}, fmt.Errorf("summary: not a JSON summary: %w", err)
	}
	if s.RunID != runID.String() {
		return api.RunSummary{}, fmt.Errorf("%w: %.80q, asked for %s", ErrSummaryRun, s.RunID, runID)
	}
	for name, v := range map[string]float64{"loss": s.Loss, "samples_per_s": s.SamplesPerS, "busy_seconds": s.BusySeconds} {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 || v > 1e12 {
			return api.RunSummary{}, fmt.Errorf("%w: %s %v", ErrSummaryRange, name, v)
		}
	}
	switch {
	case s.Shard < -1 || s.Shard >= shards:
		return api.RunSummary{}, fmt.Errorf("%w: shard %d of %d", ErrSummaryRange, s.Shard, shards)
	case s.Epoch > maxEpoch:
		return api.RunSummary{}, fmt.Errorf("%w: epoch %d past the run's %d", ErrSummaryRange, s.Epoch, maxEpoch)
	case s.Processed < 0:
		return api.RunSummary{}, fmt.Errorf("%w: processed %d", ErrSummaryRange, s.Processed)
	case s.Credit < 0 || s.Credit > 1<<32:
		return api.RunSummary{}, fmt.Errorf("%w: credit %d", ErrSummaryRange, s.Credit)
	}
	for name, v := range map[string]*string{"state": &s.State, "device": &s.Device, "engine": &s.Engine, "version": &s.Version} {
		if len(*v) > 128 {
			return api.RunSummary{}, fmt.Errorf("%w: %s of %d bytes", ErrSummaryRange, name, len(*v))
		}
	}
	return s, nil
}
