package checkpoint

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/swarm-train/swarm/internal/atomicfile"
)

// Dir is a folder of checkpoints named ckpt-<step>.swck.
type Dir struct {
	Path string
	// Keep is how many of the newest checkpoints Save leaves (≤ 0: 3).
	Keep int
	// OnSkip, if set, hears about each damaged checkpoint Latest passes over.
	OnSkip func(path string, err error)
}

const ext = ".swck"

// File is one checkpoint in a folder.
type File struct {
	Path string
	Step int64
}

func (d *Dir) keep() int {
	if d.Keep <= 0 {
		return 3
	}
	return d.Keep
}

// Save writes s as the checkpoint of step s.Step atomically, then removes
// all but the newest Keep checkpoints. It returns the file's path.
func (d *Dir) Save(s *State) (string, error) {
	if err := os.MkdirAll(d.Path, 0o755); err != nil {
		return "", fmt.Errorf("checkpoint folder: %w", err)
	}
	final := filepath.Join(d.Path, fmt.Sprintf("ckpt-%012d%s", s.Step, ext))
	if err := WriteFile(final, s); err != nil {
		return "", err
	}
	files, err := d.List()
	if err != nil {
		return final, err
	}
	for i := 0; i < len(files)-d.keep(); i++ {
		if err := os.Remove(files[i].Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return final, fmt.Errorf("prune checkpoint: %w", err)
		}
	}
	return final, nil
}

// WriteFile writes s to path atomically (internal/atomicfile): a temporary
// file in the same folder, fsync, rename over path, fsync of the folder. A
// crash or a full disk leaves either the old file or the new one, never a
// mix; the error names the path and says when the disk is full.
func WriteFile(path string, s *State) error {
	if err := atomicfile.Write(path, 0o644, func(w io.Writer) error { return Encode(w, s) }); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// ReadFile reads and verifies one checkpoint; errors name the file.
func ReadFile(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read checkpoint: %w", err)
	}
	s, err := Decode(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// List returns the folder's checkpoints, oldest first. A missing folder has none.
func (d *Dir) List() ([]File, error) {
	ents, err := os.ReadDir(d.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list checkpoints: %w", err)
	}
	var files []File
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "ckpt-") || !strings.HasSuffix(name, ext) || e.IsDir() {
			continue
		}
		step, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(name, "ckpt-"), ext), 10, 64)
		if err != nil {
			continue
		}
		files = append(files, File{Path: filepath.Join(d.Path, name), Step: step})
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Step < files[j].Step })
	return files, nil
}

// Latest loads the newest checkpoint that verifies, passing over damaged
// ones (reported to OnSkip). It returns ErrNone, wrapping the reasons, when
// no file verifies.
func (d *Dir) Latest() (*State, string, error) { return d.LatestFitting(nil) }

// LatestFitting is Latest for the checkpoints that fits accepts (nil: all):
// one it refuses is passed over like a damaged one, reported to OnSkip with
// its error, and left where it is.
func (d *Dir) LatestFitting(fits func(*State) error) (*State, string, error) {
	files, err := d.List()
	if err != nil {
		return nil, "", err
	}
	var errs []error
	for i := len(files) - 1; i >= 0; i-- {
		s, err := ReadFile(files[i].Path)
		if err == nil && fits != nil {
			if err = fits(s); err != nil {
				err = fmt.Errorf("%s: %w", files[i].Path, err)
			}
		}
		if err == nil {
			return s, files[i].Path, nil
		}
		errs = append(errs, err)
		if d.OnSkip != nil {
			d.OnSkip(files[i].Path, err)
		}
	}
	if len(errs) == 0 {
		return nil, "", fmt.Errorf("%w in %s", ErrNone, d.Path)
	}
	return nil, "", fmt.Errorf("%w in %s: %w", ErrNone, d.Path, errors.Join(errs...))
}

// ReadMeta reads one checkpoint's metadata (DecodeMeta): unverified.
func ReadMeta(path string) (*State, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read checkpoint: %w", err)
	}
	defer f.Close()
	s, err := DecodeMeta(bufio.NewReader(f))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}
