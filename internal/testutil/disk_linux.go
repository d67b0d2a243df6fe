package testutil

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// SmallDisk mounts a tmpfs of size bytes (rounded up to pages) in a
// temporary folder for the test, unmounted when it ends, and returns its
// path. It skips the test, saying why, where tmpfs cannot be mounted (not
// root, no mount privilege in a container).
func SmallDisk(t testing.TB, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("a small disk needs root to mount a tmpfs (euid %d); skipped", os.Geteuid())
	}
	dir := filepath.Join(t.TempDir(), "disk")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("size=%d", size)); err != nil {
		t.Skipf("mount -t tmpfs -o size=%d %s: %v; skipped (no mount privilege here)", size, dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount the small disk %s: %v", dir, err)
		}
	})
	return dir
}

// FillDisk writes a file of zeros in dir until its file system is full and
// returns the file's path; any error but a full disk fails the test.
func FillDisk(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if pe, ok := err.(*os.PathError); ok && pe.Err == syscall.ENOSPC {
				return path
			}
			t.Fatalf("fill %s: %v", dir, err)
		}
	}
}
