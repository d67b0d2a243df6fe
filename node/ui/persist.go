package ui

// The history ring survives restarts: Run writes it to Options.File every
// saveEvery and when it stops, and New reads it back, so the plots of a
// node restarted after an upgrade or a reboot start where they ended. The
// file is the node's own, but it is still read as input: bounded in size,
// every point checked, the points kept in time order and within the ring.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"time"
)

const (
	saveEvery = 5 * time.Minute
	// maxPointBytes bounds one point in the file (with a few GPUs).
	maxPointBytes = 1 << 10
)

// load reads the history file into the ring (a missing file is an empty
// history; a bad one is reported and left in place for the next save to
// replace).
func (d *Dashboard) load() error {
	f, err := os.Open(d.opts.File)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	limit := int64(d.opts.Keep)*maxPointBytes + 2
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return err
	}
	if int64(len(b)) > limit {
		return fmt.Errorf("%s: larger than %d points can be", d.opts.File, d.opts.Keep)
	}
	var pts []Point
	if err := json.Unmarshal(b, &pts); err != nil {
		return fmt.Errorf("%s: %w", d.opts.File, err)
	}
	if len(pts) > d.opts.Keep {
		pts = pts[len(pts)-d.opts.Keep:]
	}
	prev := 0.0
	for i, p := range pts {
		for _, v := range []float64{p.T, p.Loss, p.SamplesPerS, p.Throughput} {
			if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
				return fmt.Errorf("%s: point %d: %v is not a finite non-negative number", d.opts.File, i, v)
			}
		}
		if p.T < prev || len(p.GPUs) > 64 {
			return fmt.Errorf("%s: point %d out of time order or with %d GPUs", d.opts.File, i, len(p.GPUs))
		}
		prev = p.T
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.ring, pts)
	d.next = len(pts) % len(d.ring)
	d.full = len(pts) == len(d.ring)
	return nil
}

// save writes the ring to the history file through a temporary file, so the
// file is the old history or the new one, never half of one.
func (d *Dashboard) save() error {
	b, err := json.Marshal(d.History())
	if err != nil {
		return err
	}
	dir := filepath.Dir(d.opts.File)
	tmp, err := os.CreateTemp(dir, ".ui-history-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), d.opts.File)
}
