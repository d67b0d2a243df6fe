package trainer

// Credited work (swarm/credit): the stage that processes a training
// micro-batch returns a receipt crediting the sender, and the sender, once
// it has read a good answer, acknowledges with a receipt crediting the
// stage. Each node keeps what it earned, its progress record claims the
// total (Record.Credit), and every Config.CreditEvery one peer whose claim grew is
// checked against the receipts it shows: a claim they don't back, or a
// forged receipt, bans the peer.

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/swarm/credit"
	"github.com/swarm-train/swarm/swarm/pipeline"
)

const (
	creditEvery = 10 * time.Second
	// ackWait bounds how long a stage waits for the sender's
	// acknowledgement after its answer.
	ackWait = 2 * time.Second
	// Refusal and ban reasons.
	whyReceipt = "receipt"
	banCredit  = "credit"
)

// startCredit sets up this node's receipts (none when the host holds no
// private key: tools that embed a trainer without an identity).
func (t *Trainer) startCredit() error {
	key := t.h.Peerstore().PrivKey(t.h.ID())
	if key == nil {
		return nil
	}
	svc, err := credit.NewService(t.runID, key, t.cfg.Refusals, t.log)
	if err != nil {
		return err
	}
	t.credit = svc
	t.h.SetStreamHandler(credit.Protocol, svc.Serve)
	return nil
}

// stamp is the stage's receipt for a training request from sender whose
// bytes hash to sum (nil without receipts).
func (s *stageServer) stamp(sender peer.ID, epoch uint64, n int, sum [32]byte) []byte {
	if s.credit == nil {
		return nil
	}
	return s.credit.Stamp(sender, epoch, n, sum)
}

// earn keeps a receipt stage gave this node; a bad one is refused and
// counted (a stage that signs garbage gains nothing by it).
func (s *stageServer) earn(stage peer.ID, raw []byte, n int, sum [32]byte) {
	if s.credit == nil || len(raw) == 0 {
		return
	}
	if err := s.credit.Earn(stage, raw, n, sum); err != nil && !errors.Is(err, credit.ErrLedgerFull) {
		s.refusals.Refuse(stage, string(pipeline.Protocol), whyReceipt, err)
	}
}

// awaitAck reads the sender's acknowledgement of an answer whose bytes
// were out, and keeps the receipt it carries. It reports whether one came
// (the stream is then in step for another request).
func (s *stageServer) awaitAck(st network.Stream, sender peer.ID, n int, out []byte) bool {
	_ = st.SetReadDeadline(clock.WallDeadline(ackWait))
	raw, err := pipeline.ReadAck(st)
	if err != nil {
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, context.DeadlineExceeded) {
			s.refusals.Refuse(sender, string(pipeline.Protocol), whyReceipt, err)
		}
		return false
	}
	s.earn(sender, raw, n, sha256.Sum256(out))
	return true
}

// creditLoop checks one peer's claim every Config.CreditEvery: a random live
// peer whose claimed credit grew since its last check.
func (t *Trainer) creditLoop(ctx context.Context) {
	if t.credit == nil {
		return
	}
	for {
		if clock.Sleep(ctx, t.clk, t.cfg.CreditEvery) != nil {
			return
		}
		now := t.clk.Now()
		var due []peer.ID
		claims := map[peer.ID]int64{}
		for _, r := range t.tracker.Live(now) {
			p, err := peer.Decode(r.Peer)
			if err != nil || !t.credit.MayCheck(p, r.Credit, now) {
				continue
			}
			due = append(due, p)
			claims[p] = r.Credit
		}
		if len(due) == 0 {
			continue
		}
		p := due[rand.IntN(len(due))]
		err := t.credit.Check(ctx, p, claims[p], func(ctx context.Context) (network.Stream, error) {
			return t.h.NewStream(ctx, p, credit.Protocol)
		})
		switch {
		case err == nil:
		case errors.Is(err, credit.ErrInflated), errors.Is(err, credit.ErrBadSignature), errors.Is(err, credit.ErrWrongRun),
			errors.Is(err, credit.ErrReplay), errors.Is(err, credit.ErrMalformed), errors.Is(err, credit.ErrSelfReceipt),
			errors.Is(err, credit.ErrWire):
			t.cfg.Refusals.BanFor(p, banCredit, err)
			t.stage.bal.Ban(p, banPoison, "credit claim its receipts do not back")
		default:
			t.log.Debug("credit check failed", "peer", p, "err", err)
		}
	}
}
