package averaging

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Reducer audits (Config.AuditParts > 0), after BTARD-SGD ("Secure
// Distributed Training at Scale", Gorbunov et al., ICML 2022). In the
// butterfly all-reduce each member reduces one share and returns it to all;
// robust aggregation bounds what a lying *sender* can do, but a lying
// *reducer* could return anything for its share. Audits make a reducer no
// stronger than a sender: what it returns must be the run's aggregation of
// what it received, or some member can show it is not.
//
// During the round the results a member receives wait in a buffer beside
// its vector, which keeps its own values (its inputs) until the audit has
// decided which results to take, and every reducer keeps the values it
// combined; aggregation is deterministic
// (same inputs, order and weights give the same bits on every platform,
// aggregate.go). After the round:
//
//  1. Commit. Each reducer signs, with its libp2p identity key, the digests of
//     its parts as it returned them (partDigest: group, reducer, part,
//     contributors, values) and sends that commitment to every member. It
//     costs one BLAKE3 pass over its own share.
//  2. Audit. Once a member holds the commitments of the reducers it received
//     parts from, it picks with its own private randomness, which no other
//     peer sees before the commitments are out, AuditParts parts among the
//     other reducers' parts, and one part of each reducer to check:
//     - a check hashes the part as received and compares it with the
//     commitment (a reducer lying to some receivers only);
//     - an audit asks the reducer for a signed claim of the part (every
//     contributor's weight and input digest, and the part's digest) and
//     the inputs themselves, checks the claim against the commitment and
//     the inputs against the claim, checks its own input's digest against
//     its copy, and re-computes the aggregate.
//  3. Report. Each member sends every other member the commitments it
//     received and the claims it obtained; with a claim found wrong, the
//     inputs follow as evidence. Each member re-checks every claim it is
//     given (its own input's digest, the commitment it holds, and the
//     evidence by re-computing), and compares the commitments: a reducer
//     that signed two in one group is caught.
//
// What a member does with what it finds, per reducer:
//
//   - Proof (the reducer's own signatures show the lie, so any member can
//     check it: a part that is not the aggregate of the inputs it signed for,
//     two commitments, a claim at odds with its commitment) and first-hand
//     findings (a part received that is not the one committed to, a claim
//     misstating our own input, inputs that do not match the claim they came
//     with): the member convicts the reducer, keeps its own values for the
//     reducer's whole share (the round falls back there, as for a reducer
//     that failed), bans it (guard.BanFor, logged once with the evidence)
//     and calls Config.OnAccusation. A first-hand finding stays with the
//     member that made it: no peer can have an honest peer banned by others
//     with its word alone, only with the honest peer's own signatures.
//   - A reducer that sends no commitment or does not answer an audit is
//     unaudited: the member keeps its own values for that share (refusing
//     malformed answers as usual), without a ban.
//   - A member whose evidence does not hold (a claim that re-computes
//     correctly, inputs that are not the claim's, a forged signature) is
//     refused for it (false-accusation, forged).
//
// A liar does not know which parts will be audited until its commitment is
// out; lying on m of the group's P parts, it is caught in a round with
// probability about 1 − (1 − A/P)^m for A honest audits. Costs, per member
// and round: a second vector-sized buffer (kept between rounds, as the
// values a reducer keeps are), a BLAKE3 pass over its share, a part
// hashed per reducer (its check) and per claim naming it (its own input),
// and per audit the contributors' values of one part over the network and
// hashed on both sides: at n = 8, 64 MiB and AuditParts 1, 4 MiB in and
// about as much out, against the 112 MiB a member sends in the round.

// Rules a reducer is convicted under (Accusation.Rule, and the reason of
// its ban in swarm_security_bans_total).
const (
	RuleResult       = "reduce-result"       // a part that is not the aggregate of the inputs it signed for (proof)
	RuleEquivocation = "reduce-equivocation" // two different signed commitments in one group (proof)
	RuleClaim        = "reduce-claim"        // a claim at odds with its commitment (proof), or inputs not the claim's (seen by the auditor)
	RuleInput        = "reduce-input"        // a claim misstating this member's own input (seen by this member)
	RuleOutput       = "reduce-output"       // a part received that is not the one committed to (seen by this member)
)

// Refusal reasons of a member's audit messages.
const (
	reasonForged = "forged"           // a signature that does not verify
	reasonFalse  = "false-accusation" // evidence that does not show what it claims
)

var (
	errForged  = errors.New("averaging: signature does not verify")
	errFalse   = errors.New("averaging: false accusation")
	errBadSeed = errors.New("averaging: audit seed does not match its digest")
)

// maxAuditParts bounds Config.AuditParts, and so the claims in a report.
const maxAuditParts = 16

// Accusation is a reducer shown to have lied in a round, with the evidence.
type Accusation struct {
	Group   string  // hex group ID
	Reducer peer.ID // the member that reduced the part
	Part    int     // the part, among the reducer's parts; -1: its commitment as a whole
	Rule    string  // RuleResult, RuleEquivocation, RuleClaim, RuleInput or RuleOutput
	// Expected is the digest of what the part (or input, or commitment root)
	// should have been: re-computed, received, our own, or first signed.
	// Got is the digest the reducer signed or committed to.
	Expected, Got string
	By            peer.ID // the member whose audit found it (this peer, or a reporter)
	// Proof: the reducer's own signatures show it, and every member that
	// checks the evidence convicts it. Otherwise only this peer saw it.
	Proof bool
}

func (ac Accusation) String() string {
	kind := "seen by " + ac.By.String()
	if ac.Proof {
		kind = "proof from " + ac.By.String()
	}
	return fmt.Sprintf("%s: reducer %s, group %s, part %d: expected %s, reducer signed %s (%s)",
		ac.Rule, ac.Reducer, ac.Group, ac.Part, ac.Expected, ac.Got, kind)
}

// partRef names one part of one reducer.
type partRef struct{ Reducer, Part int }

// auditBook is one member's audit of one round: what it holds (its copy,
// what it received, the commitments and claims it was given) and what that
// shows. It is pure: the transport (audit_transport.go) feeds it messages
// and carries out what it decides. Not safe for concurrent use.
type auditBook struct {
	group  [16]byte
	self   int
	ids    []peer.ID
	parts  [][]span // per member, its parts
	codec  Codec
	agg    reduceOpts
	orig   []float32 // our values before the round
	verify func(p peer.ID, data, sig []byte) bool

	// Set by ready, once our round is over.
	vec  []float32  // our values after the round
	recv [][]bitset // per reducer, per part: its contributors as received (nil: not received)

	commits  []*commitment
	roots    []*rootSig // per reducer: the first commitment root it was seen to sign
	claims   map[digest]bool
	accused  []*Accusation // per reducer: why it is convicted
	unsure   []string      // per reducer: why its share is not trusted, short of a conviction
	obtained []obtained    // our audits' claims, for our report
	Checks   int           // parts compared with their commitment
	Audits   int           // parts re-computed
	scratch  []float32
}

// obtained is a claim from one of our audits and its inputs: the evidence
// our report carries when the part proved wrong.
type obtained struct {
	claim  claim
	inputs [][]float32
	wrong  bool
}

func newAuditBook(group [16]byte, self int, ids []peer.ID, lay layout, codec Codec, agg reduceOpts, orig []float32,
	verify func(p peer.ID, data, sig []byte) bool) *auditBook {
	n := len(ids)
	return &auditBook{group: group, self: self, ids: ids, parts: lay.Parts, codec: codec,
		agg: reduceOpts{Agg: agg.Agg, Tau: agg.Tau, Iters: agg.Iters, Pool: agg.Pool}, orig: orig, verify: verify,
		commits: make([]*commitment, n), roots: make([]*rootSig, n), claims: map[digest]bool{},
		accused: make([]*Accusation, n), unsure: make([]string, n)}
}

// ready records the round's outcome: our vector and the parts received.
func (b *auditBook) ready(vec []float32, recv [][]bitset) { b.vec, b.recv = vec, recv }

func (b *auditBook) hexGroup() string { return hex.EncodeToString(b.group[:]) }

// received reports whether we hold reducer j's part k as it returned it.
func (b *auditBook) received(j, k int) bool {
	return j < len(b.recv) && k < len(b.recv[j]) && b.recv[j][k] != nil
}

// receivedAny reports whether we took any part from reducer j.
func (b *auditBook) receivedAny(j int) bool {
	for k := range b.parts[j] {
		if b.received(j, k) {
			return true
		}
	}
	return false
}

// convict records that reducer j lied; a proof replaces a first-hand finding.
func (b *auditBook) convict(ac Accusation) {
	j := slices.Index(b.ids, ac.Reducer)
	if old := b.accused[j]; old == nil || (!old.Proof && ac.Proof) {
		ac.Group = b.hexGroup()
		b.accused[j] = &ac
	}
}

// distrust records why reducer j's share is not trusted, short of a lie.
func (b *auditBook) distrust(j int, why string) {
	if b.unsure[j] == "" {
		b.unsure[j] = why
	}
}

// addCommit takes reducer from's commitment; an error is the sender's fault.
func (b *auditBook) addCommit(from int, c commitment) error {
	switch {
	case c.Group != b.group || int(c.Reducer) != from:
		return fmt.Errorf("%w: commitment of reducer %d for another group or member", errMalformed, c.Reducer)
	case from == b.self || len(b.parts[from]) == 0:
		return fmt.Errorf("%w: commitment from member %d, which reduces nothing here", errOutOfRange, from)
	case len(c.Parts) != len(b.parts[from]):
		return fmt.Errorf("%w: commitment of %d parts, the reducer has %d", errOutOfRange, len(c.Parts), len(b.parts[from]))
	case b.commits[from] != nil:
		return fmt.Errorf("%w: a second commitment", errMalformed)
	}
	rs := rootSig{Reducer: c.Reducer, Root: c.root(), Sig: c.Sig}
	if err := b.noteRoot(from, rs); err != nil {
		return err
	}
	b.commits[from] = &c
	return nil
}

// noteRoot takes a commitment root signed by reducer j, relayed by member
// by (or sent by j itself): a second root that verifies convicts j.
func (b *auditBook) noteRoot(by int, rs rootSig) error {
	j := int(rs.Reducer)
	if j == b.self {
		return nil // ours: we know what we signed
	}
	if j >= len(b.ids) || len(b.parts[j]) == 0 {
		return fmt.Errorf("%w: commitment root of member %d, which reduces nothing here", errOutOfRange, j)
	}
	known := b.roots[j]
	if known != nil && known.Root == rs.Root {
		return nil // the same statement: checked when first seen
	}
	if !b.verify(b.ids[j], commitSigned(b.group, rs.Reducer, rs.Root), rs.Sig) {
		return fmt.Errorf("%w: commitment root of reducer %d", errForged, j)
	}
	if known == nil {
		b.roots[j] = &rs
		return nil
	}
	b.convict(Accusation{Reducer: b.ids[j], Part: -1, Rule: RuleEquivocation, Proof: true, By: b.ids[by],
		Expected: hex.EncodeToString(known.Root[:]), Got: hex.EncodeToString(rs.Root[:])})
	return nil
}

// plan picks, with rng (private to this member), one received part of each
// committed reducer to check and up to auditParts parts of the committed
// reducers to re-compute.
func (b *auditBook) plan(rng *rand.Rand, auditParts int) (checks, audits []partRef) {
	var pool []partRef
	for j, c := range b.commits {
		if c == nil {
			continue
		}
		var got []int
		for k := range b.parts[j] {
			pool = append(pool, partRef{j, k})
			if b.received(j, k) {
				got = append(got, k)
			}
		}
		if len(got) > 0 {
			checks = append(checks, partRef{j, got[rng.IntN(len(got))]})
		}
	}
	for i := 0; i < len(pool) && i < auditParts; i++ {
		k := i + rng.IntN(len(pool)-i)
		pool[i], pool[k] = pool[k], pool[i]
		audits = append(audits, pool[i])
	}
	return checks, audits
}

// receivedDigest is the digest of reducer j's part k as we received it.
func (b *auditBook) receivedDigest(j, k int) digest {
	sp := b.parts[j][k]
	return partDigest(b.group, j, k, b.recv[j][k], b.vec[sp.Start:sp.End])
}

// checkOutput compares reducer j's part k as we received it with its commitment.
func (b *auditBook) checkOutput(j, k int) {
	c := b.commits[j]
	if c == nil || !b.received(j, k) {
		return
	}
	b.Checks++
	if got := b.receivedDigest(j, k); got != c.Parts[k] {
		b.convict(Accusation{Reducer: b.ids[j], Part: k, Rule: RuleOutput, By: b.ids[b.self],
			Expected: hex.EncodeToString(got[:]), Got: hex.EncodeToString(c.Parts[k][:])})
	}
}

// ownInput is our values of reducer j's part k as j combined them: our copy
// through the round's codec.
func (b *auditBook) ownInput(j, k int) []float32 {
	sp := b.parts[j][k]
	src := b.orig[sp.Start:sp.End]
	if b.codec == CodecNone {
		return src
	}
	b.scratch = slices.Grow(b.scratch[:0], len(src))[:len(src)]
	if err := b.codec.Decode(b.scratch, b.codec.Encode(nil, src)); err != nil {
		return src // cannot happen for finite values
	}
	return b.scratch
}

// claimSource is how a claim reached us.
type claimSource uint8

const (
	fromAudit    claimSource = iota // the reducer's answer to our audit, with its inputs
	fromReport                      // in a member's report, without inputs
	fromEvidence                    // in a member's report, with the inputs it found wrong
)

// checkClaim checks a claim given to us by member by, from src. It returns
// whether re-computing showed the part wrong, and an error when by
// misbehaved in giving it (a forged claim, evidence that does not hold).
func (b *auditBook) checkClaim(by int, c *claim, inputs [][]float32, src claimSource) (wrong bool, err error) {
	j, k, n := int(c.Reducer), int(c.Part), len(b.ids)
	evidence := src == fromEvidence
	switch {
	case (src == fromReport) != (inputs == nil):
		return false, fmt.Errorf("%w: a reported claim with inputs, or an audited one without", errMalformed)
	case src == fromAudit && by != j:
		return false, fmt.Errorf("%w: claim of reducer %d from member %d", errMalformed, j, by)
	case c.Group != b.group:
		return false, fmt.Errorf("%w: claim for another group", errMalformed)
	case j >= n || len(b.parts[j]) == 0:
		return false, fmt.Errorf("%w: claim of member %d, which reduces nothing here", errOutOfRange, j)
	case k >= len(b.parts[j]):
		return false, fmt.Errorf("%w: claim of part %d, reducer %d has %d", errOutOfRange, k, j, len(b.parts[j]))
	case len(c.Contributors) != (n+7)/8 || !c.Contributors.within(n):
		return false, fmt.Errorf("%w: claim contributors are not a set of the group's %d members", errMalformed, n)
	case inputs != nil && len(inputs) != len(c.Weights):
		return false, fmt.Errorf("%w: %d inputs for %d contributors", errMalformed, len(inputs), len(c.Weights))
	}
	if j == b.self {
		return false, nil // a claim of ours: we know what we did
	}
	signed := c.signed()
	key := sha256.Sum256(signed)
	if b.claims[key] && src == fromReport {
		return false, nil // checked already
	}
	if !b.verify(b.ids[j], signed, c.Sig) {
		return false, fmt.Errorf("%w: claim of reducer %d part %d", errForged, j, k)
	}
	first := !b.claims[key]
	b.claims[key] = true
	finder := b.ids[by] // whose evidence: the reporter's, or ours for our own audit
	if src == fromAudit {
		finder = b.ids[b.self]
	}
	ref := Accusation{Reducer: b.ids[j], Part: k, By: finder, Got: hex.EncodeToString(c.Output[:])}
	if first {
		if cm := b.commits[j]; cm != nil && cm.Parts[k] != c.Output {
			ac := ref
			ac.Rule, ac.Proof, ac.Expected = RuleClaim, true, hex.EncodeToString(cm.Parts[k][:])
			b.convict(ac)
		}
		// The part as we received it: for our own audits (a reported claim's
		// part is as likely as any to have been checked already, and
		// hashing them all costs a part per claim).
		if src == fromAudit && b.received(j, k) {
			if got := b.receivedDigest(j, k); got != c.Output {
				ac := ref
				ac.Rule, ac.By, ac.Expected = RuleOutput, b.ids[b.self], hex.EncodeToString(got[:])
				b.convict(ac)
			}
		}
		if c.Contributors.has(b.self) {
			mine := inputDigest(b.ownInput(j, k))
			if said := c.Inputs[c.Contributors.rank(b.self)]; said != mine {
				b.convict(Accusation{Reducer: b.ids[j], Part: k, Rule: RuleInput, By: b.ids[b.self],
					Expected: hex.EncodeToString(mine[:]), Got: hex.EncodeToString(said[:])})
			}
		}
	}
	if inputs == nil {
		return false, nil
	}
	sp := b.parts[j][k]
	for i, x := range inputs {
		if len(x) != sp.End-sp.Start || inputDigest(x) != c.Inputs[i] {
			if src == fromAudit {
				ac := ref
				ac.Rule, ac.Expected = RuleClaim, "inputs sent with the claim"
				b.convict(ac)
				return false, nil
			}
			return false, fmt.Errorf("%w: evidence input %d is not the one reducer %d signed for", errFalse, i, j)
		}
	}
	b.Audits++
	out := recompute(b.group, j, k, c, inputs, b.agg, b.codec)
	if out == c.Output {
		if evidence {
			return false, fmt.Errorf("%w: reducer %d part %d re-computes to what it signed", errFalse, j, k)
		}
		return false, nil
	}
	ac := ref
	ac.Rule, ac.Proof, ac.Expected = RuleResult, true, hex.EncodeToString(out[:])
	b.convict(ac)
	return true, nil
}

// recompute is the digest of reducer j's part k re-computed from the
// claim's contributors, weights and inputs: what an honest reducer returned.
//
// Its scratch comes from agg.Pool (a fresh part a round costs its page
// faults) and goes back there.
func recompute(group [16]byte, j, k int, c *claim, inputs [][]float32, agg reduceOpts, codec Codec) digest {
	out := agg.Pool.get(len(inputs[0]))
	defer agg.Pool.put(out)
	newAggregator(agg.Agg, agg.Tau, agg.Iters).combine(out, inputs, c.Weights)
	if codec != CodecNone {
		wire := agg.Pool.get(len(out))
		defer agg.Pool.put(wire)
		if err := codec.Decode(wire, codec.Encode(nil, out)); err == nil {
			return partDigest(group, j, k, c.Contributors, wire)
		}
	}
	return partDigest(group, j, k, c.Contributors, out)
}

// report is what we tell the other members: the commitment roots we hold
// and the claims we obtained.
func (b *auditBook) report() (auditReport, [][][]float32) {
	rep := auditReport{Group: b.group, From: uint16(b.self)}
	for j, c := range b.commits {
		if c != nil {
			rep.Roots = append(rep.Roots, rootSig{Reducer: uint16(j), Root: c.root(), Sig: c.Sig})
		}
	}
	var ev [][][]float32
	for _, o := range b.obtained {
		rep.Claims = append(rep.Claims, reportedClaim{Claim: o.claim, Evidence: o.wrong})
		if o.wrong {
			ev = append(ev, o.inputs)
		}
	}
	return rep, ev
}

// verdict is what the round does with one reducer's share.
type verdict struct {
	Reducer   int
	Accused   *Accusation // convicted: a lie shown
	Unaudited string      // not convicted but not trusted either
}

// verdicts lists the reducers whose parts we received and must not keep:
// the convicted and the unaudited.
func (b *auditBook) verdicts() []verdict {
	var out []verdict
	for j := range b.ids {
		if j == b.self || len(b.parts[j]) == 0 || !b.receivedAny(j) {
			continue
		}
		switch {
		case b.accused[j] != nil:
			out = append(out, verdict{Reducer: j, Accused: b.accused[j]})
		case b.unsure[j] != "":
			out = append(out, verdict{Reducer: j, Unaudited: b.unsure[j]})
		case b.commits[j] == nil:
			out = append(out, verdict{Reducer: j, Unaudited: "no commitment"})
		}
	}
	return out
}
