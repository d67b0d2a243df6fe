package averaging

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"lukechampine.com/blake3"
)

// Audit draws (Config.AuditRate < 1): which rounds are audited, decided by
// the group together once every member holds what it was sent. An audit
// costs a member about as much CPU as a sixth of the round (at n = 8,
// 64 MiB: the commitment's hash of its share, ~30 streams, one part's inputs
// each way, a re-computation); auditing a random share of rounds costs that
// share of it, as BTARD-SGD's random checks do.
//
// What makes it safe is that no reducer can know whether a round is audited
// until every result it sends is out. Each member draws a private seed:
//
//  1. At the round's start it sends every member a digest of it (seedHash:
//     group, its index and the seed), which binds it.
//  2. When its own round is over, which is when it has received every result
//     it will take, and it holds the digest of every member whose parts or
//     results it took (or AuditTimeout/8 passed), it reveals the seed to
//     every member.
//  3. Each member draws from the seeds of the members whose digest reached it
//     before it revealed its own (auditDraw): the round is audited with
//     probability AuditRate.
//
// A reducer learns the last honest seed only after the last honest member
// has its results, so it cannot lie only in rounds that will go unaudited; a
// digest that arrives after the receiver revealed is not counted, so nobody
// picks its seed after seeing the others'. A member whose digest counts but
// whose seed is missing at the draw's deadline, or does not match its digest,
// forces the audit: withholding a seed can only make a round audited. A
// wrong seed is refused (bad-seed). Members may then see different draws
// (one that sends its seed to some members only): those that audit find no
// commitment from reducers that did not, and keep their own values for those
// shares, as for any unaudited reducer. Nobody is convicted by a draw.
//
// An unaudited round takes every result as received (audits.go's buffers
// are released at once); an audited one runs the audit as with AuditRate 1.
// A reducer lying in every round is caught in the audited ones, so it is
// banned after about 1/AuditRate times as many rounds as with every round
// audited.

// domainSeed and domainDraw keep a seed's digest and the draw apart from
// every other hash of the audits.
const (
	domainSeed = "swarm/averaging/seed/1"
	domainDraw = "swarm/averaging/draw/1"
)

// seedLen is the size of a member's seed; a seed message carries the
// version, the group and a seed or its digest.
const (
	seedLen   = 32
	seedFrame = 2 + 16 + seedLen
)

// seedHash binds member self's seed for the round of group.
func seedHash(group [16]byte, self int, seed [seedLen]byte) digest {
	h := blake3.New(32, nil)
	var e enc
	e.b = append(e.b, domainSeed...)
	e.b = append(e.b, group[:]...)
	e.u16(uint16(self))
	e.b = append(e.b, seed[:]...)
	_, _ = h.Write(e.b)
	var d digest
	h.Sum(d[:0])
	return d
}

// auditDraw decides from the members' seeds (nil where a member's seed does
// not count) whether the round of group is audited: with probability rate,
// the same answer for everyone holding the same seeds.
func auditDraw(group [16]byte, seeds []*[seedLen]byte, rate float64) bool {
	if rate >= 1 {
		return true
	}
	h := blake3.New(32, nil)
	var e enc
	e.b = append(e.b, domainDraw...)
	e.b = append(e.b, group[:]...)
	for j, s := range seeds {
		if s != nil {
			e.u16(uint16(j))
			e.b = append(e.b, s[:]...)
		}
	}
	_, _ = h.Write(e.b)
	var d digest
	h.Sum(d[:0])
	u := binary.BigEndian.Uint64(d[:8])
	return float64(u) < rate*math.Exp2(64)
}

// seedMsg is a seed or its digest (by the frame type).
type seedMsg struct {
	Group [16]byte
	Value [seedLen]byte
}

func (m *seedMsg) marshal() []byte {
	var e enc
	e.u16(WireVersion)
	e.b = append(e.b, m.Group[:]...)
	e.b = append(e.b, m.Value[:]...)
	return e.b
}

func unmarshalSeed(b []byte) (seedMsg, error) {
	d := dec{b: b}
	var m seedMsg
	if v := d.u16(); d.err == nil && v != WireVersion {
		return m, fmt.Errorf("%w: seed of wire version %d", errMalformed, v)
	}
	d.group(&m.Group)
	if d.need(seedLen) {
		copy(m.Value[:], d.b[:seedLen])
		d.b = d.b[seedLen:]
	}
	return m, d.done()
}

// drawState is one member's side of a round's draw. Guarded by the
// auditRound's mu.
type drawState struct {
	seed     [seedLen]byte
	hashes   []*digest        // per member: its seed's digest, if it came before we revealed
	seeds    []*[seedLen]byte // per member: its seed as revealed (checked once its digest is here)
	bad      []bool           // per member: a revealed seed that does not match its digest
	revealed bool             // our seed is out: digests arriving now do not count
}

func newDrawState(n int) *drawState {
	ds := &drawState{hashes: make([]*digest, n), seeds: make([]*[seedLen]byte, n), bad: make([]bool, n)}
	_, _ = rand.Read(ds.seed[:])
	return ds
}

// pending reports whether member j's seed counts and is not in yet.
func (ds *drawState) pending(j int) bool {
	return ds.hashes[j] != nil && ds.seeds[j] == nil && !ds.bad[j]
}

// draws reports whether the audit of our round draws (AuditRate < 1).
func (a *Averager) draws() bool { return a.cfg.AuditRate > 0 && a.cfg.AuditRate < 1 }

// sendSeedHash sends our seed's digest to every other member, at the
// round's start; it does not wait for them.
func (a *Averager) sendSeedHash(au *auditRound, by time.Time) {
	if a.faults.withholdDigest {
		return
	}
	h := seedHash(au.g.ID, au.self, au.draw.seed)
	m := seedMsg{Group: au.g.ID, Value: h}
	a.sendAll(au, tSeedHash, m.marshal(), by)
}

// sendAll sends one frame to every other member of au's group, each on its
// own stream, without waiting.
func (a *Averager) sendAll(au *auditRound, t msgType, b []byte, by time.Time) {
	for j := range au.g.Members {
		if j == au.self {
			continue
		}
		go a.sendAudit(a.ctx, au.g.Members[j].ID, by, func(s network.Stream) error {
			return writeFrame(s, t, b)
		})
	}
}

// takeSeed takes member j's seed digest or seed.
func (a *Averager) takeSeed(au *auditRound, j int, t msgType, b []byte) error {
	m, err := unmarshalSeed(b)
	if err != nil {
		return err
	}
	au.mu.Lock()
	defer au.mu.Unlock()
	ds := au.draw
	if ds == nil || au.closed {
		return nil // this round draws nothing (or is over): not the sender's fault
	}
	switch t {
	case tSeedHash:
		if ds.hashes[j] != nil {
			return fmt.Errorf("%w: a second seed digest in one round", errFlood)
		}
		if ds.revealed {
			return nil // too late to count: we may have shown our seed
		}
		h := digest(m.Value)
		ds.hashes[j] = &h
	case tSeed:
		if ds.seeds[j] != nil || ds.bad[j] {
			return fmt.Errorf("%w: a second seed in one round", errFlood)
		}
		s := m.Value
		ds.seeds[j] = &s
	}
	// A seed is checked once both are here, in either order.
	if ds.hashes[j] != nil && ds.seeds[j] != nil && seedHash(au.g.ID, j, *ds.seeds[j]) != *ds.hashes[j] {
		ds.seeds[j], ds.bad[j] = nil, true
		au.signal()
		return fmt.Errorf("%w: member %d's seed does not match the digest it sent", errBadSeed, j)
	}
	au.signal()
	return nil
}

// drawRound reveals our seed, waits (until by) for the seeds that count, and
// returns whether the round is audited: by the draw, or because a seed that
// counts is missing or wrong.
//
// Before revealing it waits (until hashesBy) for the digest of every member
// whose contribution we hold (took): each sent its digest before its first
// part, but on a stream of its own that a loaded host may deliver after the
// round; revealed without it, our draw would leave its seed out while its
// own draw counts ours, and the two would differ. Waiting is safe: no seed
// is out before every member revealing has the digests it waited for, and a
// member that withholds its digest only delays us until hashesBy.
func (a *Averager) drawRound(au *auditRound, took []bool, hashesBy, by time.Time) (audited bool, why string) {
	ds := au.draw
	au.waitFor(hashesBy, func() bool {
		for j := range au.g.Members {
			if j != au.self && took[j] && ds.hashes[j] == nil && a.connected(au.g.Members[j].ID) {
				return false
			}
		}
		return true
	})
	au.mu.Lock()
	ds.revealed = true
	au.mu.Unlock()
	seed := ds.seed
	if a.faults.wrongSeed {
		seed[0] ^= 1
	}
	if !a.faults.withholdSeed {
		a.sendAll(au, tSeed, (&seedMsg{Group: au.g.ID, Value: seed}).marshal(), by.Add(a.cfg.AuditTimeout))
	}
	au.waitFor(by, func() bool {
		for j := range au.g.Members {
			if j != au.self && ds.pending(j) && a.connected(au.g.Members[j].ID) {
				return false
			}
		}
		return true
	})
	au.mu.Lock()
	defer au.mu.Unlock()
	seeds := make([]*[seedLen]byte, len(au.g.Members))
	seeds[au.self] = &ds.seed
	for j := range au.g.Members {
		switch {
		case j == au.self || ds.hashes[j] == nil:
		case ds.bad[j]:
			return true, fmt.Sprintf("member %d revealed a seed that does not match its digest", j)
		case ds.seeds[j] == nil:
			return true, fmt.Sprintf("member %d did not reveal its seed", j)
		default:
			seeds[j] = ds.seeds[j]
		}
	}
	if auditDraw(au.g.ID, seeds, a.cfg.AuditRate) {
		return true, "drawn"
	}
	return false, ""
}

// skipAudit ends the audit of a round drawn unaudited: every result
// received replaces our values, nobody is judged.
func (a *Averager) skipAudit(r *round, au *auditRound) {
	au.mu.Lock()
	au.closed = true
	close(au.ready)
	au.mu.Unlock()
	r.takeResults(nil)
}
