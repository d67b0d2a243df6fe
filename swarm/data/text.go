package data

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"github.com/swarm-train/swarm/spec/run"
)

// DefaultCorpus is the text file, relative to GOROOT, that a text run reads
// when its manifest names no path: Newton's Opticks, shipped with every Go
// installation.
const DefaultCorpus = "src/testdata/Isaac.Newton-Opticks.txt"

// LoadCorpus reads a text run's corpus. With dir set, a file of the same
// name in dir comes first (a volunteer's own copy), then the manifest's path
// (or the Opticks text). When the manifest pins the content (dataset.sha256),
// the file must match it.
func LoadCorpus(d run.DatasetSpec, dir string) (string, error) {
	paths, err := corpusCandidates(d, dir)
	if err != nil {
		return "", err
	}
	var errs []error
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("read corpus: %w", err))
			continue
		}
		if len(b) == 0 {
			errs = append(errs, fmt.Errorf("corpus %s is empty", p))
			continue
		}
		if d.SHA256 != "" {
			if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != d.SHA256 {
				errs = append(errs, fmt.Errorf("dataset.sha256: corpus %s has sha256 %x, the run's is %s", p, sum, d.SHA256))
				continue
			}
		}
		return string(b), nil
	}
	return "", errors.Join(errs...)
}

// corpusCandidates lists where a text run's corpus may be, in order: a file
// of the same name in dir, then the manifest's path (or the Opticks text).
func corpusCandidates(d run.DatasetSpec, dir string) ([]string, error) {
	var paths []string
	if dir != "" {
		name := filepath.Base(d.Path)
		if d.Path == "" {
			name = filepath.Base(DefaultCorpus)
		}
		if p := filepath.Join(dir, name); fileExists(p) {
			paths = append(paths, p)
		}
	}
	p, err := CorpusPath(d.Path)
	if err != nil && len(paths) == 0 {
		return nil, err
	}
	if err == nil {
		paths = append(paths, p)
	}
	return paths, nil
}

// LoadTokens is a text run's token stream, found as LoadCorpus finds the
// corpus: a token file (dataset.tokenizer) is memory-mapped and read in
// place (TokenFile), a character corpus is read and encoded.
func LoadTokens(d run.DatasetSpec, dir string) (Tokens, error) {
	if d.Tokenizer == "" {
		text, err := LoadCorpus(d, dir)
		if err != nil {
			return Tokens{}, err
		}
		ids, err := TextTokens(d, text)
		if err != nil {
			return Tokens{}, err
		}
		return IDs(ids), nil
	}
	paths, err := corpusCandidates(d, dir)
	if err != nil {
		return Tokens{}, err
	}
	var errs []error
	for _, p := range paths {
		t, err := TokenFile(p, d.Tokenizer, d.SHA256)
		if err == nil {
			return t, nil
		}
		errs = append(errs, err)
	}
	return Tokens{}, errors.Join(errs...)
}

// CorpusSHA256 is the hex SHA-256 of text, as dataset.sha256 holds it.
func CorpusSHA256(text string) string {
	sum := sha256.Sum256([]byte(text))
	return hex.EncodeToString(sum[:])
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

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

// TextTokens turns a text data set's content (as LoadCorpus returns it) into
// token ids: the characters' indices in the charset, or, with a tokenizer,
// the tokens of the prepared token file.
func TextTokens(d run.DatasetSpec, content string) ([]int32, error) {
	if d.Tokenizer != "" {
		toks, err := DecodeTokens([]byte(content), d.Tokenizer)
		if err != nil {
			return nil, fmt.Errorf("dataset.path: %s: %w", CorpusName(d), err)
		}
		return toks, nil
	}
	toks, err := Encode(content, d.Charset)
	if err != nil {
		return nil, fmt.Errorf("dataset.charset: %w", err)
	}
	return toks, nil
}
