// Package checkpoint saves and restores training state: the parameters and
// optimizer state of one or more shards, the step, and the data position. A
// file is written atomically (temporary file, fsync, rename, fsync of the
// folder) and carries a SHA-256 of its content that loading verifies; a
// folder keeps the newest K files and loading falls back past damaged ones.
// The package also exports a whole model to safetensors.
package checkpoint

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/swarm-train/swarm/swarm/data"
)

// File layout, all integers little-endian:
//
//	magic   [8]byte  "SWCKPT\r\n"
//	version uint32   FormatVersion
//	metaLen uint32   length of the JSON metadata
//	bodyLen uint64   length of everything after the header
//	sum     [32]byte SHA-256 of everything after the header
//	meta    JSON     State without the buffers, with their lengths
//	buffers float32  for each shard in order: params, then optimizer state
const (
	magic         = "SWCKPT\r\n"
	FormatVersion = 1
	headerSize    = 8 + 4 + 4 + 8 + sha256.Size
	maxMeta       = 1 << 20
)

// Errors returned by Decode; every decoding error wraps ErrCorrupt.
var (
	ErrCorrupt = errors.New("checkpoint: corrupt or truncated")
	// ErrNone: the folder holds no readable checkpoint.
	ErrNone = errors.New("checkpoint: none found")
)

// State is what a checkpoint holds.
type State struct {
	RunID    string        `json:"run_id"`
	Step     int64         `json:"step"`    // optimizer steps taken
	Samples  int64         `json:"samples"` // training samples consumed
	Position data.Position `json:"position"`
	Shards   []ShardState  `json:"shards"`
	// Epoch is the swarm's collaborative epoch the state belongs to, and
	// Layout the hash of its shard's layout (LayoutHash): set in the
	// checkpoints of a swarm node (one shard each), empty in swarm train's.
	Epoch  uint64 `json:"epoch,omitempty"`
	Layout string `json:"layout,omitempty"`
}

// ShardState is one shard's flat buffers (layout: run.Manifest.Layout).
type ShardState struct {
	Index    int       `json:"index"`
	Params   []float32 `json:"-"`
	OptState []float32 `json:"-"`
}

type shardMeta struct {
	Index    int `json:"index"`
	Params   int `json:"params"`
	OptState int `json:"opt_state"`
}

type meta struct {
	RunID    string        `json:"run_id"`
	Step     int64         `json:"step"`
	Samples  int64         `json:"samples"`
	Position data.Position `json:"position"`
	Shards   []shardMeta   `json:"shards"`
	Epoch    uint64        `json:"epoch,omitempty"`
	Layout   string        `json:"layout,omitempty"`
}

// Encode writes s in the checkpoint format.
func Encode(w io.Writer, s *State) error {
	md := meta{RunID: s.RunID, Step: s.Step, Samples: s.Samples, Position: s.Position, Epoch: s.Epoch, Layout: s.Layout}
	bodyLen := uint64(0)
	for _, sh := range s.Shards {
		md.Shards = append(md.Shards, shardMeta{Index: sh.Index, Params: len(sh.Params), OptState: len(sh.OptState)})
		bodyLen += 4 * uint64(len(sh.Params)+len(sh.OptState))
	}
	mj, err := json.Marshal(md)
	if err != nil {
		return err
	}
	bodyLen += uint64(len(mj))
	h := sha256.New()
	h.Write(mj)
	writeFloats(h, s)
	var hdr [headerSize]byte
	copy(hdr[:8], magic)
	binary.LittleEndian.PutUint32(hdr[8:], FormatVersion)
	binary.LittleEndian.PutUint32(hdr[12:], uint32(len(mj)))
	binary.LittleEndian.PutUint64(hdr[16:], bodyLen)
	h.Sum(hdr[24:24])
	bw := bufio.NewWriterSize(w, 1<<16)
	bw.Write(hdr[:])
	bw.Write(mj)
	writeFloats(bw, s)
	return bw.Flush()
}

func writeFloats(w io.Writer, s *State) {
	var buf [4096]byte
	put := func(xs []float32) {
		for len(xs) > 0 {
			n := min(len(xs), len(buf)/4)
			for i, x := range xs[:n] {
				binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(x))
			}
			w.Write(buf[:4*n])
			xs = xs[n:]
		}
	}
	for _, sh := range s.Shards {
		put(sh.Params)
		put(sh.OptState)
	}
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// Decode parses and verifies a checkpoint.
func Decode(b []byte) (*State, error) {
	if len(b) < headerSize {
		return nil, corrupt("%d bytes, shorter than the %d-byte header", len(b), headerSize)
	}
	if string(b[:8]) != magic {
		return nil, corrupt("not a checkpoint (bad magic %q)", b[:8])
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != FormatVersion {
		return nil, corrupt("format version %d, want %d", v, FormatVersion)
	}
	metaLen := binary.LittleEndian.Uint32(b[12:])
	bodyLen := binary.LittleEndian.Uint64(b[16:])
	body := b[headerSize:]
	if uint64(len(body)) != bodyLen {
		return nil, corrupt("body is %d bytes, header says %d (truncated?)", len(body), bodyLen)
	}
	if sum := sha256.Sum256(body); !bytes.Equal(sum[:], b[24:headerSize]) {
		return nil, corrupt("SHA-256 mismatch")
	}
	if metaLen > maxMeta || uint64(metaLen) > bodyLen {
		return nil, corrupt("metadata length %d out of range", metaLen)
	}
	var md meta
	dec := json.NewDecoder(bytes.NewReader(body[:metaLen]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&md); err != nil {
		return nil, corrupt("metadata: %v", err)
	}
	rest := body[metaLen:]
	floats := func(n int) ([]float32, error) {
		if n < 0 || n > len(rest)/4 {
			return nil, corrupt("buffer of %d floats but %d bytes left", n, len(rest))
		}
		xs := make([]float32, n)
		for i := range xs {
			xs[i] = math.Float32frombits(binary.LittleEndian.Uint32(rest[4*i:]))
		}
		rest = rest[4*n:]
		return xs, nil
	}
	s := &State{RunID: md.RunID, Step: md.Step, Samples: md.Samples, Position: md.Position, Epoch: md.Epoch, Layout: md.Layout}
	if md.Step < 0 || md.Samples < 0 || md.Position.Epoch < 0 || md.Position.Offset < 0 {
		return nil, corrupt("negative step, samples or position")
	}
	for i, sm := range md.Shards {
		p, err := floats(sm.Params)
		if err != nil {
			return nil, fmt.Errorf("shard %d params: %w", i, err)
		}
		o, err := floats(sm.OptState)
		if err != nil {
			return nil, fmt.Errorf("shard %d optimizer state: %w", i, err)
		}
		s.Shards = append(s.Shards, ShardState{Index: sm.Index, Params: p, OptState: o})
	}
	if len(rest) != 0 {
		return nil, corrupt("%d bytes after the last buffer", len(rest))
	}
	return s, nil
}

// DecodeMeta parses a checkpoint's header and metadata without reading or
// verifying its buffers (a quick look at the run, step and epoch; Decode
// verifies the whole file). The State's buffers are nil.
func DecodeMeta(r io.Reader) (*State, error) {
	var hdr [headerSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, corrupt("header: %v", err)
	}
	if string(hdr[:8]) != magic {
		return nil, corrupt("not a checkpoint (bad magic %q)", hdr[:8])
	}
	if v := binary.LittleEndian.Uint32(hdr[8:]); v != FormatVersion {
		return nil, corrupt("format version %d, want %d", v, FormatVersion)
	}
	metaLen := binary.LittleEndian.Uint32(hdr[12:])
	if metaLen > maxMeta {
		return nil, corrupt("metadata length %d out of range", metaLen)
	}
	mj := make([]byte, metaLen)
	if _, err := io.ReadFull(r, mj); err != nil {
		return nil, corrupt("metadata: %v", err)
	}
	var md meta
	dec := json.NewDecoder(bytes.NewReader(mj))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&md); err != nil {
		return nil, corrupt("metadata: %v", err)
	}
	s := &State{RunID: md.RunID, Step: md.Step, Samples: md.Samples, Position: md.Position, Epoch: md.Epoch, Layout: md.Layout}
	for _, sm := range md.Shards {
		s.Shards = append(s.Shards, ShardState{Index: sm.Index})
	}
	return s, nil
}
