package atomicfile

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/swarm-train/swarm/internal/testutil"
)

// noTemp fails if a temporary file is left in dir.
func noTemp(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if IsTemp(e.Name()) {
			t.Errorf("temporary file %s left in %s", e.Name(), dir)
		}
	}
}

func TestWriteFileReplaces(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f.json")
	for _, s := range []string{"one", "two, longer"} {
		if err := WriteFile(p, []byte(s), 0o640); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(p); string(b) != s {
			t.Fatalf("read %q, wrote %q", b, s)
		}
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", st.Mode().Perm())
	}
	noTemp(t, dir)
}

func TestWriteFillErrorKeepsOld(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("encoder failed")
	err := Write(p, 0o644, func(w io.Writer) error {
		_, _ = w.Write([]byte("half a new fi"))
		return boom
	})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), p) {
		t.Fatalf("error %v: want the fill's error naming %s", err, p)
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Fatalf("file is %q after a failed write, want the old content", b)
	}
	noTemp(t, dir)
}

func TestWriteNewNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "identity.key")
	if err := WriteNew(p, []byte("first"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := WriteNew(p, []byte("second"), 0o600)
	if !errors.Is(err, os.ErrExist) {
		t.Fatalf("second WriteNew: %v, want os.ErrExist", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "first" {
		t.Fatalf("file is %q, want the first content", b)
	}
	noTemp(t, dir)
}

func TestWriteMissingFolderNamesPath(t *testing.T) {
	p := filepath.Join(t.TempDir(), "no", "such", "f")
	err := WriteFile(p, []byte("x"), 0o644)
	if err == nil || !strings.Contains(err.Error(), p) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("error %v: want not-exist naming %s", err, p)
	}
}

// TestDiskFull fills a small tmpfs: replacing a file fails with ErrDiskFull
// naming the file, the previous content stays, and no temporary file is
// left; once space is freed the write succeeds.
func TestDiskFull(t *testing.T) {
	dir := testutil.SmallDisk(t, 256<<10)
	p := filepath.Join(dir, "manifest.json")
	old := bytes.Repeat([]byte("o"), 1000)
	if err := WriteFile(p, old, 0o644); err != nil {
		t.Fatal(err)
	}
	filler := testutil.FillDisk(t, dir)
	for name, write := range map[string]func() error{
		"WriteFile": func() error { return WriteFile(p, bytes.Repeat([]byte("n"), 64<<10), 0o644) },
		"Write": func() error {
			return Write(p, 0o644, func(w io.Writer) error {
				_, err := w.Write(bytes.Repeat([]byte("n"), 64<<10))
				return err
			})
		},
		"WriteNew": func() error { return WriteNew(filepath.Join(dir, "new.key"), make([]byte, 8<<10), 0o600) },
	} {
		err := write()
		if !errors.Is(err, ErrDiskFull) || !errors.Is(err, syscall.ENOSPC) || !DiskFull(err) {
			t.Fatalf("%s on a full disk: %v, want ErrDiskFull and ENOSPC", name, err)
		}
		if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "disk is full") {
			t.Errorf("%s: error %q should name the file and say the disk is full", name, err)
		}
		t.Logf("%s: %v", name, err)
	}
	if b, _ := os.ReadFile(p); !bytes.Equal(b, old) {
		t.Fatalf("the previous file changed on a full disk (%d bytes)", len(b))
	}
	if _, err := os.Stat(filepath.Join(dir, "new.key")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("WriteNew left new.key on a full disk: %v", err)
	}
	noTemp(t, dir)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, []byte("new"), 0o644); err != nil {
		t.Fatalf("after freeing space: %v", err)
	}
}
