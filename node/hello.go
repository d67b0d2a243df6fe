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

// HelloProtocol is the run handshake: the dialer writes its run ID, the
// listener answers with its own, and each side counts the other as a run
// peer only if the two are equal. The DHT says who claims to be in a run;
// the handshake confirms it with the peer itself, so peers of another run
// (or stale provider records) are never listed.
const HelloProtocol protocol.ID = "/swarm/run-hello/1.0.0"

// maxRunIDLen bounds a run ID on the wire; CIDv1 sha2-256 is 36 bytes.
const maxRunIDLen = 128

var errBadHello = errors.New("bad run hello")

// writeRunID writes c as a uvarint length followed by the CID bytes.
func writeRunID(w io.Writer, c cid.Cid) error {
	b := c.Bytes()
	buf := binary.AppendUvarint(make([]byte, 0, len(b)+2), uint64(len(b)))
	_, err := w.Write(append(buf, b...))
	return err
}

// readRunID reads one length-prefixed CID and rejects anything else.
func readRunID(r io.Reader) (cid.Cid, error) {
	br, ok := r.(io.ByteReader)
	if !ok {
		br = bufio.NewReaderSize(r, 1)
		r = br.(io.Reader)
	}
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return cid.Undef, fmt.Errorf("%w: length: %v", errBadHello, err)
	}
	if n == 0 || n > maxRunIDLen {
		return cid.Undef, fmt.Errorf("%w: run ID length %d outside 1..%d", errBadHello, n, maxRunIDLen)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return cid.Undef, fmt.Errorf("%w: run ID: %v", errBadHello, err)
	}
	got, c, err := cid.CidFromBytes(b)
	if err != nil {
		return cid.Undef, fmt.Errorf("%w: run ID: %v", errBadHello, err)
	}
	if got != len(b) {
		return cid.Undef, fmt.Errorf("%w: %d trailing bytes after run ID", errBadHello, len(b)-got)
	}
	return c, nil
}
