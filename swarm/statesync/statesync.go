// Package statesync lets a node that joins a shard download the shard's
// current parameters, optimizer state and step counter from peers that hold
// it. A donor freezes a snapshot (a copy) when asked, so it keeps training
// and averaging while it serves; the joiner asks every donor for its
// snapshot's table of chunk hashes, picks the newest snapshot offered by the
// most donors, and pulls its chunks from all of them in parallel, checking
// each chunk against the table.
package statesync

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/swarm-train/swarm/internal/guard"
)

// Protocol is the snapshot download protocol. A request is
// [op u8][shard u32][snapshot u64][chunk u32]; op 1 asks for the snapshot's
// header (a new snapshot if snapshot is 0 or unknown), op 2 for one chunk.
const Protocol protocol.ID = "/swarm/train/state/1.0.0"

// ChunkFloats is the number of float32 values in one chunk (1 MiB).
const ChunkFloats = 1 << 18

// Limits on what a header may announce.
const (
	maxFloats = 1 << 31
	maxChunks = maxFloats / ChunkFloats
)

const (
	opHeader = 1
	opChunk  = 2

	statusOK    = 0
	statusError = 1
)

// Errors.
var (
	ErrNoDonor  = errors.New("statesync: no donor could serve the shard")
	ErrBadChunk = errors.New("statesync: chunk does not match its hash")
)

// Snapshot is a shard's full training state.
type Snapshot struct {
	Shard  int
	Epoch  uint64 // collaborative epoch the state belongs to
	Step   int64  // optimizer steps taken
	Params []float32
	Opt    []float32
}

func (s *Snapshot) flat() []float32 {
	out := make([]float32, 0, len(s.Params)+len(s.Opt))
	return append(append(out, s.Params...), s.Opt...)
}

// Header describes one frozen snapshot.
type Header struct {
	ID      uint64
	Epoch   uint64
	Step    int64
	NParams uint64
	NOpt    uint64
	Hashes  [][32]byte // one per chunk of ChunkFloats values (the last may be shorter)
}

func (h *Header) total() uint64 { return h.NParams + h.NOpt }

// key groups donors offering the same snapshot.
func (h *Header) key() [32]byte {
	d := sha256.New()
	var b [32]byte
	binary.BigEndian.PutUint64(b[0:], h.Epoch)
	binary.BigEndian.PutUint64(b[8:], uint64(h.Step))
	binary.BigEndian.PutUint64(b[16:], h.NParams)
	binary.BigEndian.PutUint64(b[24:], h.NOpt)
	d.Write(b[:])
	for _, x := range h.Hashes {
		d.Write(x[:])
	}
	var k [32]byte
	copy(k[:], d.Sum(nil))
	return k
}

func encodeHeader(h *Header) []byte {
	b := make([]byte, 0, 44+32*len(h.Hashes))
	b = binary.BigEndian.AppendUint64(b, h.ID)
	b = binary.BigEndian.AppendUint64(b, h.Epoch)
	b = binary.BigEndian.AppendUint64(b, uint64(h.Step))
	b = binary.BigEndian.AppendUint64(b, h.NParams)
	b = binary.BigEndian.AppendUint64(b, h.NOpt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(h.Hashes)))
	for _, x := range h.Hashes {
		b = append(b, x[:]...)
	}
	return b
}

// DecodeHeader parses a header and checks it is self-consistent.
func DecodeHeader(b []byte) (*Header, error) {
	if len(b) < 44 {
		return nil, fmt.Errorf("statesync header: %d bytes, need at least 44", len(b))
	}
	h := &Header{
		ID:      binary.BigEndian.Uint64(b[0:]),
		Epoch:   binary.BigEndian.Uint64(b[8:]),
		Step:    int64(binary.BigEndian.Uint64(b[16:])),
		NParams: binary.BigEndian.Uint64(b[24:]),
		NOpt:    binary.BigEndian.Uint64(b[32:]),
	}
	n := binary.BigEndian.Uint32(b[40:])
	if h.Step < 0 {
		return nil, fmt.Errorf("statesync header: negative step %d", h.Step)
	}
	if h.NParams > maxFloats || h.NOpt > maxFloats || h.total() > maxFloats || n > maxChunks {
		return nil, fmt.Errorf("statesync header: sizes %d+%d floats in %d chunks exceed the limits", h.NParams, h.NOpt, n)
	}
	if want := (h.total() + ChunkFloats - 1) / ChunkFloats; uint64(n) != want {
		return nil, fmt.Errorf("statesync header: %d chunks for %d floats, want %d", n, h.total(), want)
	}
	if len(b) != 44+32*int(n) {
		return nil, fmt.Errorf("statesync header: %d bytes for %d chunks, want %d", len(b), n, 44+32*int(n))
	}
	for i := range int(n) {
		var x [32]byte
		copy(x[:], b[44+32*i:])
		h.Hashes = append(h.Hashes, x)
	}
	return h, nil
}

func chunkRange(total uint64, i int) (lo, hi int) {
	lo = i * ChunkFloats
	hi = min(lo+ChunkFloats, int(total))
	return lo, hi
}

func floatsToBytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// frame: [status u8][len u32][payload]
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

func readFrame(r io.Reader, limit int) ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("frame header: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if int64(n) > int64(limit) {
		return nil, fmt.Errorf("frame of %d bytes, limit %d", n, limit)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("frame body: %w", err)
	}
	if hdr[0] != statusOK {
		return nil, fmt.Errorf("donor: %s", string(b))
	}
	return b, nil
}

// Server answers snapshot requests.
type Server struct {
	h    host.Host
	take func(shard int) (*Snapshot, error)
	ttl  time.Duration
	// refuse counts refused requests (nil: silently).
	refuse *guard.Refusals

	mu     sync.Mutex
	next   uint64
	snaps  map[uint64]*frozen
	served atomic.Uint64
}

// BytesServed is the state this server has sent to joiners, in bytes.
func (s *Server) BytesServed() uint64 { return s.served.Load() }

type frozen struct {
	hdr   *Header
	data  []float32
	shard int
	until time.Time
}

// NewServer registers the protocol on h. take returns a copy of the named
// shard's current state, or an error if this node does not hold it.
func NewServer(h host.Host, take func(shard int) (*Snapshot, error)) *Server {
	s := &Server{h: h, take: take, ttl: 2 * time.Minute, snaps: map[uint64]*frozen{}, next: uint64(time.Now().UnixNano())}
	h.SetStreamHandler(Protocol, s.handle)
	return s
}

// Close removes the handler.
func (s *Server) Close() { s.h.RemoveStreamHandler(Protocol) }

func (s *Server) freeze(shard int) (*frozen, error) {
	snap, err := s.take(shard)
	if err != nil {
		return nil, err
	}
	data := snap.flat()
	hdr := &Header{Epoch: snap.Epoch, Step: snap.Step, NParams: uint64(len(snap.Params)), NOpt: uint64(len(snap.Opt))}
	for i := 0; i*ChunkFloats < len(data); i++ {
		lo, hi := chunkRange(uint64(len(data)), i)
		hdr.Hashes = append(hdr.Hashes, sha256.Sum256(floatsToBytes(data[lo:hi])))
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, f := range s.snaps {
		if now.After(f.until) {
			delete(s.snaps, id)
		}
	}
	// Donors of the same state give it the same ID so a joiner can mix them.
	k := hdr.key()
	hdr.ID = binary.BigEndian.Uint64(k[:8])
	f := &frozen{hdr: hdr, data: data, shard: shard, until: now.Add(s.ttl)}
	s.snaps[hdr.ID] = f
	return f, nil
}

const serveTimeout = 30 * time.Second

func (s *Server) handle(st network.Stream) {
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(serveTimeout))
	for {
		var req [17]byte
		if _, err := io.ReadFull(st, req[:]); err != nil {
			return // the client is done (EOF) or gone
		}
		op, shard := req[0], int(binary.BigEndian.Uint32(req[1:]))
		id, chunk := binary.BigEndian.Uint64(req[5:]), int(binary.BigEndian.Uint32(req[13:]))
		_ = st.SetDeadline(time.Now().Add(serveTimeout))
		switch op {
		case opHeader:
			f, err := s.freeze(shard)
			if err != nil {
				_ = writeFrame(st, statusError, []byte(err.Error()))
				return
			}
			if err := writeFrame(st, statusOK, encodeHeader(f.hdr)); err != nil {
				return
			}
		case opChunk:
			s.mu.Lock()
			f := s.snaps[id]
			s.mu.Unlock()
			if f == nil || f.shard != shard {
				_ = writeFrame(st, statusError, []byte("unknown snapshot"))
				return
			}
			if chunk < 0 || chunk >= len(f.hdr.Hashes) {
				_ = writeFrame(st, statusError, []byte(fmt.Sprintf("chunk %d out of range", chunk)))
				return
			}
			lo, hi := chunkRange(f.hdr.total(), chunk)
			if err := writeFrame(st, statusOK, floatsToBytes(f.data[lo:hi])); err != nil {
				return
			}
			s.served.Add(uint64(4 * (hi - lo)))
		default:
			_ = writeFrame(st, statusError, []byte(fmt.Sprintf("unknown op %d", op)))
			return
		}
	}
}

func request(op byte, shard int, id uint64, chunk int) []byte {
	var b [17]byte
	b[0] = op
	binary.BigEndian.PutUint32(b[1:], uint32(shard))
	binary.BigEndian.PutUint64(b[5:], id)
	binary.BigEndian.PutUint32(b[13:], uint32(chunk))
	return b[:]
}

// Progress is called as chunks arrive, one call at a time.
type Progress func(doneFloats, totalFloats int, donors int)

// Fetch downloads shard's state from donors. nParams and nOpt are the sizes
// the joiner expects (from the run's layout); a donor offering other sizes
// is ignored. Each donor gets timeout per request.
func Fetch(ctx context.Context, h host.Host, donors []peer.ID, shard, nParams, nOpt int, timeout time.Duration, progress Progress) (*Snapshot, error) {
	type offer struct {
		p   peer.ID
		st  network.Stream
		hdr *Header
	}
	var (
		mu     sync.Mutex
		offers []offer
		wg     sync.WaitGroup
		errs   []error
	)
	for _, p := range donors {
		if p == h.ID() {
			continue
		}
		wg.Add(1)
		go func(p peer.ID) {
			defer wg.Done()
			st, hdr, err := askHeader(ctx, h, p, shard, timeout)
			mu.Lock()
			defer mu.Unlock()
			if err == nil && (hdr.NParams != uint64(nParams) || hdr.NOpt != uint64(nOpt)) {
				st.Reset()
				err = fmt.Errorf("offers %d+%d floats, want %d+%d", hdr.NParams, hdr.NOpt, nParams, nOpt)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("donor %s: %w", p, err))
				return
			}
			offers = append(offers, offer{p, st, hdr})
		}(p)
	}
	wg.Wait()
	if len(offers) == 0 {
		return nil, errors.Join(append([]error{ErrNoDonor}, errs...)...)
	}
	// The newest state offered by the most donors.
	groups := map[[32]byte][]offer{}
	var best [32]byte
	for _, o := range offers {
		k := o.hdr.key()
		groups[k] = append(groups[k], o)
		b := groups[best]
		if len(b) == 0 || o.hdr.Epoch > b[0].hdr.Epoch || (o.hdr.Epoch == b[0].hdr.Epoch && len(groups[k]) > len(b)) {
			best = k
		}
	}
	for k, g := range groups {
		if k != best {
			for _, o := range g {
				o.st.Reset()
			}
		}
	}
	use := groups[best]
	hdr := use[0].hdr
	total := int(hdr.total())
	data := make([]float32, total)
	queue := make(chan int, len(hdr.Hashes))
	for i := range hdr.Hashes {
		queue <- i
	}
	var (
		done      int
		remaining = len(hdr.Hashes)
		alive     = len(use)
		finished  = make(chan struct{})
	)
	var progMu sync.Mutex // progress calls are serialised
	fetchCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, o := range use {
		wg.Add(1)
		go func(o offer) {
			defer wg.Done()
			defer o.st.Close()
			stop := func(err error) {
				o.st.Reset()
				mu.Lock()
				errs = append(errs, fmt.Errorf("donor %s: %w", o.p, err))
				alive--
				if alive == 0 && remaining > 0 {
					close(finished)
				}
				mu.Unlock()
			}
			for {
				var i int
				select {
				case <-fetchCtx.Done():
					return
				case <-finished:
					return
				case i = <-queue:
				}
				vals, err := askChunk(o.st, shard, o.hdr, i, timeout)
				if err != nil {
					queue <- i // another donor takes it
					stop(err)
					return
				}
				lo, _ := chunkRange(hdr.total(), i)
				copy(data[lo:], vals)
				mu.Lock()
				done += len(vals)
				remaining--
				d, n := done, alive
				if remaining == 0 {
					close(finished)
				}
				mu.Unlock()
				if progress != nil {
					progMu.Lock()
					progress(d, total, n)
					progMu.Unlock()
				}
			}
		}(o)
	}
	select {
	case <-finished:
	case <-ctx.Done():
	}
	cancel()
	wg.Wait()
	if remaining > 0 {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, errors.Join(append([]error{ErrNoDonor}, errs...)...)
	}
	return &Snapshot{Shard: shard, Epoch: hdr.Epoch, Step: hdr.Step,
		Params: data[:hdr.NParams:hdr.NParams], Opt: data[hdr.NParams:]}, nil
}

func askHeader(ctx context.Context, h host.Host, p peer.ID, shard int, timeout time.Duration) (network.Stream, *Header, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := h.NewStream(ctx, p, Protocol)
	if err != nil {
		return nil, nil, err
	}
	_ = st.SetDeadline(time.Now().Add(timeout))
	if _, err := st.Write(request(opHeader, shard, 0, 0)); err != nil {
		st.Reset()
		return nil, nil, err
	}
	b, err := readFrame(st, 44+32*maxChunks)
	if err != nil {
		st.Reset()
		return nil, nil, err
	}
	hdr, err := DecodeHeader(b)
	if err != nil {
		st.Reset()
		return nil, nil, err
	}
	return st, hdr, nil
}

func askChunk(st network.Stream, shard int, hdr *Header, i int, timeout time.Duration) ([]float32, error) {
	_ = st.SetDeadline(time.Now().Add(timeout))
	if _, err := st.Write(request(opChunk, shard, hdr.ID, i)); err != nil {
		return nil, err
	}
	lo, hi := chunkRange(hdr.total(), i)
	b, err := readFrame(st, 4*ChunkFloats)
	if err != nil {
		return nil, err
	}
	if len(b) != 4*(hi-lo) {
		return nil, fmt.Errorf("chunk %d: %d bytes, want %d", i, len(b), 4*(hi-lo))
	}
	if sha256.Sum256(b) != hdr.Hashes[i] {
		return nil, fmt.Errorf("chunk %d: %w", i, ErrBadChunk)
	}
	out := make([]float32, hi-lo)
	for j := range out {
		out[j] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*j:]))
		if math.IsNaN(float64(out[j])) || math.IsInf(float64(out[j]), 0) {
			return nil, fmt.Errorf("chunk %d: non-finite value", i)
		}
	}
	return out, nil
}

// SetRefusals makes s count and log the requests it refuses in r. Call it
// before serving.
func (s *Server) SetRefusals(r *guard.Refusals) { s.refuse = r }
