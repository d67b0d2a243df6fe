package dataset

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/swarm-train/swarm/internal/atomicfile"
	"github.com/swarm-train/swarm/internal/testutil"
)

// chunkBytes returns chunk c of a root built from paths.
func chunkBytes(t testing.TB, r *Root, paths []string, c int) []byte {
	t.Helper()
	ch := r.Chunks()[c]
	b, err := readAt(paths[ch.File], ch.Offset, ch.Len)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStoreLocalCopy(t *testing.T) {
	paths := testFiles(t, 9000, 100)
	r, _ := Build(paths, MinChunkSize)
	other := testFiles(t, 9000, 101) // not the data set
	s, err := Open(r.CID(), Options{Cache: t.TempDir(), Local: [][]string{other, paths}, ChunkSize: MinChunkSize})
	if err != nil {
		t.Fatal(err)
	}
	if !s.Complete() || s.Dir() != filepath.Dir(paths[0]) || s.Source() != SourceLocal {
		t.Fatalf("complete %v dir %q source %q: want the local copy's folder", s.Complete(), s.Dir(), s.Source())
	}
	if b, err := s.ReadChunk(0); err != nil || !bytes.Equal(b, chunkBytes(t, r, paths, 0)) {
		t.Fatalf("ReadChunk: %v", err)
	}
	if _, err := s.ReadChunk(len(r.Chunks())); !errors.Is(err, ErrMissing) {
		t.Fatalf("chunk past the end: %v, want ErrMissing", err)
	}
	if ents, _ := os.ReadDir(s.CacheDir()); len(ents) != 0 {
		t.Errorf("a complete local copy wrote %d entries in the cache", len(ents))
	}
}

// TestStoreFetchIntoCache plays a fetch: the root from a peer, chunks in
// any order (a bad one refused), files assembled in the cache; a reopened
// store finds them there, and chunks of a half-fetched file survive a
// restart.
func TestStoreFetchIntoCache(t *testing.T) {
	paths := testFiles(t, 3*MinChunkSize+10, MinChunkSize)
	r, _ := Build(paths, MinChunkSize)
	cache := t.TempDir()
	s, err := Open(r.CID(), Options{Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	if s.Root() != nil || s.Complete() {
		t.Fatal("a store with nothing knows its root")
	}
	if err := s.SetRoot(append(r.Encode(), 0)); !errors.Is(err, ErrBadRoot) {
		t.Fatalf("SetRoot of other bytes: %v, want ErrBadRoot", err)
	}
	if err := s.SetRoot(r.Encode()); err != nil {
		t.Fatal(err)
	}
	if err := s.PutChunk(1, chunkBytes(t, r, paths, 2)); err == nil {
		t.Fatal("PutChunk took another chunk's bytes")
	}
	for _, c := range []int{4, 2, 0} {
		if err := s.PutChunk(c, chunkBytes(t, r, paths, c)); err != nil {
			t.Fatal(err)
		}
	}
	// File 1 (one chunk) is complete; file 0 lacks chunks 1 and 3.
	if b, _ := os.ReadFile(filepath.Join(s.CacheDir(), "fileb.bin")); len(b) != MinChunkSize {
		t.Fatalf("file b is %d bytes in the cache", len(b))
	}
	if got := s.Bitmap(); len(got) != 1 || got[0] != 0b10101 {
		t.Fatalf("bitmap %08b, want 00010101", got)
	}
	s2, err := Open(r.CID(), Options{Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	if got := s2.Bitmap(); s2.Root() == nil || got[0] != 0b10101 {
		t.Fatalf("reopened: root %v bitmap %08b", s2.Root() != nil, got)
	}
	for _, c := range []int{3, 1} {
		if err := s2.PutChunk(c, chunkBytes(t, r, paths, c)); err != nil {
			t.Fatal(err)
		}
	}
	if !s2.Complete() || s2.Dir() != s2.CacheDir() || s2.Source() != SourceSwarm {
		t.Fatalf("complete %v dir %q source %q", s2.Complete(), s2.Dir(), s2.Source())
	}
	for i, p := range paths {
		a, _ := os.ReadFile(p)
		b, _ := os.ReadFile(filepath.Join(s2.Dir(), filepath.Base(p)))
		if !bytes.Equal(a, b) {
			t.Fatalf("file %d differs after assembly", i)
		}
	}
	if _, err := os.Stat(filepath.Join(s2.CacheDir(), chunksDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("chunk files left after completion: %v", err)
	}
	s3, err := Open(r.CID(), Options{Cache: cache})
	if err != nil || !s3.Complete() || s3.Source() != SourceCache {
		t.Fatalf("reopened complete cache: %v complete %v source %q", err, s3.Complete(), s3.Source())
	}
}

// TestStoreDirsChecked: a file in --data-dir that differs from the data
// set is passed over and fetched; one that matches is copied to the cache
// so that one folder holds every file.
func TestStoreDirsChecked(t *testing.T) {
	paths := testFiles(t, 2*MinChunkSize, MinChunkSize)
	r, _ := Build(paths, MinChunkSize)
	dir := t.TempDir()
	a, _ := os.ReadFile(paths[0])
	a[5] ^= 1
	os.WriteFile(filepath.Join(dir, "filea.bin"), a, 0o644)
	b, _ := os.ReadFile(paths[1])
	os.WriteFile(filepath.Join(dir, "fileb.bin"), b, 0o644)
	s, err := Open(r.CID(), Options{Cache: t.TempDir(), Dirs: []string{dir}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetRoot(r.Encode()); err != nil {
		t.Fatal(err)
	}
	if s.Have(0) || s.Have(1) || !s.Have(2) {
		t.Fatalf("bitmap %08b: want only file b's chunk", s.Bitmap())
	}
	if _, err := os.Stat(filepath.Join(s.CacheDir(), "fileb.bin")); err != nil {
		t.Fatalf("the matching local file was not copied to the cache: %v", err)
	}
}

// TestStoreDiskFull: a cache on a full disk fails cleanly: the error names
// the path and says the disk is full, and no partial file is left.
func TestStoreDiskFull(t *testing.T) {
	paths := testFiles(t, 3*MinChunkSize)
	r, _ := Build(paths, MinChunkSize)
	disk := testutil.SmallDisk(t, 64<<10)
	s, err := Open(r.CID(), Options{Cache: disk})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetRoot(r.Encode()); err != nil {
		t.Fatal(err)
	}
	testutil.FillDisk(t, disk)
	err = s.PutChunk(0, chunkBytes(t, r, paths, 0))
	if !errors.Is(err, atomicfile.ErrDiskFull) || !strings.Contains(err.Error(), s.CacheDir()) {
		t.Fatalf("PutChunk on a full disk: %v, want ErrDiskFull naming the cache", err)
	}
	t.Logf("full disk: %v", err)
	if s.Have(0) {
		t.Fatal("a chunk that could not be written counts as held")
	}
	ents, _ := os.ReadDir(filepath.Join(s.CacheDir(), chunksDir))
	if len(ents) != 0 {
		t.Fatalf("%d files left in the chunk folder", len(ents))
	}
}
