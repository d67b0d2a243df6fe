package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ErrHomeLocked is returned when another daemon already uses the home.
var ErrHomeLocked = errors.New("home is in use by another swarm daemon")

// homeLock is an exclusive lock on home/lock held for the daemon's lifetime.
// The operating system drops it when the process dies, so a crash leaves no
// stale lock behind.
type homeLock struct{ f *os.File }

func lockHome(home string) (*homeLock, error) {
	path := filepath.Join(home, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := tryLock(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %s is locked (stop the other daemon or use another --home)", ErrHomeLocked, path)
	}
	_ = f.Truncate(0)
	_, _ = fmt.Fprintf(f, "%d\n", os.Getpid())
	return &homeLock{f: f}, nil
}

func (l *homeLock) release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := unlock(l.f)
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	l.f = nil
	return err
}
