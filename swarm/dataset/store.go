package dataset

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/ipfs/go-cid"

	"github.com/swarm-train/swarm/internal/atomicfile"
)

// Names a store keeps in its cache folder next to the data files (data
// file names never start with a dot, see CheckName).
const (
	rootFile  = ".root"   // the root object, once known
	chunksDir = ".chunks" // fetched chunks of files not yet complete, one file each
)

// Sources of a store's data, as Store.Source reports them.
const (
	SourceLocal = "local" // files found on this machine (--data-dir, the module cache)
	SourceCache = "cache" // files fetched earlier, in the home's cache
	SourceSwarm = "swarm" // fetched from peers now
)

// ErrNoRoot: the store does not know its root object yet (fetch it first).
var ErrNoRoot = errors.New("dataset: root object not known yet")

// ErrMissing: the store does not hold that chunk.
var ErrMissing = errors.New("dataset: chunk not held")

// Options says where a store looks for its data.
type Options struct {
	// Cache is the folder of data caches (HOME/data); a root's chunks and
	// files go in Cache/<root CID>/. Empty: the store can only use local
	// copies.
	Cache string
	// Local lists candidate copies of the whole data set, each as its files'
	// paths in the root's order (MNIST's four files in a folder, a text
	// corpus). A candidate whose files build the pinned root also tells the
	// store the root object, so a node with the data needs no peer.
	Local [][]string
	// ChunkSize is the chunk size the root of a Local candidate is built
	// with (0: DefaultChunkSize, that of every root `swarm run init` pins).
	ChunkSize int
	// Dirs are folders where a file of the root may lie under its name
	// (--data-dir); each is checked against the root's hashes.
	Dirs []string
	// Logger tells of local copies that do not match (nil: discard).
	Logger *slog.Logger
}

// Store is one root's data on this node: which chunks it holds and where.
// It is safe for concurrent use.
type Store struct {
	id    cid.Cid
	sum   [32]byte
	cache string // Options.Cache/<root>, "" without a cache
	opts  Options
	log   *slog.Logger

	mu         sync.Mutex
	r          *Root
	enc        []byte
	have       []bool
	nhave      int
	haveBytes  int64
	files      []string // per file: a complete, checked copy ("" until there is one)
	assembling []bool   // per file: being written from its chunks
	source     string
	dir        string // folder holding every file, once complete
	done       chan struct{}
}

// Open finds what this node holds of root: a root object and files in the
// cache, or local copies that match it. It writes to the cache only when
// some files are local and others must be fetched (the local ones are
// copied, so that one folder ends up with every file).
func Open(root cid.Cid, o Options) (*Store, error) {
	sum, err := Digest(root)
	if err != nil {
		return nil, fmt.Errorf("dataset root: %w", err)
	}
	s := &Store{id: root, sum: sum, opts: o, log: o.Logger, done: make(chan struct{})}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if o.Cache != "" {
		s.cache = CacheFolder(o.Cache, root)
		cleanTemp(s.cache)
		cleanTemp(filepath.Join(s.cache, chunksDir))
	}
	enc, verified := s.findRoot()
	if enc == nil {
		return s, nil // the root object comes from a peer: SetRoot
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.useRootLocked(enc, verified); err != nil {
		return nil, err
	}
	return s, nil
}

// cleanTemp removes temporary files a crash left in dir.
func cleanTemp(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if atomicfile.IsTemp(e.Name()) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// findRoot returns the root object from the cache, or built from a local
// candidate whose files hash to it (verified: those files' paths).
func (s *Store) findRoot() (enc []byte, verified []string) {
	if s.cache != "" {
		p := filepath.Join(s.cache, rootFile)
		if b, err := readSmall(p, MaxRootBytes); err == nil {
			if _, err := DecodeRootFor(b, s.id); err == nil {
				return b, nil
			} else {
				s.log.Warn("data cache: root object does not match its CID; removing it", "file", p, "err", err)
				os.Remove(p)
			}
		}
	}
	for _, paths := range s.opts.Local {
		if !allExist(paths) {
			continue
		}
		r, err := Build(paths, s.opts.ChunkSize)
		if err != nil {
			s.log.Warn("local data unreadable", "files", paths, "err", err)
			continue
		}
		if r.CID().Equals(s.id) {
			return r.Encode(), paths
		}
		s.log.Warn("local data is not the run's data set (other content); passing over it", "files", paths,
			"root", r.CID(), "want", s.id)
	}
	return nil, nil
}

func allExist(paths []string) bool {
	if len(paths) == 0 {
		return false
	}
	for _, p := range paths {
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
			return false
		}
	}
	return true
}

// readSmall reads a file of at most limit bytes.
func readSmall(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is over %d bytes", path, limit)
	}
	return b, nil
}

// SetRoot gives the store its root object (fetched from a peer): enc must
// hash to the store's root CID. The object is kept in the cache.
func (s *Store) SetRoot(enc []byte) error {
	if _, err := DecodeRootFor(enc, s.id); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.r != nil {
		return nil
	}
	return s.useRootLocked(enc, nil)
}

// useRootLocked adopts the root object enc (already checked against the
// CID) and indexes what this node holds of it: verified files (a local
// candidate that built the root), files in the cache or Dirs that match,
// chunks fetched earlier.
func (s *Store) useRootLocked(enc []byte, verified []string) error {
	r, err := DecodeRoot(enc)
	if err != nil {
		return err
	}
	n := len(r.Chunks())
	s.r, s.enc = r, enc
	s.have, s.files, s.assembling = make([]bool, n), make([]string, len(r.Files)), make([]bool, len(r.Files))
	fromCache := true
	for i, f := range r.Files {
		if verified != nil {
			s.files[i] = verified[i]
			fromCache = false
			continue
		}
		var cands []string
		if s.cache != "" {
			cands = append(cands, filepath.Join(s.cache, f.Name))
		}
		for _, d := range s.opts.Dirs {
			cands = append(cands, filepath.Join(d, f.Name))
		}
		for _, paths := range s.opts.Local {
			for _, p := range paths {
				if filepath.Base(p) == f.Name {
					cands = append(cands, p)
				}
			}
		}
		for _, p := range cands {
			if _, err := os.Stat(p); err != nil {
				continue
			}
			if err := r.VerifyFile(p, i); err != nil {
				s.log.Warn("local data file does not match the run's data set; passing over it", "file", p, "err", err)
				continue
			}
			s.files[i] = p
			if filepath.Dir(p) != s.cache {
				fromCache = false
			}
			break
		}
	}
	for i, p := range s.files {
		lo, hi := r.FileChunks(i)
		if p != "" {
			for c := lo; c < hi; c++ {
				s.markLocked(c)
			}
			continue
		}
		for c := lo; c < hi; c++ {
			if b, err := readSmall(s.chunkPath(c), int64(r.ChunkSize)); err == nil && sha256.Sum256(b) == r.chunks[c].Sum {
				s.markLocked(c)
			}
		}
	}
	s.source = SourceLocal
	if fromCache {
		s.source = SourceCache
	}
	if s.nhave < n {
		s.source = SourceSwarm
	}
	if s.nhave < n || !sameDir(s.files) {
		// Fetching into the cache, or files in several folders: keep the
		// root object in the cache, and copy the files found elsewhere
		// there, so that one folder holds them all.
		if s.cache == "" {
			if s.nhave == n {
				return errors.New("dataset: the data files lie in several folders and there is no cache to gather them in")
			}
			s.finishLocked()
			return nil
		}
		if err := os.MkdirAll(filepath.Join(s.cache, chunksDir), 0o755); err != nil {
			return fmt.Errorf("data cache: %w", err)
		}
		if err := atomicfile.WriteFile(filepath.Join(s.cache, rootFile), enc, 0o644); err != nil {
			return fmt.Errorf("data cache: %w", err)
		}
		for i, p := range s.files {
			if p == "" || filepath.Dir(p) == s.cache {
				continue
			}
			dst := filepath.Join(s.cache, r.Files[i].Name)
			if err := copyFile(dst, p); err != nil {
				return fmt.Errorf("data cache: %w", err)
			}
			s.files[i] = dst
		}
	}
	s.finishLocked()
	return nil
}

// sameDir reports whether every found file lies in one folder.
func sameDir(files []string) bool {
	for _, p := range files {
		if p != "" && filepath.Dir(p) != filepath.Dir(files[0]) {
			return false
		}
	}
	return true
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return atomicfile.Write(dst, 0o644, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	})
}

func (s *Store) markLocked(c int) {
	if !s.have[c] {
		s.have[c] = true
		s.nhave++
		s.haveBytes += int64(s.r.chunks[c].Len)
	}
}

// finishLocked completes the store once every file has a checked copy:
// the folder holding them all becomes Dir.
func (s *Store) finishLocked() {
	for _, p := range s.files {
		if p == "" {
			return
		}
	}
	select {
	case <-s.done:
		return
	default:
	}
	// useRootLocked gathered files of several folders in the cache, and
	// fetched files are assembled there.
	dir := filepath.Dir(s.files[0])
	s.dir = dir
	if s.cache != "" && dir == s.cache {
		os.RemoveAll(filepath.Join(s.cache, chunksDir))
	}
	close(s.done)
}

func (s *Store) chunkPath(c int) string {
	return filepath.Join(s.cache, chunksDir, strconv.Itoa(c))
}

// ID is the root CID.
func (s *Store) ID() cid.Cid { return s.id }

// Root is the root object, nil until known.
func (s *Store) Root() *Root {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.r
}

// RootBytes is the root object's encoding, nil until known.
func (s *Store) RootBytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.enc
}

// Done is closed once the store holds every file.
func (s *Store) Done() <-chan struct{} { return s.done }

// Complete reports whether the store holds every file.
func (s *Store) Complete() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Dir is the folder that holds every file of the data set, under their
// names (a local folder, or the cache); empty until Complete.
func (s *Store) Dir() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dir
}

// CacheDir is the store's folder in the cache ("" without one).
func (s *Store) CacheDir() string { return s.cache }

// Source says where the data came from: SourceLocal, SourceCache or
// SourceSwarm (empty until the root is known).
func (s *Store) Source() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.source
}

// Progress is the chunks and bytes held out of the whole (0, 0 while the
// root is not known).
func (s *Store) Progress() (chunks, total int, bytes, size int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.r == nil {
		return 0, 0, 0, 0
	}
	return s.nhave, len(s.have), s.haveBytes, s.r.Size()
}

// Have reports whether the store holds chunk c.
func (s *Store) Have(c int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return c >= 0 && c < len(s.have) && s.have[c]
}

// Bitmap is the chunks held, one bit each (chunk c is bit c%8 of byte
// c/8), nil while the root is not known.
func (s *Store) Bitmap() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.r == nil {
		return nil
	}
	b := make([]byte, (len(s.have)+7)/8)
	for c, h := range s.have {
		if h {
			b[c/8] |= 1 << (c % 8)
		}
	}
	return b
}

// ReadChunk returns chunk c's bytes, from its file or its chunk file.
func (s *Store) ReadChunk(c int) ([]byte, error) {
	for try := 0; ; try++ {
		s.mu.Lock()
		if s.r == nil {
			s.mu.Unlock()
			return nil, ErrNoRoot
		}
		if c < 0 || c >= len(s.have) || !s.have[c] {
			s.mu.Unlock()
			return nil, ErrMissing
		}
		ch := s.r.chunks[c]
		path, off := s.files[ch.File], ch.Offset
		if path == "" {
			path, off = s.chunkPath(c), 0
		}
		s.mu.Unlock()
		b, err := readAt(path, off, ch.Len)
		if err == nil || try > 0 {
			return b, err
		}
		// The chunk's file was just assembled and its chunk file removed:
		// look again.
	}
}

func readAt(path string, off int64, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("read %s at %d: %w", path, off, err)
	}
	return b, nil
}

// PutChunk stores chunk c, which must hash to its CID, in the cache; the
// chunk that completes a file has the file assembled (atomically) from its
// chunks. An error names the path; a full disk matches
// atomicfile.ErrDiskFull.
func (s *Store) PutChunk(c int, b []byte) error {
	s.mu.Lock()
	if s.r == nil {
		s.mu.Unlock()
		return ErrNoRoot
	}
	if c < 0 || c >= len(s.have) {
		s.mu.Unlock()
		return fmt.Errorf("dataset: chunk %d of %d", c, len(s.have))
	}
	ch := s.r.chunks[c]
	if s.have[c] {
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	if s.cache == "" {
		return errors.New("dataset: no cache folder to keep fetched data in")
	}
	if len(b) != ch.Len || sha256.Sum256(b) != ch.Sum {
		return fmt.Errorf("dataset: chunk %d does not match its CID %s", c, sumCID(ch.Sum))
	}
	if err := atomicfile.WriteFile(s.chunkPath(c), b, 0o644); err != nil {
		return fmt.Errorf("data cache: %w", err)
	}
	s.mu.Lock()
	s.markLocked(c)
	f := ch.File
	lo, hi := s.r.FileChunks(f)
	full := !s.assembling[f] && s.files[f] == ""
	for i := lo; i < hi && full; i++ {
		full = s.have[i]
	}
	if full {
		s.assembling[f] = true
	}
	s.mu.Unlock()
	if !full {
		return nil
	}
	return s.assemble(f)
}

// assemble writes file f from its chunk files, checking each again, then
// removes them.
func (s *Store) assemble(f int) error {
	r := s.r
	name := r.Files[f].Name
	dst := filepath.Join(s.cache, name)
	lo, hi := r.FileChunks(f)
	err := atomicfile.Write(dst, 0o644, func(w io.Writer) error {
		for c := lo; c < hi; c++ {
			b, err := readSmall(s.chunkPath(c), int64(r.ChunkSize))
			if err != nil {
				return err
			}
			if sha256.Sum256(b) != r.chunks[c].Sum {
				return fmt.Errorf("chunk file %s changed on disk", s.chunkPath(c))
			}
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
		return nil
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	s.assembling[f] = false
	if err != nil {
		return fmt.Errorf("data cache: %w", err)
	}
	s.files[f] = dst
	for c := lo; c < hi; c++ {
		os.Remove(s.chunkPath(c))
	}
	s.finishLocked()
	return nil
}

// CacheFolder is the folder of a root's data in a cache of data sets
// (HOME/data): cache/<root CID>.
func CacheFolder(cache string, root cid.Cid) string { return filepath.Join(cache, root.String()) }

// Add builds the root of the files at paths (chunks of chunkSize bytes, 0:
// DefaultChunkSize) and puts them, with the root object, in the cache of
// data sets (HOME/data), where a node's store finds and serves them: what
// `swarm data add` does for custom data. Every file is written atomically.
func Add(cache string, paths []string, chunkSize int) (*Root, error) {
	r, err := Build(paths, chunkSize)
	if err != nil {
		return nil, err
	}
	dir := CacheFolder(cache, r.CID())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("data cache: %w", err)
	}
	for i, p := range paths {
		dst := filepath.Join(dir, r.Files[i].Name)
		if err := copyFile(dst, p); err != nil {
			return nil, fmt.Errorf("data cache: %w", err)
		}
		// The copy is what the node will serve: check it, not the source,
		// which may have changed since it was hashed.
		if err := r.VerifyFile(dst, i); err != nil {
			os.Remove(dst)
			return nil, fmt.Errorf("data cache: %s changed while it was added: %w", p, err)
		}
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, rootFile), r.Encode(), 0o644); err != nil {
		return nil, fmt.Errorf("data cache: %w", err)
	}
	return r, nil
}
