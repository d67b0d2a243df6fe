package data

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
)

// DefaultCorpus is the text file, relative to GOROOT, that a text run reads
// when its manifest names no path: Newton's Opticks, shipped with every Go
// installation.
const DefaultCorpus = "src/testdata/Isaac.Newton-Opticks.txt"

// CorpusPath resolves a text data set's path: path itself if not empty, else
// DefaultCorpus under the Go root ($GOROOT, `go env GOROOT`, or the root the
// binary was built with).
func CorpusPath(path string) (string, error) {
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			return "", fmt.Errorf("%w: corpus %s: %v", ErrNoData, path, err)
		}
		return path, nil
	}
	var roots []string
	if r := os.Getenv("GOROOT"); r != "" {
		roots = append(roots, r)
	}
	if out, err := exec.Command("go", "env", "GOROOT").Output(); err == nil {
		if r := strings.TrimSpace(string(out)); r != "" {
			roots = append(roots, r)
		}
	}
	//lint:ignore SA1019 the build-time root is the last resort for a binary run where no go command is installed.
	if r := runtime.GOROOT(); r != "" {
		roots = append(roots, r)
	}
	var tried []string
	for _, r := range roots {
		p := filepath.Join(r, filepath.FromSlash(DefaultCorpus))
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		tried = append(tried, p)
	}
	if len(tried) == 0 {
		return "", fmt.Errorf("%w: no Go installation found for the default corpus %s; set dataset.path (swarm run init --corpus FILE)", ErrNoData, DefaultCorpus)
	}
	return "", fmt.Errorf("%w: default corpus not found (tried %s); set dataset.path (swarm run init --corpus FILE)", ErrNoData, strings.Join(tried, ", "))
}

// ReadCorpus reads a text corpus (see CorpusPath).
func ReadCorpus(path string) (string, error) {
	p, err := CorpusPath(path)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("read corpus: %w", err)
	}
	if len(b) == 0 {
		return "", fmt.Errorf("corpus %s is empty", p)
	}
	return string(b), nil
}

// Charset returns the sorted set of characters in text: the vocabulary of a
// character-level model, token id i being the i-th character.
func Charset(text string) string {
	seen := map[rune]bool{}
	for _, r := range text {
		seen[r] = true
	}
	rs := make([]rune, 0, len(seen))
	for r := range seen {
		rs = append(rs, r)
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i] < rs[j] })
	return string(rs)
}

// Encode maps text to token ids under charset. A character outside the
// charset is an error that names it and its position.
func Encode(text, charset string) ([]int32, error) {
	ids := map[rune]int32{}
	for i, r := range []rune(charset) {
		ids[r] = int32(i)
	}
	out := make([]int32, 0, len(text))
	for pos, r := range text {
		id, ok := ids[r]
		if !ok {
			return nil, fmt.Errorf("character %q at byte %d is not in the run's charset", r, pos)
		}
		out = append(out, id)
	}
	return out, nil
}
