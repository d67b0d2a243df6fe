// Package statesync lets a node that joins a shard download the shard's
// current parameters, optimizer state and step counter from peers that hold
// it. A donor freezes a snapshot (a copy) when asked, so it keeps training
// and averaging while it serves; the joiner asks every donor for its
// snapshot's table of chunk hashes, picks the snapshot offered by the most
// donors (the newest among equals), and pulls its chunks from all of them in
// parallel, checking each chunk against the table.
//
// A header's content hash (Header.Content: SHA-256 over its epoch, step,
// sizes and every chunk's hash) names the state itself, so donors that
// offer the same content hash offer the same bytes. A joiner that must not
// trust a single peer asks for a quorum (Want.Quorum): a snapshot only one
// donor offers is then refused, however new, and a lying donor is outvoted
// by two honest ones. A state a single donor offers can still be checked on
// held-out data (HeldOut). A donor whose chunk fails its hash or that
// stalls is reported (Want.Bad) so the caller can ban it.
package statesync

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/internal/guard"
)

// Protocol is the snapshot download protocol. A request is
// [op u8][shard u32][snapshot u64][chunk u32]; op 1 asks for the snapshot's
// header (a new snapshot if snapshot is 0 or unknown), op 2 for one chunk,
// op 3 for the header of the donor's newest checkpoint of the shard (a
// state it keeps on disk, whether it holds the shard now or not; its
// chunks are then asked with op 2).
const Protocol protocol.ID = "/swarm/train/state/1.0.0"

// ChunkFloats is the number of float32 values in one chunk (1 MiB).
const ChunkFloats = 1 << 18

// Limits on what a header may announce.
const (
	maxFloats = 1 << 31
	maxChunks = maxFloats / ChunkFloats
)

const (
	opHeader     = 1
	opChunk      = 2
	opCheckpoint = 3

	statusOK    = 0
	statusError = 1
)

// Errors.
var (
	ErrNoDonor  = errors.New("statesync: no donor could serve the shard")
	ErrBadChunk = errors.New("statesync: chunk does not match its hash")
	// ErrNoQuorum: donors answered, but no snapshot was offered by
	// Want.Quorum of them.
	ErrNoQuorum = errors.New("statesync: no snapshot offered by enough donors")
)

// Snapshot is a shard's full training state.
type Snapshot struct {
	Shard  int
	Epoch  uint64 // collaborative epoch the state belongs to
	Step   int64  // optimizer steps taken
	Params []float32
	Opt    []float32
	// Donors is how many donors offered this state (Fetch), From which;
	// Others are the donors that offered another state.
	Donors int
	From   []peer.ID
	Others []Offer
	// Content is the state's content hash (Header.Content), set by Fetch.
	Content [32]byte
}

// Offer is a donor's offer of a state of epoch Epoch.
type Offer struct {
	Peer  peer.ID
	Epoch uint64
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

// Content is the header's content hash: SHA-256 over the epoch, the step,
// the sizes and every chunk's hash. Donors offering the same content hash
// offer the same state.
func (h *Header) Content() [32]byte { return h.key() }

// ContentOf is the content hash a donor's header would carry for snap: a
// node compares its own state with the ones peers offer.
func ContentOf(snap *Snapshot) [32]byte { return headerOf(snap).key() }

// headerOf builds snap's header (without its ID).
func headerOf(snap *Snapshot) *Header {
	data := snap.flat()
	hdr := &Header{Epoch: snap.Epoch, Step: snap.Step, NParams: uint64(len(snap.Params)), NOpt: uint64(len(snap.Opt))}
	for i := 0; i*ChunkFloats < len(data); i++ {
		lo, hi := chunkRange(uint64(len(data)), i)
		hdr.Hashes = append(hdr.Hashes, sha256.Sum256(floatsToBytes(data[lo:hi])))
	}
	return hdr
}

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
	b, err := guard.ReadFull(r, int(n))
	if err != nil {
		return nil, fmt.Errorf("frame body: %w", err)
	}
	if hdr[0] != statusOK {
		return nil, fmt.Errorf("donor: %.200q", b)
	}
	return b, nil
}

// Server limits.
const (
	// MinFreezeGap: a shard's state is frozen at most once per epoch or per
	// MinFreezeGap, whichever is rarer, however many peers ask; concurrent
	// requesters share the one frozen copy. It is short because a joiner
	// behind the swarm needs a fresh copy: at 5 s a demo joiner loaded the
	// same stale epoch about 50 times and the swarm stalled ~15 s. Four
	// freezes a second, each only of a newer epoch and at most MaxFrozen
	// alive, cost a donor little.
	MinFreezeGap = 250 * time.Millisecond
	// MaxFrozen frozen copies are alive at most; an older one is released
	// once a newer one exists and nobody downloads it.
	MaxFrozen = 2
	// StreamsPerPeer downloads of one peer are served at once (a joiner
	// uses one stream per donor), maxStreams of all peers.
	StreamsPerPeer = 2
	maxStreams     = 64
)

// Reasons for refused requests (guard).
const (
	protoState = "statesync"
	whyFlood   = "flood"
	whyOp      = "op"
	whyRange   = "range"
)

// ErrBusy answers a request that would need a new frozen copy while
// MaxFrozen are in use.
var ErrBusy = errors.New("statesync: every frozen copy is in use; try later")

// Server answers snapshot requests.
type Server struct {
	h    host.Host
	take func(shard int) (*Snapshot, error)
	ttl  time.Duration
	gap  time.Duration
	clk  clock.Clock
	// refuse counts refused requests (nil: silently).
	refuse *guard.Refusals
	// epoch returns the epoch of the state take would copy now, and
	// whether this node holds shard (nil: freezes are bounded by gap only).
	epoch func(shard int) (uint64, bool)
	// ckpt returns the node's newest checkpoint of a shard (nil: none
	// served; op 3 is refused).
	ckpt func(shard int) (*Snapshot, error)

	mu       sync.Mutex
	snaps    map[uint64]*frozen
	latest   map[int]*frozen       // per shard, the newest copy
	freezing map[int]chan struct{} // per shard, closed when a freeze in progress ends
	slots    *guard.Slots          // downloads being served, per peer and in all
	served   atomic.Uint64
	corrupt  atomic.Bool // fault injection: chunks that do not match the header
}

// CorruptChunks makes s serve chunks that do not match their header: a
// fault injection for the process tests of donor bans. Never call it
// otherwise.
func (s *Server) CorruptChunks() { s.corrupt.Store(true) }

// BytesServed is the state this server has sent to joiners, in bytes.
func (s *Server) BytesServed() uint64 { return s.served.Load() }

type frozen struct {
	hdr   *Header
	enc   []byte // hdr's wire form
	data  []float32
	shard int
	key   int       // in latest and freezing: shard, or -1-shard for a checkpoint
	at    time.Time // frozen then
	users int       // streams downloading it
}

// NewServer registers the protocol on h. take returns a copy of the named
// shard's current state, or an error if this node does not hold it.
func NewServer(h host.Host, take func(shard int) (*Snapshot, error)) *Server {
	s := &Server{h: h, take: take, ttl: 2 * time.Minute, gap: MinFreezeGap, clk: clock.Real,
		snaps: map[uint64]*frozen{}, latest: map[int]*frozen{}, freezing: map[int]chan struct{}{},
		slots: guard.NewSlots(StreamsPerPeer, maxStreams)}
	h.SetStreamHandler(Protocol, s.handle)
	return s
}

// SetClock makes s time its frozen copies (the freeze gap, their TTL) on c
// (nil: the wall clock). Call it before serving.
func (s *Server) SetClock(c clock.Clock) { s.clk = clock.Or(c) }

// SetCheckpoints makes s serve, on op 3, the state take returns for a
// shard: the node's newest checkpoint of it. Call it before serving.
func (s *Server) SetCheckpoints(take func(shard int) (*Snapshot, error)) { s.ckpt = take }

// SetEpoch tells s the epoch of the state take would copy (and whether this
// node holds the shard): a copy of the current epoch is never frozen again.
// Call it before serving.
func (s *Server) SetEpoch(f func(shard int) (uint64, bool)) { s.epoch = f }

// Close removes the handler.
func (s *Server) Close() { s.h.RemoveStreamHandler(Protocol) }

// snapshot returns the frozen copy of shard to serve, freezing one if the
// newest is of an older epoch and at least gap old (or there is none). Its
// users count includes the caller's; release it with s.drop.
func (s *Server) snapshot(shard int, ckpt bool) (*frozen, error) {
	key := shard // the copies of live states and of checkpoints apart
	if ckpt {
		key = -1 - shard
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if ch := s.freezing[key]; ch != nil {
			s.mu.Unlock()
			<-ch
			s.mu.Lock()
			continue
		}
		s.releaseLocked()
		cur := s.latest[key]
		if cur != nil && (!s.staleLocked(cur, ckpt) || s.frozenLocked(ckpt) >= MaxFrozen) {
			cur.users++
			return cur, nil
		}
		if s.frozenLocked(ckpt) >= MaxFrozen {
			return nil, ErrBusy
		}
		break
	}
	done := make(chan struct{})
	s.freezing[key] = done
	s.mu.Unlock()
	f, err := s.freeze(shard, ckpt)
	s.mu.Lock()
	delete(s.freezing, key)
	close(done)
	if err != nil {
		return nil, err
	}
	f.key = key
	if old := s.snaps[f.hdr.ID]; old != nil {
		f = old // the same state again: keep the copy others download
		f.at = s.clk.Now()
	}
	s.snaps[f.hdr.ID] = f
	s.latest[key] = f
	f.users++
	s.releaseLocked()
	return f, nil
}

// staleLocked reports whether a newer copy than f may be frozen now.
func (s *Server) staleLocked(f *frozen, ckpt bool) bool {
	if s.clk.Now().Sub(f.at) < s.gap {
		return false
	}
	if s.epoch != nil && !ckpt {
		e, ok := s.epoch(f.shard)
		return ok && e > f.hdr.Epoch
	}
	return true
}

// frozenLocked counts the frozen copies of live states (ckpt false) or of
// checkpoints: each kind has MaxFrozen, so peers reading checkpoints never
// keep a joiner on a stale copy of the live state.
func (s *Server) frozenLocked(ckpt bool) int {
	n := 0
	for _, f := range s.snaps {
		if (f.key < 0) == ckpt {
			n++
		}
	}
	return n
}

// releaseLocked frees copies nobody downloads that are superseded by a
// newer one or older than the TTL.
func (s *Server) releaseLocked() {
	now := s.clk.Now()
	for id, f := range s.snaps {
		if f.users > 0 {
			continue
		}
		if s.latest[f.key] != f || now.Sub(f.at) > s.ttl {
			delete(s.snaps, id)
			for k, l := range s.latest {
				if l == f {
					delete(s.latest, k)
				}
			}
		}
	}
}

// drop ends a stream's use of f (nil: none).
func (s *Server) drop(f *frozen) {
	if f == nil {
		return
	}
	s.mu.Lock()
	f.users--
	s.releaseLocked()
	s.mu.Unlock()
}

// freeze copies shard's state through take and hashes its chunks.
func (s *Server) freeze(shard int, ckpt bool) (*frozen, error) {
	take := s.take
	if ckpt {
		if take = s.ckpt; take == nil {
			return nil, errors.New("this node serves no checkpoints")
		}
	}
	snap, err := take(shard)
	if err != nil {
		return nil, err
	}
	data := snap.flat()
	hdr := headerOf(snap)
	// Donors of the same state give it the same ID so a joiner can mix
	// them; a checkpoint's copy has another ID than the live state's, so
	// the two are never one copy (a read of the checkpoint must not make
	// a stale copy of the live state look fresh).
	k := hdr.key()
	hdr.ID = binary.BigEndian.Uint64(k[:8])
	if ckpt {
		hdr.ID = binary.BigEndian.Uint64(k[8:16])
	}
	return &frozen{hdr: hdr, enc: encodeHeader(hdr), data: data, shard: shard, at: s.clk.Now()}, nil
}

const serveTimeout = 30 * time.Second

func (s *Server) handle(st network.Stream) {
	defer st.Close()
	from := st.Conn().RemotePeer()
	if s.refuse.Banned(from) {
		st.Reset()
		return
	}
	_ = st.SetDeadline(clock.WallDeadline(serveTimeout))
	if !s.slots.Acquire(from) {
		s.refuse.Refuse(from, protoState, whyFlood, fmt.Errorf("more than %d downloads at once", StreamsPerPeer))
		_ = writeFrame(st, statusError, []byte("too many downloads at once"))
		return
	}
	defer s.slots.Release(from)
	var held *frozen // the copy this stream downloads
	defer func() { s.drop(held) }()
	hold := func(f *frozen) {
		s.drop(held)
		held = f
	}
	for {
		var req [17]byte
		if _, err := io.ReadFull(st, req[:]); err != nil {
			return // the client is done (EOF) or gone
		}
		op, shard := req[0], int(binary.BigEndian.Uint32(req[1:]))
		id, chunk := binary.BigEndian.Uint64(req[5:]), int(binary.BigEndian.Uint32(req[13:]))
		_ = st.SetDeadline(clock.WallDeadline(serveTimeout))
		switch op {
		case opHeader, opCheckpoint:
			f, err := s.snapshot(shard, op == opCheckpoint)
			if err != nil {
				_ = writeFrame(st, statusError, []byte(err.Error()))
				return
			}
			hold(f)
			if err := writeFrame(st, statusOK, f.enc); err != nil {
				return
			}
		case opChunk:
			s.mu.Lock()
			f := s.snaps[id]
			if f != nil && f != held {
				f.users++
			}
			s.mu.Unlock()
			if f == nil || f.shard != shard || chunk < 0 || chunk >= len(f.hdr.Hashes) {
				if f != nil && f != held {
					s.drop(f)
				}
				err := fmt.Errorf("snapshot %x of shard %d has no chunk %d", id, shard, chunk)
				s.refuse.Refuse(from, protoState, whyRange, err)
				_ = writeFrame(st, statusError, []byte(err.Error()))
				return
			}
			if f != held {
				hold(f)
			}
			lo, hi := chunkRange(f.hdr.total(), chunk)
			b := floatsToBytes(f.data[lo:hi])
			if s.corrupt.Load() && len(b) > 0 {
				b[0] ^= 0x40
			}
			if err := writeFrame(st, statusOK, b); err != nil {
				return
			}
			s.served.Add(uint64(4 * (hi - lo)))
		default:
			err := fmt.Errorf("unknown op %d", op)
			s.refuse.Refuse(from, protoState, whyOp, err)
			_ = writeFrame(st, statusError, []byte(err.Error()))
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

// Want is what a joiner expects of a shard's state: the sizes from the
// run's layout, and the latest epoch the run allows. A donor's header is
// checked against it before anything it announces is allocated.
type Want struct {
	Shard    int
	Params   int
	Opt      int
	MaxEpoch uint64
	// Quorum donors must offer the same snapshot (content hash) for it to
	// be fetched; 0 or 1: one donor is enough.
	Quorum int
	// Bad, when set, is told of a donor whose chunk failed its hash, was
	// malformed or not finite, or who stalled past the request timeout:
	// evidence to ban it for. A donor that went away is not reported.
	Bad func(p peer.ID, err error)
	// Checkpoint asks for the donors' checkpoints of the shard (op 3)
	// instead of the states they hold now.
	Checkpoint bool
	// Content, when set, is the only state accepted (its content hash):
	// a donor offering another is passed over.
	Content *[32]byte
}

// chunks is the number of chunks of the wanted state.
func (w Want) chunks() int { return (w.Params + w.Opt + ChunkFloats - 1) / ChunkFloats }

// check refuses a header that announces another state than w.
func (w Want) check(h *Header) error {
	if h.NParams != uint64(w.Params) || h.NOpt != uint64(w.Opt) {
		return fmt.Errorf("offers %d+%d floats, want %d+%d", h.NParams, h.NOpt, w.Params, w.Opt)
	}
	if h.Epoch > w.MaxEpoch {
		return fmt.Errorf("offers epoch %d, the run has %d", h.Epoch, w.MaxEpoch)
	}
	if w.Content != nil && h.key() != *w.Content {
		return fmt.Errorf("offers another state than the one wanted (epoch %d)", h.Epoch)
	}
	return nil
}

// Fetch downloads the state want describes from donors; a donor offering
// another is ignored. Each donor gets timeout per request.
func Fetch(ctx context.Context, h host.Host, donors []peer.ID, want Want, timeout time.Duration, progress Progress) (*Snapshot, error) {
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
	shard := want.Shard
	for _, p := range donors {
		if p == h.ID() {
			continue
		}
		wg.Add(1)
		go func(p peer.ID) {
			defer wg.Done()
			st, hdr, err := askHeader(ctx, h, p, want, timeout)
			mu.Lock()
			defer mu.Unlock()
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
	// The state offered by the most donors, the newest among equals; with
	// a quorum, none that fewer donors offer.
	groups := map[[32]byte][]offer{}
	for _, o := range offers {
		k := o.hdr.key()
		groups[k] = append(groups[k], o)
	}
	var best [32]byte
	found := false
	for k, g := range groups {
		b := groups[best]
		if len(g) < max(want.Quorum, 1) {
			continue
		}
		if !found || len(g) > len(b) || (len(g) == len(b) && (g[0].hdr.Epoch > b[0].hdr.Epoch ||
			g[0].hdr.Epoch == b[0].hdr.Epoch && string(k[:]) < string(best[:]))) {
			best, found = k, true
		}
	}
	var others []Offer
	for k, g := range groups {
		if !found || k != best {
			for _, o := range g {
				o.st.Reset()
				others = append(others, Offer{Peer: o.p, Epoch: o.hdr.Epoch})
			}
		}
	}
	if !found {
		return nil, fmt.Errorf("%w: %d offers in %d distinct states, want %d alike", ErrNoQuorum, len(offers), len(groups), want.Quorum)
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
					if want.Bad != nil && fetchCtx.Err() == nil && (lied(err) || stalled(err)) {
						want.Bad(o.p, err)
					}
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
	from := make([]peer.ID, len(use))
	for i, o := range use {
		from[i] = o.p
	}
	return &Snapshot{Shard: shard, Epoch: hdr.Epoch, Step: hdr.Step,
		Params: data[:hdr.NParams:hdr.NParams], Opt: data[hdr.NParams:], Donors: len(use), From: from, Others: others,
		Content: best}, nil
}

// errLie marks a chunk that cannot be the state its donor's header
// announced.
var errLie = errors.New("statesync: donor's chunk contradicts its header")

func lied(err error) bool { return errors.Is(err, ErrBadChunk) || errors.Is(err, errLie) }

// Stalled reports whether err (as Want.Bad gets it) is a request that ran
// past its deadline rather than a chunk that contradicts its header.
func Stalled(err error) bool { return stalled(err) }

// stalled reports whether err is a request that ran past its deadline.
func stalled(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

func askHeader(ctx context.Context, h host.Host, p peer.ID, want Want, timeout time.Duration) (network.Stream, *Header, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := h.NewStream(ctx, p, Protocol)
	if err != nil {
		return nil, nil, err
	}
	_ = st.SetDeadline(clock.WallDeadline(timeout))
	op := byte(opHeader)
	if want.Checkpoint {
		op = opCheckpoint
	}
	if _, err := st.Write(request(op, want.Shard, 0, 0)); err != nil {
		st.Reset()
		return nil, nil, err
	}
	// The layout gives the header's size: nothing larger is read.
	b, err := readFrame(st, 44+32*want.chunks())
	if err == nil {
		var hdr *Header
		if hdr, err = DecodeHeader(b); err == nil {
			if err = want.check(hdr); err == nil {
				return st, hdr, nil
			}
		}
	}
	st.Reset()
	return nil, nil, err
}

func askChunk(st network.Stream, shard int, hdr *Header, i int, timeout time.Duration) ([]float32, error) {
	_ = st.SetDeadline(clock.WallDeadline(timeout))
	if _, err := st.Write(request(opChunk, shard, hdr.ID, i)); err != nil {
		return nil, err
	}
	lo, hi := chunkRange(hdr.total(), i)
	b, err := readFrame(st, 4*ChunkFloats)
	if err != nil {
		return nil, err
	}
	if len(b) != 4*(hi-lo) {
		return nil, fmt.Errorf("chunk %d: %d bytes, want %d: %w", i, len(b), 4*(hi-lo), errLie)
	}
	if sha256.Sum256(b) != hdr.Hashes[i] {
		return nil, fmt.Errorf("chunk %d: %w", i, ErrBadChunk)
	}
	out := make([]float32, hi-lo)
	for j := range out {
		out[j] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*j:]))
		if math.IsNaN(float64(out[j])) || math.IsInf(float64(out[j]), 0) {
			return nil, fmt.Errorf("chunk %d: non-finite value: %w", i, errLie)
		}
	}
	return out, nil
}

// SetRefusals makes s count and log the requests it refuses in r. Call it
// before serving.
func (s *Server) SetRefusals(r *guard.Refusals) { s.refuse = r }

// HeaderOffer is a donor's offer as its header tells it: the epoch and the
// content hash of the state it would send.
type HeaderOffer struct {
	Peer    peer.ID
	Epoch   uint64
	Step    int64
	Content [32]byte
}

// Offers asks every donor (in parallel, timeout each) for the header of
// the state want describes and returns the offers that fit it, without
// downloading a chunk: a node compares the checkpoints peers keep of a
// shard before it chooses one. Donors that offer nothing are left out.
func Offers(ctx context.Context, h host.Host, donors []peer.ID, want Want, timeout time.Duration) []HeaderOffer {
	var (
		mu  sync.Mutex
		out []HeaderOffer
		wg  sync.WaitGroup
	)
	for _, p := range donors {
		if p == h.ID() {
			continue
		}
		wg.Add(1)
		go func(p peer.ID) {
			defer wg.Done()
			st, hdr, err := askHeader(ctx, h, p, want, timeout)
			if err != nil {
				return
			}
			st.Close()
			mu.Lock()
			out = append(out, HeaderOffer{Peer: p, Epoch: hdr.Epoch, Step: hdr.Step, Content: hdr.key()})
			mu.Unlock()
		}(p)
	}
	wg.Wait()
	return out
}
