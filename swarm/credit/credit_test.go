package credit

import (
	"crypto/rand"
	"errors"
	"fmt"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

func newKey(t testing.TB) (crypto.PrivKey, string) {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return k, id.String()
}

// receipts signs n receipts by stage for sender's micro-batches of 32 samples.
func receipts(t *testing.T, stage crypto.PrivKey, run, sender string, n int) []Receipt {
	t.Helper()
	out := make([]Receipt, n)
	for i := range out {
		r, err := Sign(stage, Receipt{RunID: run, Epoch: uint64(i / 4), Sender: sender, Samples: 32,
			Hash: HashOf([]byte(fmt.Sprintf("%s micro-batch %d", sender, i)))})
		if err != nil {
			t.Fatal(err)
		}
		out[i] = r
	}
	return out
}

// A volunteer that inflates its contribution in its records is caught by a
// peer that checks the receipts; the honest claim passes.
func TestInflatedClaimIsCaught(t *testing.T) {
	stage, _ := newKey(t)
	_, volunteer := newKey(t)
	rs := receipts(t, stage, "run-a", volunteer, 10)
	if err := Check("run-a", volunteer, Totals{Samples: 320}, rs); err != nil {
		t.Fatalf("honest claim: %v", err)
	}
	err := Check("run-a", volunteer, Totals{Samples: 5000}, rs)
	if !errors.Is(err, ErrInflated) {
		t.Fatalf("inflated claim: %v, want ErrInflated", err)
	}
	t.Log(err)
	// Replaying its receipts to pad the claim does not help.
	if err := Check("run-a", volunteer, Totals{Samples: 640}, append(rs, rs...)); !errors.Is(err, ErrReplay) {
		t.Fatalf("replayed receipts: %v, want ErrReplay", err)
	}
}

// Faked receipts are refused with the reason: tampered fields, another
// run, a stage crediting itself, a receipt signed by a key that is not the
// stage's, a duplicate hash, and someone else's receipt.
func TestFakedReceiptsAreRefused(t *testing.T) {
	stage, stageID := newKey(t)
	other, _ := newKey(t)
	_, volunteer := newKey(t)
	good := receipts(t, stage, "run-a", volunteer, 1)[0]

	tampered := good
	tampered.Samples = 4096
	forged := good
	forged.Sig, _ = other.Sign(good.signed())
	anotherRun := receipts(t, stage, "run-b", volunteer, 1)[0]
	if _, err := Sign(stage, Receipt{RunID: "run-a", Sender: stageID, Samples: 1}); !errors.Is(err, ErrSelfReceipt) {
		t.Errorf("self receipt signed: %v", err)
	}
	self := good
	self.Sender = stageID
	for _, c := range []struct {
		name string
		r    Receipt
		want error
	}{
		{"tampered samples", tampered, ErrBadSignature},
		{"signed by another key", forged, ErrBadSignature},
		{"another run", anotherRun, ErrWrongRun},
		{"stage credits itself", self, ErrSelfReceipt},
	} {
		l := NewLedger("run-a", 10)
		if err := l.Add(c.r); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	l := NewLedger("run-a", 10)
	if err := l.Add(good); err != nil {
		t.Fatal(err)
	}
	if err := l.Add(good); !errors.Is(err, ErrReplay) {
		t.Errorf("duplicate: %v", err)
	}
	_, someoneElse := newKey(t)
	if err := Check("run-a", someoneElse, Totals{Samples: 32}, []Receipt{good}); !errors.Is(err, ErrMalformed) {
		t.Errorf("someone else's receipt: %v", err)
	}
}

// The ledger keeps totals per volunteer, ranks them, and holds at most its
// bound.
func TestLedgerTotalsAndBound(t *testing.T) {
	stage, _ := newKey(t)
	_, a := newKey(t)
	_, b := newKey(t)
	l := NewLedger("run-a", 5)
	for _, r := range append(receipts(t, stage, "run-a", a, 1), receipts(t, stage, "run-a", b, 3)...) {
		if err := l.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	board := l.Leaderboard()
	if len(board) != 2 || board[0].Peer != b || board[0].Samples != 96 || board[1].Samples != 32 || board[0].Receipts != 3 {
		t.Fatalf("leaderboard %+v", board)
	}
	more := receipts(t, stage, "run-a", a, 3)
	if err := l.Add(more[1]); err != nil {
		t.Fatal(err)
	}
	if err := l.Add(more[2]); !errors.Is(err, ErrLedgerFull) {
		t.Fatalf("past the bound: %v", err)
	}
	if got := len(l.Receipts(a)); got != 2 {
		t.Errorf("%d receipts of a, want 2", got)
	}
}
