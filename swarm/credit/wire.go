package credit

// The wire form of a receipt, as it travels in a pipeline answer (the stage
// credits the sender), in the sender's acknowledgement (the sender credits
// the stage) and in the receipts protocol (a peer shows what backs its
// claim). Every length is bounded before it is read.

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Bounds of the wire form.
const (
	wireVersion  = 1
	maxIDLen     = 128 // run ID and peer IDs, as strings
	maxSigLen    = 1024
	MaxWireBytes = 1 + 3*(1+maxIDLen) + 8 + 4 + 32 + 2 + maxSigLen
)

// ErrWire marks a receipt that does not decode.
var ErrWire = errors.New("receipt: bad wire form")

// Marshal returns r's wire form: version, run ID, epoch, sender, stage,
// samples, hash, signature.
func Marshal(r Receipt) ([]byte, error) {
	for name, s := range map[string]string{"run ID": r.RunID, "sender": r.Sender, "stage": r.Stage} {
		if len(s) > maxIDLen {
			return nil, fmt.Errorf("%w: %s of %d bytes", ErrWire, name, len(s))
		}
	}
	if len(r.Sig) > maxSigLen {
		return nil, fmt.Errorf("%w: signature of %d bytes", ErrWire, len(r.Sig))
	}
	b := make([]byte, 0, 64+len(r.RunID)+len(r.Sender)+len(r.Stage)+len(r.Sig))
	b = append(b, wireVersion)
	b = append(b, byte(len(r.RunID)))
	b = append(b, r.RunID...)
	b = binary.BigEndian.AppendUint64(b, r.Epoch)
	b = append(b, byte(len(r.Sender)))
	b = append(b, r.Sender...)
	b = append(b, byte(len(r.Stage)))
	b = append(b, r.Stage...)
	b = binary.BigEndian.AppendUint32(b, uint32(r.Samples))
	b = append(b, r.Hash[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Sig)))
	return append(b, r.Sig...), nil
}

// Unmarshal decodes a receipt's wire form (it does not verify the
// signature: Verify or a Ledger does).
func Unmarshal(b []byte) (Receipt, error) {
	var r Receipt
	if len(b) > MaxWireBytes {
		return r, fmt.Errorf("%w: %d bytes, at most %d", ErrWire, len(b), MaxWireBytes)
	}
	d := b
	fail := func(what string) (Receipt, error) {
		return Receipt{}, fmt.Errorf("%w: %s", ErrWire, what)
	}
	take := func(n int) []byte {
		if n > len(d) {
			d = nil
			return nil
		}
		out := d[:n]
		d = d[n:]
		return out
	}
	str := func() (string, bool) {
		l := take(1)
		if l == nil || int(l[0]) > maxIDLen {
			return "", false
		}
		s := take(int(l[0]))
		return string(s), s != nil
	}
	if v := take(1); v == nil || v[0] != wireVersion {
		return fail("unknown version")
	}
	var ok bool
	if r.RunID, ok = str(); !ok {
		return fail("run ID")
	}
	e := take(8)
	if e == nil {
		return fail("epoch")
	}
	r.Epoch = binary.BigEndian.Uint64(e)
	if r.Sender, ok = str(); !ok {
		return fail("sender")
	}
	if r.Stage, ok = str(); !ok {
		return fail("stage")
	}
	n := take(4)
	if n == nil {
		return fail("samples")
	}
	samples := binary.BigEndian.Uint32(n)
	if samples > MaxSamples {
		return fail(fmt.Sprintf("samples %d over %d", samples, MaxSamples))
	}
	r.Samples = int(samples)
	h := take(32)
	if h == nil {
		return fail("hash")
	}
	copy(r.Hash[:], h)
	sl := take(2)
	if sl == nil {
		return fail("signature length")
	}
	l := int(binary.BigEndian.Uint16(sl))
	if l > maxSigLen {
		return fail(fmt.Sprintf("signature of %d bytes", l))
	}
	if r.Sig = take(l); r.Sig == nil && l > 0 {
		return fail("signature")
	}
	r.Sig = append([]byte(nil), r.Sig...)
	if len(d) != 0 {
		return fail(fmt.Sprintf("%d bytes after the signature", len(d)))
	}
	return r, nil
}
