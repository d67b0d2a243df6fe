// Package credit is the core of credited work without a blockchain: the
// stage that processes a micro-batch acknowledges it with a Receipt signed
// by its peer key (run ID, epoch, the volunteer credited, samples, hash of
// what it received); the volunteer keeps the receipts it earned in a
// Ledger, and any peer can Check a claimed total against the receipts that
// back it. Faked or replayed receipts are refused: a bad signature, another
// run, a receipt a stage wrote for itself, a hash already counted.
//
// Receipts, ledgers and Check are pure (no I/O, no clock); wire.go is the
// receipt's bounded wire form and service.go the network side (signing and
// keeping receipts for the trainer's pipeline, serving and checking claims
// on the receipts protocol).
package credit

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Refusals of a receipt or a claim.
var (
	ErrBadSignature = errors.New("receipt: bad signature")
	ErrWrongRun     = errors.New("receipt: for another run")
	ErrSelfReceipt  = errors.New("receipt: a stage cannot credit itself")
	ErrReplay       = errors.New("receipt: already counted (duplicate hash)")
	ErrMalformed    = errors.New("receipt: malformed")
	ErrInflated     = errors.New("claim: more than its receipts back")
	ErrLedgerFull   = errors.New("ledger: full")
)

// MaxSamples bounds the samples one receipt may credit.
const MaxSamples = 1 << 16

// domain keeps receipt signatures apart from every other use of the key.
const domain = "swarm-credit-receipt/1\n"

// Receipt acknowledges one micro-batch: Stage processed Samples samples
// that Sender sent it in Epoch of run RunID; Hash is the SHA-256 of what
// Stage received (so one micro-batch is counted once).
type Receipt struct {
	RunID   string   `json:"run_id"`
	Epoch   uint64   `json:"epoch"`
	Sender  string   `json:"sender"` // peer ID of the volunteer credited
	Stage   string   `json:"stage"`  // peer ID of the signer
	Samples int      `json:"samples"`
	Hash    [32]byte `json:"hash"`
	Sig     []byte   `json:"sig"`
}

// HashOf is the Hash of a micro-batch's bytes as the stage received them.
func HashOf(received []byte) [32]byte { return sha256.Sum256(received) }

// signed is the byte string the signature covers: the domain, then every
// field with its length.
func (r *Receipt) signed() []byte {
	b := []byte(domain)
	str := func(s string) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	str(r.RunID)
	b = binary.BigEndian.AppendUint64(b, r.Epoch)
	str(r.Sender)
	str(r.Stage)
	b = binary.BigEndian.AppendUint32(b, uint32(r.Samples))
	return append(b, r.Hash[:]...)
}

// Sign fills Stage with key's peer ID and signs r.
func Sign(key crypto.PrivKey, r Receipt) (Receipt, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return r, fmt.Errorf("sign receipt: %w", err)
	}
	r.Stage = id.String()
	if err := r.check(); err != nil {
		return r, err
	}
	if r.Sig, err = key.Sign(r.signed()); err != nil {
		return r, fmt.Errorf("sign receipt: %w", err)
	}
	return r, nil
}

func (r *Receipt) check() error {
	if r.Samples <= 0 || r.Samples > MaxSamples {
		return fmt.Errorf("%w: samples %d out of 1..%d", ErrMalformed, r.Samples, MaxSamples)
	}
	if r.Sender == r.Stage {
		return ErrSelfReceipt
	}
	return nil
}

// Verify checks that r is for runID, well formed and signed by the key of
// its Stage (the peer ID holds the public key).
func (r *Receipt) Verify(runID string) error {
	if r.RunID != runID {
		return fmt.Errorf("%w: %.80q, not %.80q", ErrWrongRun, r.RunID, runID)
	}
	if err := r.check(); err != nil {
		return err
	}
	if _, err := peer.Decode(r.Sender); err != nil {
		return fmt.Errorf("%w: sender: %v", ErrMalformed, err)
	}
	stage, err := peer.Decode(r.Stage)
	if err != nil {
		return fmt.Errorf("%w: stage: %v", ErrMalformed, err)
	}
	pub, err := stage.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("%w: stage %s: no public key in its ID", ErrMalformed, stage)
	}
	ok, err := pub.Verify(r.signed(), r.Sig)
	if err != nil || !ok {
		return fmt.Errorf("%w (stage %s)", ErrBadSignature, stage)
	}
	return nil
}

// Totals is a volunteer's credited work.
type Totals struct {
	Samples  int64 `json:"samples"`
	Receipts int   `json:"receipts"`
}

// Ledger holds the receipts of one run: a node keeps those it earned, and
// a checker those it was shown. It refuses what Verify refuses, and a hash
// it has counted. It holds at most max receipts.
type Ledger struct {
	runID  string
	max    int
	seen   map[[32]byte]bool
	kept   []Receipt
	totals map[string]Totals
}

// NewLedger returns an empty ledger for runID holding at most max receipts.
func NewLedger(runID string, max int) *Ledger {
	return &Ledger{runID: runID, max: max, seen: map[[32]byte]bool{}, totals: map[string]Totals{}}
}

// Add verifies r and counts it for its sender.
func (l *Ledger) Add(r Receipt) error {
	if err := r.Verify(l.runID); err != nil {
		return err
	}
	if l.seen[r.Hash] {
		return fmt.Errorf("%w: %x", ErrReplay, r.Hash[:8])
	}
	if len(l.kept) >= l.max {
		return fmt.Errorf("%w (%d receipts)", ErrLedgerFull, l.max)
	}
	l.seen[r.Hash] = true
	l.kept = append(l.kept, r)
	t := l.totals[r.Sender]
	t.Samples += int64(r.Samples)
	t.Receipts++
	l.totals[r.Sender] = t
	return nil
}

// Receipts are the receipts counted for sender, in the order added.
func (l *Ledger) Receipts(sender string) []Receipt {
	var out []Receipt
	for _, r := range l.kept {
		if r.Sender == sender {
			out = append(out, r)
		}
	}
	return out
}

// Totals is sender's credited work.
func (l *Ledger) Totals(sender string) Totals { return l.totals[sender] }

// Entry is one row of a leaderboard.
type Entry struct {
	Peer string `json:"peer"`
	Totals
}

// Leaderboard lists the volunteers by credited samples, most first.
func (l *Ledger) Leaderboard() []Entry {
	out := make([]Entry, 0, len(l.totals))
	for p, t := range l.totals {
		out = append(out, Entry{Peer: p, Totals: t})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Samples != out[j].Samples {
			return out[i].Samples > out[j].Samples
		}
		return out[i].Peer < out[j].Peer
	})
	return out
}

// Check verifies a claim that sender did claimed work in runID against the
// receipts it shows: every receipt must verify, be for sender and count
// once, and together they must back the whole claim.
func Check(runID, sender string, claimed Totals, receipts []Receipt) error {
	l := NewLedger(runID, len(receipts))
	for i, r := range receipts {
		if r.Sender != sender {
			return fmt.Errorf("receipt %d: %w: credits %s, not %s", i, ErrMalformed, r.Sender, sender)
		}
		if err := l.Add(r); err != nil {
			return fmt.Errorf("receipt %d: %w", i, err)
		}
	}
	if got := l.Totals(sender); claimed.Samples > got.Samples {
		return fmt.Errorf("%w: %s claims %d samples, its receipts back %d", ErrInflated, sender, claimed.Samples, got.Samples)
	}
	return nil
}
