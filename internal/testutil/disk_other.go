//go:build !linux

package testutil

import "testing"

// SmallDisk skips the test: a size-limited tmpfs needs Linux.
func SmallDisk(t testing.TB, size int64) string {
	t.Helper()
	t.Skip("a small disk (tmpfs with a size limit) needs Linux; skipped")
	return ""
}

// FillDisk is not reached off Linux (SmallDisk skips).
func FillDisk(t testing.TB, dir string) string {
	t.Helper()
	t.Skip("needs Linux")
	return ""
}
