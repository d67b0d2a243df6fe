package credit

// Service is the network side of credited work for one node of a run:
//
//   - Stamp signs the receipt a stage returns with its pipeline answer
//     (crediting the sender) or a sender returns after reading the answer
//     (crediting the stage);
//   - Earn verifies a receipt this node was given and keeps it in its ledger;
//   - Serve answers the receipts protocol: a run peer pages through the
//     receipts that back this node's claim;
//   - Check pages through a peer's receipts and compares them with the
//     credit its progress record claims: a claim its receipts don't back is
//     inflated, and the caller bans the peer.
//
// It is safe for concurrent use.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/swarm-train/swarm/internal/guard"
)

// Protocol is the receipts protocol: the asker writes (offset u32, count
// u16) pages, the node answers each with (total u32, n u16, then n × (u16
// length, receipt)); the asker closes when it has what it wants.
const Protocol protocol.ID = "/swarm/train/receipts/1.0.0"

// Bounds of the protocol and of what one node keeps.
const (
	PageSize = 256 // receipts per page at most
	// MaxKept bounds the receipts a node keeps and a checker fetches
	// (about 18 MB at most on the wire for a whole check).
	MaxKept = 1 << 16
	// checkGap is the least time between two checks of one peer by one
	// node, and between two check streams of one asker.
	checkGap     = 30 * time.Second
	pageDeadline = 10 * time.Second
	maxRemember  = 4096
)

// Service is one node's receipts: those it earned, and what it verified of
// its peers' claims.
type Service struct {
	runID    string
	self     peer.ID
	key      crypto.PrivKey
	refusals *guard.Refusals
	log      *slog.Logger

	mu       sync.Mutex
	ledger   *Ledger
	full     bool                // the ledger filled up (logged once)
	verified map[peer.ID]Checked // by peer: the last check of its claim
	asked    map[peer.ID]time.Time
}

// Checked is the outcome of the last check of a peer's claim.
type Checked struct {
	Claimed  int64     `json:"claimed"`  // samples its record claimed
	Backed   int64     `json:"backed"`   // samples its receipts back
	Receipts int       `json:"receipts"` // receipts verified
	At       time.Time `json:"at"`
	Err      string    `json:"error,omitempty"` // why the claim failed
}

// NewService returns the receipts of this node (key) in runID.
func NewService(runID string, key crypto.PrivKey, refusals *guard.Refusals, log *slog.Logger) (*Service, error) {
	self, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("credit: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{runID: runID, self: self, key: key, refusals: refusals, log: log,
		ledger: NewLedger(runID, MaxKept), verified: map[peer.ID]Checked{}, asked: map[peer.ID]time.Time{}}, nil
}

// Stamp signs a receipt crediting sender with samples of epoch, for the
// bytes whose SHA-256 is hash, and returns its wire form (nil when it
// cannot: the caller sends the answer without one).
func (s *Service) Stamp(sender peer.ID, epoch uint64, samples int, hash [32]byte) []byte {
	r, err := Sign(s.key, Receipt{RunID: s.runID, Epoch: epoch, Sender: sender.String(), Samples: samples, Hash: hash})
	if err != nil {
		return nil
	}
	b, err := Marshal(r)
	if err != nil {
		return nil
	}
	return b
}

// Earn verifies a receipt stage gave this node for samples it sent or
// processed (the bytes whose SHA-256 is hash) and keeps it.
func (s *Service) Earn(stage peer.ID, raw []byte, samples int, hash [32]byte) error {
	r, err := Unmarshal(raw)
	if err != nil {
		return err
	}
	switch {
	case r.Stage != stage.String():
		return fmt.Errorf("%w: signed as %.60s, sent by %s", ErrMalformed, r.Stage, stage)
	case r.Sender != s.self.String():
		return fmt.Errorf("%w: credits %.60s, not this node", ErrMalformed, r.Sender)
	case r.Hash != hash:
		return fmt.Errorf("%w: for other bytes than were exchanged", ErrMalformed)
	case r.Samples != samples:
		return fmt.Errorf("%w: credits %d samples, the micro-batch had %d", ErrMalformed, r.Samples, samples)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err = s.ledger.Add(r)
	if errors.Is(err, ErrLedgerFull) {
		if !s.full {
			s.full = true
			s.log.Warn("credit: receipts ledger full; later work is not credited", "kept", MaxKept)
		}
	}
	return err
}

// Credited is this node's credited work: what its receipts back.
func (s *Service) Credited() Totals {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ledger.Totals(s.self.String())
}

// Verified is the last check of each peer's claim.
func (s *Service) Verified() map[string]Checked {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]Checked, len(s.verified))
	for p, c := range s.verified {
		out[p.String()] = c
	}
	return out
}

// LastCheck is when p's claim was last checked.
func (s *Service) LastCheck(p peer.ID) (Checked, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.verified[p]
	return c, ok
}

func (s *Service) page(offset, count int) (total int, out [][]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := s.ledger.kept // only this node's receipts: Earn admits no other sender
	total = len(kept)
	for i := offset; i < total && len(out) < count; i++ {
		if b, err := Marshal(kept[i]); err == nil {
			out = append(out, b)
		}
	}
	return total, out
}

// Serve answers one receipts stream of a run peer: pages until the asker
// closes. One stream per asker per checkGap.
func (s *Service) Serve(st network.Stream) {
	defer st.Close()
	from := st.Conn().RemotePeer()
	now := time.Now()
	s.mu.Lock()
	last, seen := s.asked[from]
	ok := !seen || now.Sub(last) >= checkGap
	if ok {
		if len(s.asked) >= maxRemember {
			for p, t := range s.asked {
				if now.Sub(t) >= checkGap {
					delete(s.asked, p)
				}
			}
		}
		ok = len(s.asked) < maxRemember
		if ok {
			s.asked[from] = now
		}
	}
	s.mu.Unlock()
	if !ok {
		s.refusals.Refuse(from, string(Protocol), "rate", fmt.Errorf("receipts asked again within %s", checkGap))
		_ = st.Reset()
		return
	}
	var q [6]byte
	for pages := 0; pages <= MaxKept/PageSize; pages++ {
		_ = st.SetDeadline(time.Now().Add(pageDeadline))
		if _, err := io.ReadFull(st, q[:]); err != nil {
			if !errors.Is(err, io.EOF) {
				_ = st.Reset()
			}
			return
		}
		offset, count := int(binary.BigEndian.Uint32(q[:4])), int(binary.BigEndian.Uint16(q[4:]))
		if count > PageSize || offset > MaxKept {
			s.refusals.Refuse(from, string(Protocol), "page", fmt.Errorf("page of %d receipts at %d (at most %d, below %d)", count, offset, PageSize, MaxKept))
			_ = st.Reset()
			return
		}
		total, recs := s.page(offset, count)
		b := binary.BigEndian.AppendUint32(nil, uint32(total))
		b = binary.BigEndian.AppendUint16(b, uint16(len(recs)))
		for _, r := range recs {
			b = binary.BigEndian.AppendUint16(b, uint16(len(r)))
			b = append(b, r...)
		}
		if _, err := st.Write(b); err != nil {
			_ = st.Reset()
			return
		}
	}
	_ = st.Reset() // more pages than a whole ledger holds
}

// MayCheck says whether p's claim is due a check: never checked, or last
// checked more than checkGap ago with a claim that grew since.
func (s *Service) MayCheck(p peer.ID, claimed int64, now time.Time) bool {
	if claimed <= 0 || p == s.self {
		return false
	}
	c, ok := s.LastCheck(p)
	return !ok || (now.Sub(c.At) >= checkGap && claimed > c.Claimed)
}

// Check fetches p's receipts over open (a stream to p on Protocol) and
// checks them against the credit p claims: each must verify, credit p,
// count once and be for this run, and together they must back the claim.
// An inflated claim or a forged receipt returns an error wrapping
// ErrInflated or the receipt's refusal; the outcome is kept for Verified.
func (s *Service) Check(ctx context.Context, p peer.ID, claimed int64, open func(context.Context) (network.Stream, error)) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	st, err := open(ctx)
	if err != nil {
		return fmt.Errorf("credit check of %s: %w", p, err)
	}
	defer st.Close()
	var receipts []Receipt
	for len(receipts) < MaxKept {
		_ = st.SetDeadline(time.Now().Add(pageDeadline))
		q := binary.BigEndian.AppendUint32(nil, uint32(len(receipts)))
		q = binary.BigEndian.AppendUint16(q, PageSize)
		if _, err := st.Write(q); err != nil {
			_ = st.Reset()
			return fmt.Errorf("credit check of %s: %w", p, err)
		}
		var head [6]byte
		if _, err := io.ReadFull(st, head[:]); err != nil {
			_ = st.Reset()
			return fmt.Errorf("credit check of %s: %w", p, err)
		}
		total, n := int(binary.BigEndian.Uint32(head[:4])), int(binary.BigEndian.Uint16(head[4:]))
		if n > PageSize {
			_ = st.Reset()
			return s.keep(p, claimed, 0, 0, fmt.Errorf("%w: a page of %d receipts (at most %d)", ErrWire, n, PageSize))
		}
		for range n {
			var l [2]byte
			if _, err := io.ReadFull(st, l[:]); err != nil {
				_ = st.Reset()
				return fmt.Errorf("credit check of %s: %w", p, err)
			}
			if int(binary.BigEndian.Uint16(l[:])) > MaxWireBytes {
				_ = st.Reset()
				return s.keep(p, claimed, 0, 0, fmt.Errorf("%w: a receipt of %d bytes", ErrWire, binary.BigEndian.Uint16(l[:])))
			}
			raw, err := guard.ReadFull(st, int(binary.BigEndian.Uint16(l[:])))
			if err != nil {
				_ = st.Reset()
				return fmt.Errorf("credit check of %s: %w", p, err)
			}
			r, err := Unmarshal(raw)
			if err != nil {
				_ = st.Reset()
				return s.keep(p, claimed, 0, len(receipts), fmt.Errorf("receipt %d: %w", len(receipts), err))
			}
			receipts = append(receipts, r)
		}
		if n == 0 || len(receipts) >= total {
			break
		}
	}
	_ = st.CloseWrite()
	err = Check(s.runID, p.String(), Totals{Samples: claimed}, receipts)
	var backed int64
	for _, r := range receipts {
		backed += int64(r.Samples)
	}
	return s.keep(p, claimed, backed, len(receipts), err)
}

func (s *Service) keep(p peer.ID, claimed, backed int64, n int, err error) error {
	c := Checked{Claimed: claimed, Backed: backed, Receipts: n, At: time.Now()}
	if err != nil {
		c.Err = err.Error()
		c.Backed = 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.verified[p]; !ok && len(s.verified) >= maxRemember {
		for q := range s.verified { // forget one: a bounded memory, not an LRU
			delete(s.verified, q)
			break
		}
	}
	s.verified[p] = c
	return err
}
