//go:build !unix

package data

import "os"

// mapFile reads the file: this platform's build does not map files.
func mapFile(f *os.File, size int64) ([]byte, bool, error) {
	b, err := os.ReadFile(f.Name())
	return b, false, err
}

func unmapFile([]byte) {}
