package node

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// HelloProtocol is the run handshake and admission check, three messages
// of one format: the dialer sends its hello (its run ID and, in token runs,
// its admission token); the listener answers with its own hello and its
// verdict on the dialer (refused, and why); the dialer ends with its verdict
// on the listener. Each side counts the other as a run peer only when both
// verdicts admit. The DHT says who claims to be in a run; the handshake
// confirms it with the peer itself, so peers of another run (or stale
// provider records) are never listed, and no training protocol serves a
// peer that has not passed it (see gate in admission.go).
const HelloProtocol protocol.ID = "/swarm/run-hello/1.1.0"

// Sizes bounded on the wire: a CIDv1 sha2-256 is 36 bytes; tokens are at
// most run.MaxTokenLen (1 KiB); a refusal reason is a short sentence.
const (
	maxRunIDLen  = 128
	maxTokenLen  = 1024
	maxReasonLen = 256
)

var errBadHello = errors.New("bad run hello")

// hello is one side's handshake message. Verdict and Reason are the
// listener's answer about the dialer (zero in the dialer's message).
type hello struct {
	Run     cid.Cid
	Token   string
	Refused bool
	Reason  string // why the dialer was refused: a short code and text
}

// writeHello writes h: run ID, token, verdict byte and reason, the three
// byte strings each behind a uvarint length.
func writeHello(w io.Writer, h hello) error {
	if len(h.Token) > maxTokenLen || len(h.Reason) > maxReasonLen {
		return fmt.Errorf("%w: token or reason too long", errBadHello)
	}
	b := appendBytes(nil, h.Run.Bytes())
	b = appendBytes(b, []byte(h.Token))
	verdict := byte(0)
	if h.Refused {
		verdict = 1
	}
	b = append(b, verdict)
	b = appendBytes(b, []byte(h.Reason))
	_, err := w.Write(b)
	return err
}

func appendBytes(b, s []byte) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// readHello reads one hello and rejects anything malformed or oversized.
func readHello(r io.Reader) (hello, error) {
	br, ok := r.(io.ByteReader)
	if !ok {
		buf := bufio.NewReaderSize(r, 64)
		br, r = buf, buf
	}
	var h hello
	run, err := readBytes(r, br, "run ID", maxRunIDLen, false)
	if err != nil {
		return h, err
	}
	got, c, err := cid.CidFromBytes(run)
	if err != nil {
		return h, fmt.Errorf("%w: run ID: %v", errBadHello, err)
	}
	if got != len(run) {
		return h, fmt.Errorf("%w: %d trailing bytes after run ID", errBadHello, len(run)-got)
	}
	h.Run = c
	tok, err := readBytes(r, br, "token", maxTokenLen, true)
	if err != nil {
		return h, err
	}
	h.Token = string(tok)
	verdict, err := br.ReadByte()
	if err != nil {
		return h, fmt.Errorf("%w: verdict: %v", errBadHello, err)
	}
	if verdict > 1 {
		return h, fmt.Errorf("%w: verdict %d is neither 0 nor 1", errBadHello, verdict)
	}
	h.Refused = verdict == 1
	reason, err := readBytes(r, br, "reason", maxReasonLen, true)
	if err != nil {
		return h, err
	}
	h.Reason = string(reason)
	return h, nil
}

func readBytes(r io.Reader, br io.ByteReader, what string, max int, empty bool) ([]byte, error) {
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return nil, fmt.Errorf("%w: %s length: %w", errBadHello, what, err)
	}
	lo := 1
	if empty {
		lo = 0
	}
	if n < uint64(lo) || n > uint64(max) {
		return nil, fmt.Errorf("%w: %s length %d outside %d..%d", errBadHello, what, n, lo, max)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", errBadHello, what, err)
	}
	return b, nil
}
