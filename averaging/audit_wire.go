package averaging

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"

	"lukechampine.com/blake3"

	"github.com/swarm-train/swarm/internal/fvec"
)

// Wire messages of reducer audits (audit.go), on ProtoAudit. Every count a
// peer sends is checked against the bytes that are actually there before
// anything is allocated for it, and against the group it names.

// ProtoAudit carries commitments, audit requests and claims, and reports.
// 2.0.0: the digests of values are BLAKE3 (SHA-256 in 1.0.0), so a member
// of the other version finds no audit protocol here and leaves our share
// unaudited (its own values stay), where mixed digests would convict.
//
// 3.0.0: audit draws (seed digests and seeds, audit_draw.go).
const ProtoAudit = "/swarm/averaging/audit/3.0.0"

// Audit message types (the frame type byte).
const (
	tCommit     msgType = iota + 20 // a reducer's signed digests of its parts
	tAuditReq                       // an auditor asks a reducer for one part's claim and inputs
	tClaim                          // the reducer's signed claim for that part
	tAuditInput                     // one contributor's values of the part (raw float32), after a claim
	tReport                         // a member's report: the commitments and claims it holds
	tSeedHash                       // a member's digest of its seed for the round's draw (audit_draw.go)
	tSeed                           // the seed itself, once the member's round is over
)

// Signature domains: a reducer's signature over one kind of statement is
// never valid for another.
const (
	domainPart   = "swarm/averaging/part/2"
	domainInput  = "swarm/averaging/input/2"
	domainCommit = "swarm/averaging/commit/1"
	domainClaim  = "swarm/averaging/claim/1"
)

// maxSigLen bounds a signature (Ed25519 64 bytes, secp256k1 and ECDSA ~72,
// RSA up to 1024 for the largest keys libp2p accepts).
const maxSigLen = 1024

// digest is a 256-bit BLAKE3 of values (partDigest, inputDigest) or a
// SHA-256 of digests and small statements (commitment roots, claims).
// Values are most of what an audit hashes (a reducer's share, the audited
// parts' inputs on both sides, the checks: about 23 MiB a member per round
// at n = 8, 64 MiB); BLAKE3's vectorised tree mode hashes them about 4×
// faster than SHA-256 with the SHA extensions here.
type digest = [32]byte

// hashValues writes v to h as little-endian float32.
func hashValues(h io.Writer, v []float32) {
	_ = fvec.WriteLE(h, v)
}

// partDigest is what a reducer commits to for its part k: the group, the
// reducer, the part, who contributed, and the values every contributor
// received (after the round's codec).
func partDigest(group [16]byte, reducer, k int, contrib bitset, vals []float32) digest {
	h := blake3.New(32, nil)
	var e enc
	e.b = append(e.b, domainPart...)
	e.b = append(e.b, group[:]...)
	e.u16(uint16(reducer))
	e.u32(uint32(k))
	e.bytes(contrib)
	_, _ = h.Write(e.b)
	hashValues(h, vals)
	var d digest
	h.Sum(d[:0])
	return d
}

// inputDigest is the digest of one contributor's values of a part, as the
// reducer combined them.
func inputDigest(vals []float32) digest {
	h := blake3.New(32, nil)
	_, _ = h.Write([]byte(domainInput))
	hashValues(h, vals)
	var d digest
	h.Sum(d[:0])
	return d
}

// commitment is a reducer's signed statement of what it returned for each
// of its parts, sent to every member once its share is final.
type commitment struct {
	Group   [16]byte
	Reducer uint16
	Parts   []digest // partDigest of each part, in order
	Sig     []byte   // over commitSigned(Group, Reducer, root())
}

// root is the digest of the part digests.
func (c *commitment) root() digest {
	h := sha256.New()
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(c.Parts)))
	_, _ = h.Write(n[:])
	for _, p := range c.Parts {
		_, _ = h.Write(p[:])
	}
	var d digest
	h.Sum(d[:0])
	return d
}

// commitSigned is the statement a commitment's signature covers.
func commitSigned(group [16]byte, reducer uint16, root digest) []byte {
	var e enc
	e.b = append(e.b, domainCommit...)
	e.b = append(e.b, group[:]...)
	e.u16(reducer)
	e.b = append(e.b, root[:]...)
	return e.b
}

func (c *commitment) marshal() []byte {
	var e enc
	e.u16(WireVersion)
	e.b = append(e.b, c.Group[:]...)
	e.u16(c.Reducer)
	e.u32(uint32(len(c.Parts)))
	for _, p := range c.Parts {
		e.b = append(e.b, p[:]...)
	}
	e.bytes(c.Sig)
	return e.b
}

func unmarshalCommitment(b []byte) (commitment, error) {
	d := dec{b: b}
	var c commitment
	if v := d.u16(); d.err == nil && v != WireVersion {
		return c, fmt.Errorf("%w: commitment of wire version %d", errMalformed, v)
	}
	d.group(&c.Group)
	c.Reducer = d.u16()
	n := d.u32()
	if d.err == nil && uint64(n)*32 > uint64(len(d.b)) { // the digests are there before they are allocated
		d.err = fmt.Errorf("%w: commitment of %d parts in %d bytes", errMalformed, n, len(d.b))
	}
	if d.err == nil {
		c.Parts = make([]digest, n)
		for i := range c.Parts {
			copy(c.Parts[i][:], d.b[32*i:])
		}
		d.b = d.b[32*int(n):]
	}
	c.Sig = d.sig()
	return c, d.done()
}

// claim is a reducer's signed account of one part, given to an auditor with
// the inputs: who contributed with which weight and values (by digest), and
// the part's digest, which must be the one it committed to. With the inputs,
// anyone can re-compute the part and check the reducer's word.
type claim struct {
	Group        [16]byte
	Reducer      uint16
	Part         uint32
	Contributors bitset
	Weights      []float64 // per contributor, in group order
	Inputs       []digest  // inputDigest per contributor, in group order
	Output       digest    // partDigest of the part
	Sig          []byte    // over domainClaim + body()
}

// body is the claim's encoding without its signature.
func (c *claim) body() []byte {
	var e enc
	e.u16(WireVersion)
	e.b = append(e.b, c.Group[:]...)
	e.u16(c.Reducer)
	e.u32(c.Part)
	e.bytes(c.Contributors)
	e.u16(uint16(len(c.Weights)))
	for i, w := range c.Weights {
		e.f64(w)
		e.b = append(e.b, c.Inputs[i][:]...)
	}
	e.b = append(e.b, c.Output[:]...)
	return e.b
}

// signed is the statement the claim's signature covers.
func (c *claim) signed() []byte { return append([]byte(domainClaim), c.body()...) }

func (c *claim) marshal() []byte {
	e := enc{b: c.body()}
	e.bytes(c.Sig)
	return e.b
}

func unmarshalClaim(b []byte) (claim, error) {
	d := dec{b: b}
	var c claim
	if v := d.u16(); d.err == nil && v != WireVersion {
		return c, fmt.Errorf("%w: claim of wire version %d", errMalformed, v)
	}
	d.group(&c.Group)
	c.Reducer = d.u16()
	c.Part = d.u32()
	c.Contributors = bitset(d.bytes())
	n := int(d.u16())
	if d.need(40 * n) {
		c.Weights = make([]float64, n)
		c.Inputs = make([]digest, n)
		for i := range n {
			c.Weights[i] = d.f64()
			copy(c.Inputs[i][:], d.b)
			d.b = d.b[32:]
		}
	}
	if d.need(32) {
		copy(c.Output[:], d.b)
		d.b = d.b[32:]
	}
	c.Sig = d.sig()
	if err := d.done(); err != nil {
		return c, err
	}
	count := 0
	for i := range 8 * len(c.Contributors) {
		if c.Contributors.has(i) {
			count++
		}
	}
	if count != n {
		return c, fmt.Errorf("%w: claim names %d contributors and %d weights", errMalformed, count, n)
	}
	for _, w := range c.Weights {
		if !validWeight(w) {
			return c, fmt.Errorf("%w: claim weight %v", errMalformed, w)
		}
	}
	return c, nil
}

// auditReq asks a reducer for its claim and inputs of one part.
type auditReq struct {
	Group [16]byte
	Part  uint32
}

func (m *auditReq) marshal() []byte {
	var e enc
	e.u16(WireVersion)
	e.b = append(e.b, m.Group[:]...)
	e.u32(m.Part)
	return e.b
}

func unmarshalAuditReq(b []byte) (auditReq, error) {
	d := dec{b: b}
	var m auditReq
	if v := d.u16(); d.err == nil && v != WireVersion {
		return m, fmt.Errorf("%w: audit request of wire version %d", errMalformed, v)
	}
	d.group(&m.Group)
	m.Part = d.u32()
	return m, d.done()
}

// rootSig is a commitment as a report relays it: enough to show that a
// reducer signed two different commitments in one group.
type rootSig struct {
	Reducer uint16
	Root    digest
	Sig     []byte
}

// reportedClaim is a claim a member obtained in an audit. With Evidence the
// contributors' values follow the report, one tAuditInput frame each, in
// group order: the reporter found the part wrong, and every member re-checks.
type reportedClaim struct {
	Claim    claim
	Evidence bool
}

// auditReport is what a member tells every other member after its audits.
type auditReport struct {
	Group  [16]byte
	From   uint16
	Roots  []rootSig
	Claims []reportedClaim
}

func (m *auditReport) marshal() []byte {
	var e enc
	e.u16(WireVersion)
	e.b = append(e.b, m.Group[:]...)
	e.u16(m.From)
	e.u16(uint16(len(m.Roots)))
	for _, r := range m.Roots {
		e.u16(r.Reducer)
		e.b = append(e.b, r.Root[:]...)
		e.bytes(r.Sig)
	}
	e.u16(uint16(len(m.Claims)))
	for _, c := range m.Claims {
		var fl uint8
		if c.Evidence {
			fl = 1
		}
		e.u8(fl)
		e.bytes(c.Claim.marshal())
	}
	return e.b
}

// unmarshalAuditReport decodes a report of a group of n members with at
// most maxClaims claims.
func unmarshalAuditReport(b []byte, n, maxClaims int) (auditReport, error) {
	d := dec{b: b}
	var m auditReport
	if v := d.u16(); d.err == nil && v != WireVersion {
		return m, fmt.Errorf("%w: report of wire version %d", errMalformed, v)
	}
	d.group(&m.Group)
	m.From = d.u16()
	nr := int(d.u16())
	if d.err == nil && nr > n {
		return m, fmt.Errorf("%w: report with %d commitments in a group of %d", errMalformed, nr, n)
	}
	for range nr {
		var r rootSig
		r.Reducer = d.u16()
		if d.need(32) {
			copy(r.Root[:], d.b)
			d.b = d.b[32:]
		}
		r.Sig = d.sig()
		if d.err != nil {
			return m, d.err
		}
		m.Roots = append(m.Roots, r)
	}
	nc := int(d.u16())
	if d.err == nil && nc > maxClaims {
		return m, fmt.Errorf("%w: report with %d claims (limit %d)", errMalformed, nc, maxClaims)
	}
	for range nc {
		fl := d.u8()
		cb := d.bytes()
		if d.err != nil {
			return m, d.err
		}
		if fl&^1 != 0 {
			return m, fmt.Errorf("%w: claim flags %#x", errMalformed, fl)
		}
		c, err := unmarshalClaim(cb)
		if err != nil {
			return m, err
		}
		m.Claims = append(m.Claims, reportedClaim{Claim: c, Evidence: fl == 1})
	}
	return m, d.done()
}

// group reads a group ID.
func (d *dec) group(g *[16]byte) {
	if d.need(16) {
		copy(g[:], d.b[:16])
		d.b = d.b[16:]
	}
}

// sig reads a signature of at most maxSigLen bytes.
func (d *dec) sig() []byte {
	b := d.bytes()
	if d.err == nil && (len(b) == 0 || len(b) > maxSigLen) {
		d.err = fmt.Errorf("%w: signature of %d bytes", errMalformed, len(b))
	}
	return b
}
