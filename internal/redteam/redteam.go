// Package redteam is a hostile peer for tests: a libp2p host that reaches a
// victim node of a run, completes (or forges, or skips) the run hello, and then
// speaks each training protocol with hand-written encoders that send the worst
// values the wire formats can carry — declared sizes of 0xFFFFFFFF, stalls,
// floods of streams, out-of-range weights, bandwidths and records, and
// thousands of fresh identities.
//
// Nothing here imports the protocols' own encoders: the attacker writes the
// bytes itself, as a stranger on the network would, so a decoder that trusts
// its own encoder's habits is caught. Every attack has a bounded count and
// takes a context; each returns a Result that says how the victim answered.
// The victim's side of the story (refusals counted, memory, training going
// on) is read by the test from the victim's status and /proc.
package redteam

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
)

// Protocol IDs the attacker speaks, spelled out here rather than imported so
// that a renamed protocol shows up as a failed attack, not a silent pass.
const (
	ProtoHello    protocol.ID = "/swarm/run-hello/1.1.0"
	ProtoPipeline protocol.ID = "/swarm/train/pipeline/1.2.0"
	ProtoProgress protocol.ID = "/swarm/train/progress/1.0.0"
	ProtoState    protocol.ID = "/swarm/train/state/1.0.0"
	ProtoMatch    protocol.ID = "/swarm/averaging/match/1.0.0"
	ProtoReduce   protocol.ID = "/swarm/averaging/reduce/1.0.0"
	ProtoGossip   protocol.ID = "/swarm/averaging/gossip/1.0.0"
)

// TrainingProtocols are the protocols a node serves only to admitted peers.
var TrainingProtocols = []protocol.ID{ProtoPipeline, ProtoProgress, ProtoState, ProtoMatch, ProtoReduce, ProtoGossip}

// Target is the victim: its peer ID and addresses (from its status or the
// DHT) and the run it is in.
type Target struct {
	ID    peer.ID
	Addrs []ma.Multiaddr
	Run   cid.Cid
}

// ParseTarget builds a Target from the strings `swarm status --json` prints.
func ParseTarget(id string, addrs []string, runID string) (Target, error) {
	var t Target
	var err error
	if t.ID, err = peer.Decode(id); err != nil {
		return t, fmt.Errorf("redteam: peer ID: %w", err)
	}
	if t.Run, err = cid.Decode(runID); err != nil {
		return t, fmt.Errorf("redteam: run ID: %w", err)
	}
	for _, a := range addrs {
		m, err := ma.NewMultiaddr(a)
		if err != nil {
			return t, fmt.Errorf("redteam: address %q: %w", a, err)
		}
		t.Addrs = append(t.Addrs, m)
	}
	return t, nil
}

// Result is what one attack saw of the victim.
type Result struct {
	Attack  string
	Sent    int // hostile messages (or streams, or identities) sent
	Refused int // answered by a reset, a close, an error frame or a refusal
	Served  int // answered as if the input were fine
	Errors  int // our own failures (dial, open) — a banned attacker sees these
	Took    time.Duration
	Notes   []string
}

func (r *Result) String() string {
	return fmt.Sprintf("%s: sent %d, refused %d, served %d, errors %d in %v %v",
		r.Attack, r.Sent, r.Refused, r.Served, r.Errors, r.Took.Round(time.Millisecond), r.Notes)
}

// tally counts outcomes from concurrent goroutines.
type tally struct {
	mu sync.Mutex
	r  Result
}

func (t *tally) add(sent, refused, served, errs int) {
	t.mu.Lock()
	t.r.Sent += sent
	t.r.Refused += refused
	t.r.Served += served
	t.r.Errors += errs
	t.mu.Unlock()
}

func (t *tally) note(format string, args ...any) {
	t.mu.Lock()
	if len(t.r.Notes) < 8 {
		t.r.Notes = append(t.r.Notes, fmt.Sprintf(format, args...))
	}
	t.mu.Unlock()
}

func (t *tally) result(name string, start time.Time) Result {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.r
	r.Attack, r.Took = name, time.Since(start)
	return r
}

// Attacker is one hostile identity connected to the victim.
type Attacker struct {
	H      host.Host
	Target Target
}

// New starts a host with a fresh identity. It listens on 127.0.0.1 when
// listen is set (an attacker that wants the victim to open streams to it);
// otherwise it only dials.
func New(t Target, listen bool) (*Attacker, error) {
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, err
	}
	opts := []libp2p.Option{libp2p.Identity(priv), libp2p.DisableRelay(), libp2p.NoListenAddrs}
	if listen {
		opts[2] = libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0")
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("redteam: host: %w", err)
	}
	return &Attacker{H: h, Target: t}, nil
}

// Close ends the attacker's host and its connections.
func (a *Attacker) Close() error { return a.H.Close() }

// Connect dials the victim.
func (a *Attacker) Connect(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return a.H.Connect(ctx, peer.AddrInfo{ID: a.Target.ID, Addrs: a.Target.Addrs})
}

// Hello is a run hello as the wire carries it: run ID, token, verdict and
// reason, the byte strings each behind a uvarint length.
type Hello struct {
	Run     []byte
	Token   []byte
	Verdict byte
	Reason  []byte
}

// Encode writes h without checking anything: a forged hello may carry any
// lengths.
func (h Hello) Encode() []byte {
	b := binary.AppendUvarint(nil, uint64(len(h.Run)))
	b = append(b, h.Run...)
	b = binary.AppendUvarint(b, uint64(len(h.Token)))
	b = append(b, h.Token...)
	b = append(b, h.Verdict)
	b = binary.AppendUvarint(b, uint64(len(h.Reason)))
	return append(b, h.Reason...)
}

// readHello reads a hello: the run ID it names, whether it refuses us and
// the reason it gave.
func readHello(r io.Reader) (run []byte, refused bool, reason string, err error) {
	br := bufio.NewReaderSize(r, 64)
	var fields [3][]byte
	for i, limit := range []uint64{128, 1024, 256} {
		if i == 2 {
			v, err := br.ReadByte()
			if err != nil {
				return nil, false, "", err
			}
			refused = v == 1
		}
		n, err := binary.ReadUvarint(br)
		if err != nil || n > limit {
			return nil, false, "", fmt.Errorf("redteam: hello field %d: length %d: %v", i, n, err)
		}
		fields[i] = make([]byte, n)
		if _, err := io.ReadFull(br, fields[i]); err != nil {
			return nil, false, "", err
		}
	}
	return fields[0], refused, string(fields[2]), nil
}

// ErrRefused is returned when the victim refused the attacker's hello.
var ErrRefused = errors.New("redteam: the victim refused the hello")

// SendHello runs the dialer's side of the hello: it sends raw, reads the
// victim's answer and, when the victim admitted us, ends with verdict (the
// dialer's verdict on the listener, which the victim waits for before it
// counts us; nil sends nothing more).
func (a *Attacker) SendHello(ctx context.Context, raw, verdict []byte) error {
	s, err := a.H.NewStream(ctx, a.Target.ID, ProtoHello)
	if err != nil {
		return err
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.Write(raw); err != nil {
		s.Reset()
		return err
	}
	run, refused, reason, err := readHello(s)
	if err != nil {
		s.Reset()
		return err
	}
	if refused {
		return fmt.Errorf("%w: %s", ErrRefused, reason)
	}
	if !bytes.Equal(run, a.Target.Run.Bytes()) {
		// A hello for another run is answered, not refused: the peer is
		// simply not admitted.
		return fmt.Errorf("%w: the victim is in run %x, not %s", ErrRefused, run, a.Target.Run)
	}
	if verdict != nil {
		if _, err := s.Write(verdict); err != nil {
			s.Reset()
			return err
		}
		// The victim admits us once it has read the verdict: wait until it
		// closes its side.
		_, _ = io.Copy(io.Discard, io.LimitReader(s, 4096))
	}
	return nil
}

// Join connects and passes the run hello as an honest peer of an open run
// would (no token).
func (a *Attacker) Join(ctx context.Context) error {
	// The victim runs its own hello with a peer it admits (and counts a
	// peer that does not answer it as malformed, and disconnects it): answer
	// as a peer of the run.
	a.H.SetStreamHandler(ProtoHello, func(s network.Stream) {
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(5 * time.Second))
		if _, _, _, err := readHello(s); err != nil {
			s.Reset()
			return
		}
		if _, err := s.Write(Hello{Run: a.Target.Run.Bytes()}.Encode()); err == nil {
			_, _, _, _ = readHello(s) // the victim's verdict on us
		}
	})
	if err := a.Connect(ctx); err != nil {
		return fmt.Errorf("redteam: connect: %w", err)
	}
	ours := Hello{Run: a.Target.Run.Bytes()}.Encode()
	if err := a.SendHello(ctx, ours, ours); err != nil {
		return fmt.Errorf("redteam: hello: %w", err)
	}
	return nil
}

// joined returns a fresh attacker that passed the hello.
func joined(ctx context.Context, t Target, listen bool) (*Attacker, error) {
	a, err := New(t, listen)
	if err != nil {
		return nil, err
	}
	if err := a.Join(ctx); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// exchange opens a stream on proto, writes msg, then reads until the victim
// closes or resets the stream or hold passes. It reports whether the victim
// answered with bytes (some protocols refuse with an error frame) and how
// the stream ended.
func (a *Attacker) exchange(ctx context.Context, proto protocol.ID, msg []byte, hold time.Duration) (answered int, ended error, err error) {
	s, err := a.H.NewStream(ctx, a.Target.ID, proto)
	if err != nil {
		return 0, nil, err
	}
	defer s.Reset()
	_ = s.SetDeadline(time.Now().Add(hold))
	if _, err := s.Write(msg); err != nil {
		return 0, err, nil
	}
	n, err := io.Copy(io.Discard, io.LimitReader(s, 64<<20))
	return int(n), err, nil
}

// timedOut reports whether err is a deadline of our own: the victim held
// the stream open for the whole hold.
func timedOut(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// parallel runs f(i) for i in [0, n) with at most conc at once.
func parallel(ctx context.Context, n, conc int, f func(i int)) {
	sem := make(chan struct{}, max(conc, 1))
	var wg sync.WaitGroup
	for i := 0; i < n && ctx.Err() == nil; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			f(i)
		}()
	}
	wg.Wait()
}
