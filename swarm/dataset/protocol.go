package dataset

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/swarm-train/swarm/internal/guard"
)

// Protocol is the data protocol: a run peer asks for a data set's root
// object, for the bitmap of chunks a peer holds, or for one chunk. A
// request is RequestLen bytes:
//
//	op u8 | SHA-256 digest of the root CID, 32 bytes | chunk index u32 (op 3, else 0)
//
// op 1 asks for the root object, 2 for the bitmap (Store.Bitmap), 3 for a
// chunk. Each answer is a frame [status u8][length u32][payload]: status 0
// carries the answer, 1 an error text (at most 256 bytes), 2 says the peer
// does not hold what was asked (empty). One stream carries any number of
// requests, one at a time.
const Protocol protocol.ID = "/swarm/data/1.0.0"

// RequestLen is the size of every request.
const RequestLen = 37

// Request ops and answer statuses.
const (
	OpRoot  = 1
	OpHave  = 2
	OpChunk = 3

	statusOK      = 0
	statusError   = 1
	statusMissing = 2
)

// maxErrorText bounds an error frame's text.
const maxErrorText = 256

// Request is one decoded request.
type Request struct {
	Op    byte
	Root  [32]byte
	Chunk uint32
}

// Encode returns r's wire form.
func (r Request) Encode() []byte {
	b := make([]byte, RequestLen)
	b[0] = r.Op
	copy(b[1:], r.Root[:])
	binary.BigEndian.PutUint32(b[33:], r.Chunk)
	return b
}

// DecodeRequest parses a request; an unknown op is an error (a chunk index
// is checked against the root by the server, which knows it).
func DecodeRequest(b []byte) (Request, error) {
	if len(b) != RequestLen {
		return Request{}, fmt.Errorf("data request of %d bytes, want %d", len(b), RequestLen)
	}
	r := Request{Op: b[0], Chunk: binary.BigEndian.Uint32(b[33:])}
	copy(r.Root[:], b[1:33])
	if r.Op < OpRoot || r.Op > OpChunk {
		return r, fmt.Errorf("unknown data op %d", r.Op)
	}
	return r, nil
}

// Frame is one decoded answer.
type Frame struct {
	Status  byte
	Payload []byte
}

func writeFrame(w io.Writer, status byte, payload []byte) error {
	var hdr [5]byte
	hdr[0] = status
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// ReadFrame reads one answer whose payload may be at most limit bytes (an
// error text at most 256, a "missing" answer none): a larger length is
// refused before anything is allocated, and the payload grows only as its
// bytes arrive.
func ReadFrame(r io.Reader, limit int) (Frame, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Frame{}, fmt.Errorf("data frame header: %w", err)
	}
	f := Frame{Status: hdr[0]}
	n := binary.BigEndian.Uint32(hdr[1:])
	switch f.Status {
	case statusOK:
	case statusError:
		limit = maxErrorText
	case statusMissing:
		limit = 0
	default:
		return f, fmt.Errorf("%w: data frame status %d", errMalformed, f.Status)
	}
	if int64(n) > int64(limit) {
		return f, fmt.Errorf("%w: data frame of %d bytes with status %d, limit %d", errMalformed, n, f.Status, limit)
	}
	b, err := guard.ReadFull(r, int(n))
	if err != nil {
		return f, fmt.Errorf("data frame body: %w", err)
	}
	f.Payload = b
	return f, nil
}

// errMalformed marks an answer that breaks the protocol's form;
// errBadBitmap is one of them.
var (
	errMalformed = errors.New("malformed answer")
	errBadBitmap = fmt.Errorf("%w: bad bitmap", errMalformed)
)

// Server limits.
const (
	// StreamsPerPeer streams of one peer are served at once, maxStreams
	// of all peers.
	StreamsPerPeer = 4
	maxStreams     = 64
	// serveTimeout bounds the wait for each request and its answer.
	serveTimeout = 30 * time.Second
)

// Refusal reasons (guard).
const (
	protoData   = "data"
	whyFlood    = "flood"
	whyOp       = "op"
	whyRange    = "range"
	whyBitmap   = "bitmap"
	whyAnswer   = "answer"
	whyRootLie  = "data-root"
	whyChunkLie = "data-chunk"
)

// Server answers data requests from a store.
type Server struct {
	h       host.Host
	store   *Store
	refuse  *guard.Refusals
	metrics *Metrics

	slots   *guard.Slots // streams being served, per peer and in all
	corrupt atomic.Bool
}

// NewServer registers the protocol on h (the node's run host: only
// admitted run peers are served). refuse and m may be nil.
func NewServer(h host.Host, s *Store, refuse *guard.Refusals, m *Metrics) *Server {
	srv := &Server{h: h, store: s, refuse: refuse, metrics: m, slots: guard.NewSlots(StreamsPerPeer, maxStreams)}
	h.SetStreamHandler(Protocol, srv.handle)
	return srv
}

// CorruptChunks makes srv serve chunks that fail their CID: a fault
// injection for the process tests of donor bans. Never call it otherwise.
func (srv *Server) CorruptChunks() { srv.corrupt.Store(true) }

// Close removes the handler.
func (srv *Server) Close() { srv.h.RemoveStreamHandler(Protocol) }

func (srv *Server) handle(st network.Stream) {
	defer st.Close()
	from := st.Conn().RemotePeer()
	if srv.refuse.Banned(from) {
		st.Reset()
		return
	}
	_ = st.SetDeadline(time.Now().Add(serveTimeout))
	if !srv.slots.Acquire(from) {
		srv.refuse.Refuse(from, protoData, whyFlood, fmt.Errorf("more than %d data streams at once", StreamsPerPeer))
		_ = writeFrame(st, statusError, []byte("too many data streams at once"))
		return
	}
	defer srv.slots.Release(from)
	buf := make([]byte, RequestLen)
	for {
		if _, err := io.ReadFull(st, buf); err != nil {
			return // the asker is done (EOF) or gone
		}
		_ = st.SetDeadline(time.Now().Add(serveTimeout))
		req, err := DecodeRequest(buf)
		if err != nil {
			srv.refuse.Refuse(from, protoData, whyOp, err)
			_ = writeFrame(st, statusError, []byte(err.Error()))
			return
		}
		if !srv.answer(st, from, req) {
			return
		}
	}
}

// answer serves one request; false ends the stream.
func (srv *Server) answer(st network.Stream, from peer.ID, req Request) bool {
	if req.Root != srv.store.sum {
		return writeFrame(st, statusMissing, nil) == nil // another data set
	}
	r := srv.store.Root()
	if r == nil {
		return writeFrame(st, statusMissing, nil) == nil
	}
	switch req.Op {
	case OpRoot:
		return writeFrame(st, statusOK, srv.store.RootBytes()) == nil
	case OpHave:
		return writeFrame(st, statusOK, srv.store.Bitmap()) == nil
	}
	if int64(req.Chunk) >= int64(len(r.Chunks())) {
		err := fmt.Errorf("chunk %d of a data set of %d chunks", req.Chunk, len(r.Chunks()))
		srv.refuse.Refuse(from, protoData, whyRange, err)
		_ = writeFrame(st, statusError, []byte(err.Error()))
		return false
	}
	b, err := srv.store.ReadChunk(int(req.Chunk))
	if errors.Is(err, ErrMissing) {
		return writeFrame(st, statusMissing, nil) == nil
	}
	if err != nil {
		_ = writeFrame(st, statusError, []byte("cannot read the chunk"))
		return false
	}
	if srv.corrupt.Load() && len(b) > 0 {
		b[len(b)/2] ^= 0x20
	}
	if err := writeFrame(st, statusOK, b); err != nil {
		return false
	}
	srv.metrics.addBytes("out", len(b))
	return true
}

// donorConn is a fetcher's stream to one donor.
type donorConn struct {
	st      network.Stream
	root    [32]byte
	timeout time.Duration
}

// ask sends a request and reads its answer (payload at most limit bytes).
func (c *donorConn) ask(op byte, chunk uint32, limit int) (Frame, error) {
	_ = c.st.SetDeadline(time.Now().Add(c.timeout))
	if _, err := c.st.Write(Request{Op: op, Root: c.root, Chunk: chunk}.Encode()); err != nil {
		return Frame{}, err
	}
	return ReadFrame(c.st, limit)
}

// errNotHeld: the donor does not hold what was asked.
var errNotHeld = errors.New("donor does not hold it")

// frameErr turns a non-OK frame into an error.
func frameErr(f Frame) error {
	if f.Status == statusMissing {
		return errNotHeld
	}
	return fmt.Errorf("donor: %.200q", f.Payload)
}

// askRoot fetches the root object, which must hash to c.root.
func (c *donorConn) askRoot() ([]byte, error) {
	f, err := c.ask(OpRoot, 0, MaxRootBytes)
	if err != nil {
		if errors.Is(err, errMalformed) && f.Status == statusOK {
			return nil, fmt.Errorf("root object: %w: %v", errLie, err) // longer than any root
		}
		return nil, err
	}
	if f.Status != statusOK {
		return nil, frameErr(f)
	}
	if sha256.Sum256(f.Payload) != c.root {
		return nil, fmt.Errorf("%w: a root object of %d bytes that does not hash to the root asked for", errLie, len(f.Payload))
	}
	return f.Payload, nil
}

// askHave fetches the donor's bitmap of a root of n chunks: exactly
// ceil(n/8) bytes, no bit set past n.
func (c *donorConn) askHave(n int) ([]byte, error) {
	want := (n + 7) / 8
	f, err := c.ask(OpHave, 0, want)
	if err != nil {
		if errors.Is(err, errMalformed) && f.Status == statusOK {
			return nil, fmt.Errorf("%w: %v", errBadBitmap, err)
		}
		return nil, err
	}
	if f.Status != statusOK {
		return nil, frameErr(f)
	}
	if err := CheckBitmap(f.Payload, n); err != nil {
		return nil, err
	}
	return f.Payload, nil
}

// CheckBitmap refuses a bitmap that is not one of n chunks: exactly
// ceil(n/8) bytes, no bit set past chunk n-1.
func CheckBitmap(b []byte, n int) error {
	want := (n + 7) / 8
	if len(b) != want {
		return fmt.Errorf("%w: %d bytes for %d chunks, want %d", errBadBitmap, len(b), n, want)
	}
	if n%8 != 0 && b[want-1]>>(n%8) != 0 {
		return fmt.Errorf("%w: bits set past chunk %d", errBadBitmap, n-1)
	}
	return nil
}

// errLie marks an answer that contradicts the root CID: evidence to ban.
var errLie = errors.New("contradicts the data set's CIDs")

// askChunk fetches chunk ch and checks it against its CID.
func (c *donorConn) askChunk(ch Chunk) ([]byte, error) {
	f, err := c.ask(OpChunk, uint32(ch.Index), ch.Len)
	if err != nil {
		if errors.Is(err, errMalformed) && f.Status == statusOK {
			return nil, fmt.Errorf("chunk %d: %w: %v", ch.Index, errLie, err) // longer than the chunk
		}
		return nil, err
	}
	if f.Status != statusOK {
		return nil, frameErr(f)
	}
	if len(f.Payload) != ch.Len {
		return nil, fmt.Errorf("chunk %d: %w: %d bytes, its CID names %d", ch.Index, errLie, len(f.Payload), ch.Len)
	}
	if got := sha256.Sum256(f.Payload); got != ch.Sum {
		return nil, fmt.Errorf("chunk %d: %w: its %d bytes hash to %s, not to %s", ch.Index, errLie, ch.Len, sumCID(got), sumCID(ch.Sum))
	}
	return f.Payload, nil
}
