// Package atomicfile writes files that cannot be half-written. Every file the
// program writes (checkpoints, exports, manifests, config, identity, the data
// cache) goes through it: the bytes go to a temporary file in the
// destination's folder, which is fsynced and renamed over the destination
// (or linked to it, for a file that must never be replaced), and then the
// folder is fsynced. A crash, a kill or a full disk leaves the previous file
// or the new one, never a mix; a failed write removes its temporary file.
//
// Errors name the destination, and a full disk (ENOSPC, or EDQUOT: the
// user's quota) is ErrDiskFull, so callers and logs can say what happened
// and where.
package atomicfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// ErrDiskFull is a write that failed because the file system (or the user's
// quota on it) has no space left. The error also matches the system's
// ENOSPC or EDQUOT.
var ErrDiskFull = errors.New("the disk is full")

// TempMarker is in every temporary file's name: "." + base + TempMarker +
// random digits, in the destination's folder. IsTemp recognises them, so a
// folder that a crash left them in can be cleaned.
const TempMarker = ".tmp-"

// IsTemp reports whether name (a base name) is one of this package's
// temporary files.
func IsTemp(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, TempMarker)
}

// WriteFile writes data to path atomically with permissions perm, replacing
// any file there.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	return Write(path, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// Write writes what fill writes to path atomically with permissions perm,
// replacing any file there. An error from fill leaves path as it was.
func Write(path string, perm os.FileMode, fill func(w io.Writer) error) error {
	tmp, err := writeTemp(path, perm, fill)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return wrap(path, err)
	}
	return syncDir(path)
}

// WriteNew writes data to path atomically with permissions perm, unless a
// file already exists there: then it fails with an error matching
// os.ErrExist and leaves that file alone (identity keys, tokens, a config
// written once).
func WriteNew(path string, data []byte, perm os.FileMode) error {
	tmp, err := writeTemp(path, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		return wrap(path, err)
	}
	return syncDir(path)
}

// writeTemp writes fill's bytes to a synced temporary file next to path and
// returns its name; on error nothing is left behind.
func writeTemp(path string, perm os.FileMode, fill func(w io.Writer) error) (name string, err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+TempMarker+"*")
	if err != nil {
		return "", wrap(path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return "", wrap(path, err)
	}
	if err = fill(f); err != nil {
		return "", wrap(path, err)
	}
	if err = f.Sync(); err != nil {
		return "", wrap(path, err)
	}
	if err = f.Close(); err != nil {
		return "", wrap(path, err)
	}
	return f.Name(), nil
}

// syncDir makes the rename or link of path durable: the folder's entry is
// written too. File systems that cannot sync a folder are passed over.
func syncDir(path string) error {
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return wrap(path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) && !errors.Is(err, syscall.EINVAL) {
		return wrap(path, fmt.Errorf("sync folder: %w", err))
	}
	return nil
}

// wrap names path in err, and says so plainly when the disk is full.
func wrap(path string, err error) error {
	if DiskFull(err) {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			return fmt.Errorf("write %s: %w (%w)", path, ErrDiskFull, errno)
		}
		return fmt.Errorf("write %s: %w", path, err)
	}
	return fmt.Errorf("write %s: %w", path, err)
}

// DiskFull reports whether err is a write that failed for lack of space.
func DiskFull(err error) bool {
	return errors.Is(err, ErrDiskFull) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}
