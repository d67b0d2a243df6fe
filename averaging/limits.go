package averaging

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// What a peer declares is a lie until checked against what this averager
// allows: its own vector length and codec for the step, its PartSize and
// MaxFrame, MaxGroupSize, MaxWeight and MaxBandwidth, and its clock. Every
// size is bounded before anything is allocated for it, and frames are read
// into buffers that grow only as bytes arrive. A refusal is counted and
// logged through Config.Refusals under one of the reasons below.

// MaxBandwidth bounds a peer's declared relative bandwidth (ours included).
// Bandwidths are relative (default 1): a peer claiming a million times the
// others' already takes the whole vector to reduce.
const MaxBandwidth = 1 << 20

// DefaultMaxWeight is Config.MaxWeight when unset.
const DefaultMaxWeight = 1 << 30

// Frame limits of the small messages (their largest honest encodings are far
// below: a join request with a 1 KiB key is ~1.1 KiB, a group of MaxGroupSize
// members with 42-byte peer IDs ~13 KiB).
const (
	maxJoinFrame   = 4096     // join request and reply
	maxGroupFrame  = 64 << 10 // begin and start (a group)
	maxHeaderFrame = 4096     // reduce and gossip headers
	maxSmallFrame  = 64       // acks, gossip replies
)

// clockSkew is how far a peer's clock may be from ours: a join request
// expires within [now-clockSkew, now+MatchTimeout+clockSkew] or is refused
// (an expiration of 0 would make its sender everybody's leader).
const clockSkew = 10 * time.Second

// Inbound streams one peer may hold open at once, per protocol. An honest
// peer holds one join stream per step and one reduce stream per round it
// sends in (a few keys may overlap); a stale stream may linger a moment.
const (
	matchStreamsPerPeer  = 4
	reduceStreamsPerPeer = 8
	gossipStreamsPerPeer = 2
	// maxStreamPeers bounds the per-peer stream table: beyond it new streams
	// are turned away (not counted against the peer: the crowd is to blame).
	maxStreamPeers = 4096
	// maxHeld bounds the join streams one step holds waiting for its matcher.
	maxHeld = 4 * MaxGroupSize
)

// Refusal reasons (swarm_security_refusals_total{reason}).
const (
	reasonOversize  = "oversize"      // a frame longer than the protocol allows
	reasonMalformed = "malformed"     // does not decode, or decodes to NaN/Inf
	reasonRange     = "out-of-range"  // decodes, but a value is outside what this averager allows
	reasonStall     = "stall"         // no progress within the timeout
	reasonFlood     = "flood"         // too many streams at once
	reasonNotMember = "not-member"    // reduce stream from a peer not in the group it names
	reasonOutlier   = "outlier"       // a part whose norm is far above the group's median (Config.NormK)
	reasonNotCand   = "not-candidate" // a join from a peer that is not among the step's candidates
	reasonBadSeed   = "bad-seed"      // an audit draw's seed that does not match the digest its member sent
)

// notCandEvery is how often a non-candidate's joins are counted (the join is
// refused every time), and maxNotCand bounds the peers remembered for it.
const (
	notCandEvery = time.Minute
	maxNotCand   = 1024
)

var errOutOfRange = errors.New("averaging: value out of range")

// refuse counts and logs p's refused input. The node disconnects the peer
// once guard names it an offender.
func (a *Averager) refuse(p peer.ID, proto, reason string, err error) {
	a.cfg.Refusals.Refuse(p, proto, reason, err)
}

// refuseNotCandidate counts a join from p, which is not a candidate of the
// step for key gk, at most once per notCandEvery.
func (a *Averager) refuseNotCandidate(p peer.ID, gk groupKey) {
	now := time.Now()
	a.mu.Lock()
	if a.notCand == nil {
		a.notCand = map[peer.ID]time.Time{}
	}
	last, seen := a.notCand[p]
	count := !seen || now.Sub(last) >= notCandEvery
	if count {
		if len(a.notCand) >= maxNotCand {
			for q, t := range a.notCand {
				if now.Sub(t) >= notCandEvery {
					delete(a.notCand, q)
				}
			}
		}
		if len(a.notCand) < maxNotCand {
			a.notCand[p] = now
		}
	}
	a.mu.Unlock()
	if count {
		a.refuse(p, ProtoMatch, reasonNotCand, fmt.Errorf("%w: join for %s from a peer that is not a candidate", errOutOfRange, gk))
	}
}

// refuseErr refuses p's input for the reason err implies; errors that are
// not p's doing (a reset stream, a closed connection) are not counted.
func (a *Averager) refuseErr(p peer.ID, proto string, err error) {
	if r := reasonFor(err); r != "" {
		a.refuse(p, proto, r, err)
	}
}

// reasonFor classifies a read or decode error; "" when the peer is not to blame.
func reasonFor(err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return ""
	case errors.Is(err, errFrameTooBig):
		return reasonOversize
	case errors.Is(err, errOutOfRange):
		return reasonRange
	case errors.Is(err, errMalformed), errors.Is(err, errCodec), errors.Is(err, errNotFinite):
		return reasonMalformed
	case errors.As(err, &ne) && ne.Timeout():
		return reasonStall
	}
	return ""
}

// checkWeight bounds a peer's declared weight (samples behind its vector).
func (a *Averager) checkWeight(w float64) error {
	if !validWeight(w) || w > a.cfg.MaxWeight {
		return fmt.Errorf("%w: weight %v (limit %v)", errOutOfRange, w, a.cfg.MaxWeight)
	}
	return nil
}

func validBandwidth(b float64) bool { return b >= 0 && b <= MaxBandwidth }

// checkJoin bounds a join request's values: its bandwidth, and an
// expiration near our clock.
func (a *Averager) checkJoin(req joinRequest, now time.Time) error {
	lo := now.Add(-clockSkew).UnixNano()
	hi := now.Add(a.cfg.MatchTimeout + clockSkew).UnixNano()
	switch {
	case !validBandwidth(req.Bandwidth):
		return fmt.Errorf("%w: bandwidth %v (limit %v)", errOutOfRange, req.Bandwidth, float64(MaxBandwidth))
	case req.Expiration < lo || req.Expiration > hi:
		return fmt.Errorf("%w: expiration %s, %v from now", errOutOfRange,
			time.Unix(0, req.Expiration).UTC().Format(time.RFC3339Nano), time.Duration(req.Expiration-now.UnixNano()))
	}
	return nil
}

// minPartSize is the smallest part size a leader may impose: a quarter of
// ours, so that a group cuts the vector into at most about 4× as many parts
// (and reducer state) as we would.
func (a *Averager) minPartSize() int { return max(1, a.cfg.PartSize/4) }

// checkGroup bounds the group a leader proposes to this step: the vector
// length and codec agreed on in matchmaking, a part size within
// [minPartSize, PartSize] (which also keeps each part's frame within
// MaxFrame), and every member's bandwidth. Member count and uniqueness are
// checked when decoding.
func (a *Averager) checkGroup(g *groupInfo, vecLen int, codec Codec) error {
	switch {
	case g.VecLen != uint64(vecLen) || g.Codec != codec:
		return fmt.Errorf("%w: group of length %d codec %s, want %d %s", errOutOfRange, g.VecLen, g.Codec, vecLen, codec)
	case int64(g.PartSize) < int64(a.minPartSize()) || int64(g.PartSize) > int64(a.cfg.PartSize):
		return fmt.Errorf("%w: part size %d not in [%d, %d]", errOutOfRange, g.PartSize, a.minPartSize(), a.cfg.PartSize)
	}
	for _, m := range g.Members {
		if !validBandwidth(m.Bandwidth) {
			return fmt.Errorf("%w: member %s bandwidth %v", errOutOfRange, m.ID, m.Bandwidth)
		}
	}
	return nil
}

// partFrame is the exact payload length of a part of n values: index,
// contributor bitset of cb bytes, data.
func partFrame(c Codec, n, cb int) int { return 4 + 2 + cb + c.EncodedLen(n) }

// longestPart is the number of values in the longest of parts.
func longestPart(parts []span) int {
	n := 0
	for _, p := range parts {
		n = max(n, p.End-p.Start)
	}
	return n
}

// streamCaps counts each peer's open inbound streams per protocol. Entries
// go when their count drops to zero, so the table holds only peers with a
// stream open and never more than maxStreamPeers of them.
type streamCaps struct {
	mu   sync.Mutex
	open map[capKey]int
}

type capKey struct {
	p     peer.ID
	proto string
}

var errFlood = errors.New("averaging: too many streams")

// acquire takes one of p's limit streams on proto. It fails with errFlood
// when p has limit open already (p's fault), or with a plain error when the
// table is full.
func (c *streamCaps) acquire(p peer.ID, proto string, limit int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.open == nil {
		c.open = map[capKey]int{}
	}
	k := capKey{p, proto}
	n := c.open[k]
	switch {
	case n >= limit:
		return fmt.Errorf("%w: %d open on %s (limit %d)", errFlood, n, proto, limit)
	case n == 0 && len(c.open) >= maxStreamPeers:
		return fmt.Errorf("averaging: %d peers hold streams; turning %s away", len(c.open), proto)
	}
	c.open[k] = n + 1
	return nil
}

func (c *streamCaps) release(p peer.ID, proto string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := capKey{p, proto}
	if c.open[k] <= 1 {
		delete(c.open, k)
		return
	}
	c.open[k]--
}

func (c *streamCaps) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.open)
}

// streamLimit is the per-peer cap of proto.
func streamLimit(proto string) int {
	switch proto {
	case ProtoReduce:
		return reduceStreamsPerPeer
	case ProtoGossip:
		return gossipStreamsPerPeer
	case ProtoAudit:
		return auditStreamsPerPeer
	}
	return matchStreamsPerPeer
}

// admit decides whether an inbound stream on proto is served: not from a
// peer guard refuses at the moment, and within the per-peer cap.
func (a *Averager) admit(s network.Stream, proto string) bool {
	from := s.Conn().RemotePeer()
	if a.cfg.Refusals.Banned(from) {
		return false
	}
	if err := a.caps.acquire(from, proto, streamLimit(proto)); err != nil {
		if errors.Is(err, errFlood) {
			a.refuse(from, proto, reasonFlood, err)
		} else {
			a.log.Debug("stream turned away", "peer", from, "err", err)
		}
		return false
	}
	return true
}
