//go:build unix

package data

import (
	"os"
	"syscall"
)

// mapFile maps the file read-only; it reports whether it did (false: b was
// read into memory).
func mapFile(f *os.File, size int64) (b []byte, mapped bool, err error) {
	if int64(int(size)) != size {
		return nil, false, errNoMmap
	}
	b, err = syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil { // a file system that cannot map: read it
		b, err = os.ReadFile(f.Name())
		return b, false, err
	}
	return b, true, nil
}

func unmapFile(b []byte) { _ = syscall.Munmap(b) }
