package averaging

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// bookWorld is a group computed without a network: every member's values,
// the honest aggregate of every part, and what each reducer signs. Tests
// hand its messages, honest or changed, to member 0's auditBook.
type bookWorld struct {
	group [16]byte
	keys  []crypto.PrivKey
	ids   []peer.ID
	lay   layout
	vecs  [][]float32
	ws    []float64
	out   []float32 // the honest result
	all   bitset    // every member contributed to every part
	opts  reduceOpts
}

func newBookWorld(t testing.TB, n, vecLen, partSize int) *bookWorld {
	t.Helper()
	w := &bookWorld{group: [16]byte{1, 2, 3}, opts: reduceOpts{Agg: AggregateCenteredClip}}
	rng := rand.New(rand.NewPCG(1, 2))
	var ms []member
	for i := range n {
		k, _, err := crypto.GenerateEd25519Key(bytes.NewReader(bytes.Repeat([]byte{byte(i + 1)}, 64)))
		if err != nil {
			t.Fatal(err)
		}
		id, _ := peer.IDFromPrivateKey(k)
		w.keys, w.ids = append(w.keys, k), append(w.ids, id)
		ms = append(ms, member{ID: id, Bandwidth: 1})
		v := make([]float32, vecLen)
		for j := range v {
			v[j] = float32(rng.NormFloat64())
		}
		w.vecs, w.ws = append(w.vecs, v), append(w.ws, float64(1+i))
	}
	w.lay = partition(vecLen, ms, partSize)
	w.all = newBitset(n)
	for i := range n {
		w.all.set(i)
	}
	w.out = make([]float32, vecLen)
	for j := range n {
		for k := range w.lay.Parts[j] {
			sp := w.lay.Parts[j][k]
			newAggregator(w.opts.Agg, 0, 0).combine(w.out[sp.Start:sp.End], w.inputs(j, k), w.ws)
		}
	}
	return w
}

// inputs are the members' values of reducer j's part k (copies).
func (w *bookWorld) inputs(j, k int) [][]float32 {
	sp := w.lay.Parts[j][k]
	var xs [][]float32
	for _, v := range w.vecs {
		xs = append(xs, slices.Clone(v[sp.Start:sp.End]))
	}
	return xs
}

// commit is reducer j's signed commitment to result (the whole vector).
func (w *bookWorld) commit(j int, result []float32) commitment {
	c := commitment{Group: w.group, Reducer: uint16(j)}
	for k, sp := range w.lay.Parts[j] {
		c.Parts = append(c.Parts, partDigest(w.group, j, k, w.all, result[sp.Start:sp.End]))
	}
	c.Sig, _ = w.keys[j].Sign(commitSigned(w.group, c.Reducer, c.root()))
	return c
}

// claim is reducer j's signed claim of part k, for inputs and result.
func (w *bookWorld) claim(j, k int, inputs [][]float32, result []float32) claim {
	sp := w.lay.Parts[j][k]
	c := claim{Group: w.group, Reducer: uint16(j), Part: uint32(k), Contributors: w.all.clone(), Weights: w.ws,
		Output: partDigest(w.group, j, k, w.all, result[sp.Start:sp.End])}
	for _, x := range inputs {
		c.Inputs = append(c.Inputs, inputDigest(x))
	}
	w.sign(j, &c)
	return c
}

func (w *bookWorld) sign(j int, c *claim) { c.Sig, _ = w.keys[j].Sign(c.signed()) }

// book is member 0's audit after a round in which it received received.
func (w *bookWorld) book(received []float32) *auditBook {
	b := newAuditBook(w.group, 0, w.ids, w.lay, CodecNone, w.opts, w.vecs[0], verifySig)
	recv := make([][]bitset, len(w.ids))
	for j := 1; j < len(w.ids); j++ {
		for range w.lay.Parts[j] {
			recv[j] = append(recv[j], w.all.clone())
		}
	}
	b.ready(received, recv)
	return b
}

func scaled(v []float32, f float32) []float32 {
	out := slices.Clone(v)
	for i := range out {
		out[i] *= f
	}
	return out
}

// TestAuditBook: member 0's audit of reducer 1, one table row per way a
// reducer (or a reporting member) can lie: what member 0 concludes about
// reducer 1, and whether it refuses the message's sender.
func TestAuditBook(t *testing.T) {
	const liar, other = 1, 2
	w := newBookWorld(t, 4, 4000, 500) // 2 parts per member
	lie := scaled(w.out, 1.01)         // reducer 1's parts 1% off
	type result struct {
		rule    string // "" none; "unaudited"
		proof   bool
		refused error // what the message's sender is refused for
	}
	cases := []struct {
		name string
		run  func(b *auditBook) error
		want result
	}{
		{"honest", func(b *auditBook) error {
			c := w.claim(liar, 0, w.inputs(liar, 0), w.out)
			_, err := b.checkClaim(liar, &c, w.inputs(liar, 0), fromAudit)
			return err
		}, result{}},
		{"wrong result", func(b *auditBook) error {
			b.commits[liar] = nil
			b.roots[liar] = nil
			cm := w.commit(liar, lie)
			if err := b.addCommit(liar, cm); err != nil {
				return err
			}
			c := w.claim(liar, 1, w.inputs(liar, 1), lie)
			_, err := b.checkClaim(liar, &c, w.inputs(liar, 1), fromAudit)
			return err
		}, result{rule: RuleResult, proof: true}},
		{"claim at odds with its commitment", func(b *auditBook) error {
			c := w.claim(liar, 0, w.inputs(liar, 0), lie)
			_, err := b.checkClaim(other, &c, nil, fromReport)
			return err
		}, result{rule: RuleClaim, proof: true}},
		{"part received is not the committed one", func(b *auditBook) error {
			b.vec = lie
			b.checkOutput(liar, 1)
			return nil
		}, result{rule: RuleOutput}},
		{"our input misstated", func(b *auditBook) error {
			in := w.inputs(liar, 0)
			in[0][3]++
			c := w.claim(liar, 0, in, w.out)
			_, err := b.checkClaim(other, &c, nil, fromReport)
			return err
		}, result{rule: RuleInput}},
		{"inputs are not the claim's", func(b *auditBook) error {
			c := w.claim(liar, 0, w.inputs(liar, 0), w.out)
			in := w.inputs(liar, 0)
			in[2][0]++
			_, err := b.checkClaim(liar, &c, in, fromAudit)
			return err
		}, result{rule: RuleClaim}},
		{"two commitments", func(b *auditBook) error {
			cm := w.commit(liar, lie)
			return b.noteRoot(other, rootSig{Reducer: liar, Root: cm.root(), Sig: cm.Sig})
		}, result{rule: RuleEquivocation, proof: true}},
		{"forged commitment relayed", func(b *auditBook) error {
			cm := w.commit(liar, lie)
			cm.Sig[0] ^= 1
			return b.noteRoot(other, rootSig{Reducer: liar, Root: cm.root(), Sig: cm.Sig})
		}, result{refused: errForged}},
		{"forged claim relayed", func(b *auditBook) error {
			c := w.claim(liar, 0, w.inputs(liar, 0), lie)
			c.Sig, _ = w.keys[other].Sign(c.signed()) // signed by the reporter, not the reducer
			_, err := b.checkClaim(other, &c, nil, fromReport)
			return err
		}, result{refused: errForged}},
		{"false accusation", func(b *auditBook) error {
			c := w.claim(liar, 0, w.inputs(liar, 0), w.out)
			_, err := b.checkClaim(other, &c, w.inputs(liar, 0), fromEvidence)
			return err
		}, result{refused: errFalse}},
		{"evidence that is not the claim's inputs", func(b *auditBook) error {
			c := w.claim(liar, 0, w.inputs(liar, 0), w.out)
			_, err := b.checkClaim(other, &c, scaled2(w.inputs(liar, 0)), fromEvidence)
			return err
		}, result{refused: errFalse}},
		{"no commitment", func(b *auditBook) error {
			b.commits[liar] = nil
			return nil
		}, result{rule: "unaudited"}},
		{"commitment of another length", func(b *auditBook) error {
			b.commits[liar] = nil
			cm := w.commit(liar, w.out)
			cm.Parts = cm.Parts[:1]
			return b.addCommit(liar, cm)
		}, result{rule: "unaudited", refused: errOutOfRange}},
		{"commitment from a member that reduces nothing here", func(b *auditBook) error {
			b.parts[other] = nil
			defer func() { b.parts[other] = w.lay.Parts[other] }()
			return b.addCommit(other, w.commit(liar, w.out))
		}, result{refused: errMalformed}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := w.book(slices.Clone(w.out))
			for j := 1; j < 4; j++ {
				if err := b.addCommit(j, w.commit(j, w.out)); err != nil {
					t.Fatal(err)
				}
			}
			err := c.run(b)
			if c.want.refused == nil && err != nil || c.want.refused != nil && !errors.Is(err, c.want.refused) {
				t.Fatalf("error %v, want %v", err, c.want.refused)
			}
			var got result
			for _, v := range b.verdicts() {
				if v.Reducer != liar {
					t.Fatalf("verdict on member %d: %+v", v.Reducer, v)
				}
				if v.Accused != nil {
					got.rule, got.proof = v.Accused.Rule, v.Accused.Proof
					if v.Accused.Reducer != w.ids[liar] || v.Accused.Expected == v.Accused.Got {
						t.Fatalf("accusation %s", v.Accused)
					}
				} else {
					got.rule = "unaudited"
				}
			}
			if got.rule != c.want.rule || got.proof != c.want.proof {
				t.Fatalf("verdict %q (proof %v), want %q (proof %v)", got.rule, got.proof, c.want.rule, c.want.proof)
			}
		})
	}
}

func scaled2(xs [][]float32) [][]float32 {
	for _, x := range xs {
		for i := range x {
			x[i] *= 2
		}
	}
	return xs
}

// TestAuditPlan: the plan checks one received part of every committed
// reducer and audits distinct parts of the other reducers, never our own.
func TestAuditPlan(t *testing.T) {
	w := newBookWorld(t, 5, 5000, 400) // 3 or 4 parts per member
	b := w.book(slices.Clone(w.out))
	for j := 1; j < 5; j++ {
		if j == 3 {
			continue // no commitment: neither checked nor audited
		}
		if err := b.addCommit(j, w.commit(j, w.out)); err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for _, want := range []int{1, 4, 100} {
		checks, audits := b.plan(rng, want)
		if len(checks) != 3 {
			t.Fatalf("%d checks, want one per committed reducer", len(checks))
		}
		pool := 0
		for _, j := range []int{1, 2, 4} {
			pool += len(w.lay.Parts[j])
		}
		if len(audits) != min(want, pool) {
			t.Fatalf("%d audits, want %d", len(audits), min(want, pool))
		}
		seen := map[partRef]bool{}
		for _, p := range append(checks, audits...) {
			if p.Reducer == 0 || p.Reducer == 3 || p.Part >= len(w.lay.Parts[p.Reducer]) {
				t.Fatalf("planned %+v", p)
			}
		}
		for _, p := range audits {
			if seen[p] {
				t.Fatalf("part %+v audited twice", p)
			}
			seen[p] = true
		}
	}
}

// sampleAudit is one of each audit message, from a bookWorld.
func sampleAudit(t testing.TB) (commitment, claim, auditReport) {
	w := newBookWorld(t, 3, 900, 200)
	cm := w.commit(1, w.out)
	c := w.claim(1, 0, w.inputs(1, 0), w.out)
	rep := auditReport{Group: w.group, From: 2, Roots: []rootSig{{Reducer: 1, Root: cm.root(), Sig: cm.Sig}},
		Claims: []reportedClaim{{Claim: c, Evidence: true}}}
	return cm, c, rep
}

func TestAuditWireRoundTrip(t *testing.T) {
	cm, c, rep := sampleAudit(t)
	cm2, err := unmarshalCommitment(cm.marshal())
	if err != nil || !reflect.DeepEqual(cm2, cm) {
		t.Fatalf("commitment: %v", err)
	}
	c2, err := unmarshalClaim(c.marshal())
	if err != nil || !reflect.DeepEqual(c2, c) {
		t.Fatalf("claim: %v\n%+v\n%+v", err, c2, c)
	}
	rep2, err := unmarshalAuditReport(rep.marshal(), 3, maxAuditParts)
	if err != nil || !reflect.DeepEqual(rep2, rep) {
		t.Fatalf("report: %v", err)
	}
	req := auditReq{Group: cm.Group, Part: 7}
	if req2, err := unmarshalAuditReq(req.marshal()); err != nil || req2 != req {
		t.Fatalf("request: %v", err)
	}
	// Hostile counts: refused before anything is allocated for them.
	bad := cm.marshal()
	binary.BigEndian.PutUint32(bad[20:], math.MaxUint32) // parts
	if _, err := unmarshalCommitment(bad); err == nil {
		t.Fatal("a commitment of 2^32 parts decoded")
	}
	if _, err := unmarshalAuditReport(rep.marshal(), 3, 0); err == nil {
		t.Fatal("a report over the claim limit decoded")
	}
	if _, err := unmarshalAuditReport(rep.marshal(), 0, maxAuditParts); err == nil {
		t.Fatal("a report with more commitments than members decoded")
	}
	c.Weights[0] = math.Inf(1)
	if _, err := unmarshalClaim(c.marshal()); err == nil {
		t.Fatal("a claim with an infinite weight decoded")
	}
}

func FuzzCommitment(f *testing.F) {
	cm, _, _ := sampleAudit(f)
	f.Add(cm.marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := unmarshalCommitment(b)
		if err != nil {
			return
		}
		if 32*len(m.Parts) > len(b) || len(m.Sig) == 0 || len(m.Sig) > maxSigLen {
			t.Fatalf("commitment of %d parts from %d bytes, signature %d", len(m.Parts), len(b), len(m.Sig))
		}
		if m2, err := unmarshalCommitment(m.marshal()); err != nil || !reflect.DeepEqual(m2, m) {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

func FuzzClaim(f *testing.F) {
	_, c, _ := sampleAudit(f)
	f.Add(c.marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := unmarshalClaim(b)
		if err != nil {
			return
		}
		if len(m.Weights) != len(m.Inputs) || len(m.Weights) > len(m.Contributors)*8 {
			t.Fatalf("claim of %d weights, %d inputs, %d contributor bytes", len(m.Weights), len(m.Inputs), len(m.Contributors))
		}
		if m2, err := unmarshalClaim(m.marshal()); err != nil || !reflect.DeepEqual(m2, m) {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

func FuzzAuditReport(f *testing.F) {
	_, _, rep := sampleAudit(f)
	f.Add(rep.marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := unmarshalAuditReport(b, 8, 4)
		if err != nil {
			return
		}
		if len(m.Roots) > 8 || len(m.Claims) > 4 {
			t.Fatalf("report of %d roots, %d claims", len(m.Roots), len(m.Claims))
		}
		if m2, err := unmarshalAuditReport(m.marshal(), 8, 4); err != nil || !reflect.DeepEqual(m2, m) {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

// BenchmarkAuditCosts: what an audited round costs one member of a group of
// 8 averaging 64 MiB (16 parts of 128 Ki values per member), piece by piece,
// without the network: the copy of its vector, the commitment of its share,
// one part's digest (a check, an input or an output), the re-computation of
// one part of 8 inputs (an audit), and a reported claim's checks (its own
// input and the part received).
func BenchmarkAuditCosts(b *testing.B) {
	const n, part, parts = 8, 128 << 10, 16
	rng := rand.New(rand.NewPCG(1, 1))
	vals := func(m int) []float32 {
		v := make([]float32, m)
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		return v
	}
	vec := vals(n * parts * part)
	var g [16]byte
	all := newBitset(n)
	for i := range n {
		all.set(i)
	}
	b.Run("copy 64MiB", func(b *testing.B) {
		b.SetBytes(int64(4 * len(vec)))
		for b.Loop() {
			_ = slices.Clone(vec)
		}
	})
	b.Run("commit 8MiB share", func(b *testing.B) {
		b.SetBytes(4 * parts * part)
		for b.Loop() {
			for k := range parts {
				_ = partDigest(g, 0, k, all, vec[k*part:(k+1)*part])
			}
		}
	})
	b.Run("digest one part", func(b *testing.B) {
		b.SetBytes(4 * part)
		for b.Loop() {
			_ = inputDigest(vec[:part])
		}
	})
	xs := make([][]float32, n)
	ws := make([]float64, n)
	for i := range xs {
		xs[i], ws[i] = vec[i*part:(i+1)*part], 1
	}
	c := &claim{Contributors: all, Weights: ws}
	for _, agg := range []Aggregation{AggregateMean, AggregateCenteredClip} {
		b.Run("recompute one part "+agg.String(), func(b *testing.B) {
			b.SetBytes(4 * n * part)
			for b.Loop() {
				for _, x := range xs {
					_ = inputDigest(x)
				}
				_ = recompute(g, 1, 0, c, xs, reduceOpts{Agg: agg}, CodecNone)
			}
		})
	}
}
