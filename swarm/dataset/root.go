// Package dataset makes a run's data set content-addressed, so that nodes
// can fetch it from each other and check every byte they get.
//
// The data files are cut into chunks of Root.ChunkSize bytes (the last
// chunk of a file may be shorter), each addressed by its CID (CIDv1, raw
// codec, sha2-256 multihash, as go-cid makes them). A root object lists the
// files in order with their names, sizes and chunk CIDs; its canonical
// encoding hashed the same way is the root CID, which a run's manifest pins
// (dataset.root). Knowing the root CID, a node can check a root object, and
// with it every chunk, whoever sent them.
//
// A Store keeps one root's data on a node: files found locally and checked
// against the root (a --data-dir, the Go module cache), or chunks fetched
// into a cache in the node's home, assembled into files once complete. The
// data protocol (Protocol) serves a store's chunks to run peers; Fetch gets
// the missing ones from several donors at once, banning a donor whose chunk
// fails its CID.
package dataset

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// Chunk sizes and the limits a root object must respect; DecodeRoot checks
// them before anything a root announces is allocated.
const (
	// DefaultChunkSize is the chunk size of the roots this program builds.
	DefaultChunkSize = 256 << 10
	// MinChunkSize and MaxChunkSize bound a root's chunk size.
	MinChunkSize = 4 << 10
	MaxChunkSize = 1 << 20
	// MaxRootBytes bounds a root object's encoding.
	MaxRootBytes = 4 << 20
	// MaxFiles bounds the files of a root.
	MaxFiles = 1024
	// MaxChunks bounds the chunks of a root (all files together): 64 GiB
	// of data at the largest chunk size.
	MaxChunks = 1 << 16
	// MaxNameBytes bounds a file name.
	MaxNameBytes = 255
	// rootVersion is the root object format this code reads and writes.
	rootVersion = 1
)

// ErrBadRoot is a root object that does not decode, breaks a limit, or
// does not hash to the CID it was asked for.
var ErrBadRoot = errors.New("dataset: bad root object")

// Root is a data set's table of contents.
type Root struct {
	// ChunkSize is the size of every chunk but the last of each file.
	ChunkSize int
	Files     []File

	chunks []Chunk // every file's chunks in order (derived)
}

// File is one data file: its base name, size in bytes and chunk CIDs.
type File struct {
	Name   string
	Size   int64
	Chunks []cid.Cid
}

// Chunk is one chunk of a root, located in its file.
type Chunk struct {
	Index  int      // in the root's flat list of chunks
	File   int      // index of its file in Root.Files
	Offset int64    // byte offset in the file
	Len    int      // bytes
	Sum    [32]byte // SHA-256 of its bytes: the digest of its CID
}

// ChunkCID is the CID of a chunk's bytes.
func ChunkCID(b []byte) cid.Cid { return sumCID(sha256.Sum256(b)) }

func sumCID(sum [32]byte) cid.Cid {
	h, err := mh.Encode(sum[:], mh.SHA2_256)
	if err != nil {
		panic(err) // a 32-byte sha2-256 digest always encodes
	}
	return cid.NewCidV1(cid.Raw, h)
}

// Digest returns the SHA-256 digest a CID addresses: a CIDv1 with the raw
// codec and a sha2-256 multihash, as every CID of this package is.
func Digest(c cid.Cid) ([32]byte, error) {
	var d [32]byte
	if !c.Defined() {
		return d, errors.New("undefined CID")
	}
	if c.Version() != 1 || c.Type() != cid.Raw {
		return d, fmt.Errorf("CID %s: want version 1 with the raw codec", c)
	}
	dec, err := mh.Decode(c.Hash())
	if err != nil {
		return d, fmt.Errorf("CID %s: %w", c, err)
	}
	if dec.Code != mh.SHA2_256 || len(dec.Digest) != len(d) {
		return d, fmt.Errorf("CID %s: want a sha2-256 multihash", c)
	}
	copy(d[:], dec.Digest)
	return d, nil
}

// ParseCID parses a CID string of this package's kind (see Digest).
func ParseCID(s string) (cid.Cid, error) {
	c, err := cid.Decode(s)
	if err != nil {
		return cid.Undef, fmt.Errorf("CID %q: %w", s, err)
	}
	if _, err := Digest(c); err != nil {
		return cid.Undef, err
	}
	return c, nil
}

// CheckName refuses a file name that is not a plain base name: empty,
// longer than MaxNameBytes, not UTF-8, with a path separator or a control
// character, "." or "..", or starting with a dot (names this package keeps
// for its own files in a cache folder).
func CheckName(name string) error {
	switch {
	case name == "":
		return errors.New("empty file name")
	case len(name) > MaxNameBytes:
		return fmt.Errorf("file name of %d bytes, limit %d", len(name), MaxNameBytes)
	case !utf8.ValidString(name):
		return fmt.Errorf("file name %q is not UTF-8", name)
	case strings.HasPrefix(name, "."):
		return fmt.Errorf("file name %q starts with a dot", name)
	case strings.ContainsAny(name, `/\`):
		return fmt.Errorf("file name %q holds a path separator", name)
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return fmt.Errorf("file name %q holds a control character", name)
		}
	}
	return nil
}

// chunkCount is the number of chunks of a file of size bytes.
func chunkCount(size int64, chunkSize int) int64 {
	return (size + int64(chunkSize) - 1) / int64(chunkSize)
}

// check validates r and derives its flat chunk list.
func (r *Root) check() error {
	if r.ChunkSize < MinChunkSize || r.ChunkSize > MaxChunkSize {
		return fmt.Errorf("chunk_size %d: want %d to %d", r.ChunkSize, MinChunkSize, MaxChunkSize)
	}
	if len(r.Files) == 0 || len(r.Files) > MaxFiles {
		return fmt.Errorf("%d files: want 1 to %d", len(r.Files), MaxFiles)
	}
	seen := make(map[string]bool, len(r.Files))
	total := 0
	for i, f := range r.Files {
		if err := CheckName(f.Name); err != nil {
			return fmt.Errorf("files[%d]: %w", i, err)
		}
		if seen[f.Name] {
			return fmt.Errorf("files[%d]: name %q repeated", i, f.Name)
		}
		seen[f.Name] = true
		if f.Size < 0 || f.Size > int64(MaxChunks)*int64(r.ChunkSize) {
			return fmt.Errorf("files[%d] (%s): size %d out of range", i, f.Name, f.Size)
		}
		if n := chunkCount(f.Size, r.ChunkSize); int64(len(f.Chunks)) != n {
			return fmt.Errorf("files[%d] (%s): %d chunks for %d bytes, want %d", i, f.Name, len(f.Chunks), f.Size, n)
		}
		if total += len(f.Chunks); total > MaxChunks {
			return fmt.Errorf("more than %d chunks", MaxChunks)
		}
	}
	r.chunks = make([]Chunk, 0, total)
	for fi, f := range r.Files {
		for j, c := range f.Chunks {
			sum, err := Digest(c)
			if err != nil {
				return fmt.Errorf("files[%d] (%s) chunk %d: %w", fi, f.Name, j, err)
			}
			off := int64(j) * int64(r.ChunkSize)
			r.chunks = append(r.chunks, Chunk{Index: len(r.chunks), File: fi, Offset: off,
				Len: int(min(int64(r.ChunkSize), f.Size-off)), Sum: sum})
		}
	}
	return nil
}

// Chunks lists every chunk of the root, file by file.
func (r *Root) Chunks() []Chunk { return r.chunks }

// FileChunks returns the flat indices [lo, hi) of file i's chunks.
func (r *Root) FileChunks(i int) (lo, hi int) {
	for j := range i {
		lo += len(r.Files[j].Chunks)
	}
	return lo, lo + len(r.Files[i].Chunks)
}

// Size is the data set's size in bytes.
func (r *Root) Size() int64 {
	var n int64
	for _, f := range r.Files {
		n += f.Size
	}
	return n
}

// rootMagic starts a root object.
const rootMagic = "SWDR"

// Encode returns the root's encoding, which the root CID hashes:
//
//	"SWDR" | version u8 | chunk_size u32 | files u32
//	per file: name_len u16 | name | size u64 | SHA-256 of each chunk (32 bytes each)
//
// integers big-endian; a file has ceil(size / chunk_size) chunks, so the
// encoding holds no count a reader must trust.
func (r *Root) Encode() []byte {
	n := len(rootMagic) + 9
	for _, f := range r.Files {
		n += 2 + len(f.Name) + 8 + 32*len(f.Chunks)
	}
	b := make([]byte, 0, n)
	b = append(b, rootMagic...)
	b = append(b, rootVersion)
	b = binary.BigEndian.AppendUint32(b, uint32(r.ChunkSize))
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.Files)))
	for _, f := range r.Files {
		b = binary.BigEndian.AppendUint16(b, uint16(len(f.Name)))
		b = append(b, f.Name...)
		b = binary.BigEndian.AppendUint64(b, uint64(f.Size))
		for _, c := range f.Chunks {
			d, _ := Digest(c) // Build and DecodeRoot make only sha2-256 raw CIDs
			b = append(b, d[:]...)
		}
	}
	return b
}

// CID is the root CID: the CID of the root's encoding.
func (r *Root) CID() cid.Cid { return ChunkCID(r.Encode()) }

// DecodeRoot parses a root object. Every count and size is checked against
// the limits and against the bytes that remain before anything is
// allocated, so memory stays within a small multiple of len(b). Errors
// match ErrBadRoot.
func DecodeRoot(b []byte) (*Root, error) {
	r, err := decodeRoot(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRoot, err)
	}
	return r, nil
}

func decodeRoot(b []byte) (*Root, error) {
	if len(b) > MaxRootBytes {
		return nil, fmt.Errorf("%d bytes, limit %d", len(b), MaxRootBytes)
	}
	if len(b) < len(rootMagic)+9 || string(b[:len(rootMagic)]) != rootMagic {
		return nil, errors.New("not a root object (magic)")
	}
	b = b[len(rootMagic):]
	if b[0] != rootVersion {
		return nil, fmt.Errorf("version %d, want %d", b[0], rootVersion)
	}
	cs, nf := binary.BigEndian.Uint32(b[1:]), binary.BigEndian.Uint32(b[5:])
	b = b[9:]
	if cs < MinChunkSize || cs > MaxChunkSize {
		return nil, fmt.Errorf("chunk_size %d: want %d to %d", cs, MinChunkSize, MaxChunkSize)
	}
	// A file takes at least 10 bytes (name length and size): a count the
	// bytes cannot hold is refused before the slice is made.
	if nf == 0 || nf > MaxFiles || uint64(nf)*10 > uint64(len(b)) {
		return nil, fmt.Errorf("%d files: want 1 to %d in %d bytes", nf, MaxFiles, len(b))
	}
	r := &Root{ChunkSize: int(cs), Files: make([]File, nf)}
	total := 0
	for i := range r.Files {
		if len(b) < 2 {
			return nil, fmt.Errorf("files[%d]: truncated name length", i)
		}
		nl := int(binary.BigEndian.Uint16(b))
		b = b[2:]
		if nl > MaxNameBytes || nl+8 > len(b) {
			return nil, fmt.Errorf("files[%d]: name of %d bytes with %d bytes left", i, nl, len(b))
		}
		f := &r.Files[i]
		f.Name = string(b[:nl])
		size := binary.BigEndian.Uint64(b[nl:])
		b = b[nl+8:]
		if size > uint64(MaxChunks)*uint64(cs) {
			return nil, fmt.Errorf("files[%d] (%q): size %d out of range", i, f.Name, size)
		}
		f.Size = int64(size)
		n := chunkCount(f.Size, r.ChunkSize)
		if total += int(n); total > MaxChunks {
			return nil, fmt.Errorf("more than %d chunks", MaxChunks)
		}
		if 32*n > int64(len(b)) {
			return nil, fmt.Errorf("files[%d] (%q): %d chunks of %d bytes need %d bytes of hashes, %d left", i, f.Name, n, cs, 32*n, len(b))
		}
		f.Chunks = make([]cid.Cid, n)
		for j := range f.Chunks {
			var s [32]byte
			copy(s[:], b[32*j:])
			f.Chunks[j] = sumCID(s)
		}
		b = b[32*n:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%d bytes after the last file", len(b))
	}
	if err := r.check(); err != nil {
		return nil, err
	}
	return r, nil
}

// DecodeRootFor parses a root object that must hash to want: the object a
// peer sends for a root CID is checked before it is decoded.
func DecodeRootFor(b []byte, want cid.Cid) (*Root, error) {
	d, err := Digest(want)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxRootBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrBadRoot, len(b), MaxRootBytes)
	}
	if got := sha256.Sum256(b); got != d {
		return nil, fmt.Errorf("%w: %d bytes hash to %s, not to the root %s", ErrBadRoot, len(b), sumCID(got), want)
	}
	return DecodeRoot(b)
}

// Build reads the files at paths and returns their root, named by their
// base names, with chunks of chunkSize bytes (0: DefaultChunkSize).
func Build(paths []string, chunkSize int) (*Root, error) {
	if chunkSize == 0 {
		chunkSize = DefaultChunkSize
	}
	r := &Root{ChunkSize: chunkSize}
	buf := make([]byte, chunkSize)
	for _, p := range paths {
		f, err := buildFile(p, buf)
		if err != nil {
			return nil, err
		}
		r.Files = append(r.Files, f)
	}
	if err := r.check(); err != nil {
		return nil, fmt.Errorf("dataset: %w", err)
	}
	return r, nil
}

func buildFile(path string, buf []byte) (File, error) {
	fh, err := os.Open(path)
	if err != nil {
		return File{}, fmt.Errorf("dataset: %w", err)
	}
	defer fh.Close()
	f := File{Name: filepath.Base(path)}
	for {
		n, err := io.ReadFull(fh, buf)
		if n > 0 {
			f.Chunks = append(f.Chunks, ChunkCID(buf[:n]))
			f.Size += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return f, nil
		}
		if err != nil {
			return File{}, fmt.Errorf("dataset: read %s: %w", path, err)
		}
	}
}

// VerifyFile checks that the file at path is root's file i: its size and
// every chunk's hash. The error names the first difference.
func (r *Root) VerifyFile(path string, i int) error {
	f := r.Files[i]
	fh, err := os.Open(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	if st.Size() != f.Size {
		return fmt.Errorf("%s has %d bytes, the data set's %s has %d", path, st.Size(), f.Name, f.Size)
	}
	lo, hi := r.FileChunks(i)
	buf := make([]byte, r.ChunkSize)
	for _, c := range r.chunks[lo:hi] {
		b := buf[:c.Len]
		if _, err := io.ReadFull(fh, b); err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if sha256.Sum256(b) != c.Sum {
			return fmt.Errorf("%s: bytes %d-%d differ from the data set's %s (chunk %s)", path, c.Offset, c.Offset+int64(c.Len), f.Name, f.Chunks[c.Index-lo])
		}
	}
	return nil
}
