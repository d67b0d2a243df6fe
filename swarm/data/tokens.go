package data

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/tiktoken-go/tokenizer"

	"github.com/swarm-train/swarm/spec/run"
)

// A token file holds a corpus already cut into subword tokens, as
// `swarm data prepare` writes it. Layout (little-endian):
//
//	magic     [8]byte "SWARMTOK"
//	version   u32     1
//	vocab     u32     the tokenizer's vocabulary size
//	width     u32     bytes per token: 2 (vocab ≤ 65536) or 4
//	reserved  u32     0
//	count     u64     number of tokens
//	tokenizer [16]byte its name (run.TokenizerGPT2, ...), zero-padded
//	tokens    count × width bytes, each token < vocab
//
// Documents (input files) are separated by the tokenizer's end-of-text token.
const (
	tokMagic      = "SWARMTOK"
	tokVersion    = 1
	tokHeaderSize = 48
)

// ErrTokenFile: a token file is malformed or does not fit the run.
var ErrTokenFile = errors.New("bad token file")

// TokenHeader describes a token file.
type TokenHeader struct {
	Tokenizer string
	Vocab     int
	Count     int
}

// DecodeTokens parses a token file for a run whose tokenizer is tokenizer
// (run.TokenizerVocab gives its vocabulary): the header must name it and
// its vocabulary, the length must match the count, and every token must be
// inside the vocabulary. Errors wrap ErrTokenFile.
func DecodeTokens(b []byte, tokenizer string) ([]int32, error) {
	h, err := ParseTokenHeader(b)
	if err != nil {
		return nil, err
	}
	if h.Tokenizer != tokenizer {
		return nil, fmt.Errorf("%w: written with tokenizer %q, the run's is %q", ErrTokenFile, h.Tokenizer, tokenizer)
	}
	if v := run.TokenizerVocab(tokenizer); h.Vocab != v {
		return nil, fmt.Errorf("%w: vocabulary of %d tokens, tokenizer %s has %d", ErrTokenFile, h.Vocab, tokenizer, v)
	}
	width := tokenWidth(h.Vocab)
	body := b[tokHeaderSize:]
	out := make([]int32, h.Count)
	for i := range out {
		var v uint32
		if width == 2 {
			v = uint32(binary.LittleEndian.Uint16(body[2*i:]))
		} else {
			v = binary.LittleEndian.Uint32(body[4*i:])
		}
		if v >= uint32(h.Vocab) {
			return nil, fmt.Errorf("%w: token %d is %d, outside the vocabulary of %d", ErrTokenFile, i, v, h.Vocab)
		}
		out[i] = int32(v)
	}
	return out, nil
}

// ParseTokenHeader reads and checks a token file's header against the
// file's length.
func ParseTokenHeader(b []byte) (TokenHeader, error) {
	if len(b) < tokHeaderSize || string(b[:8]) != tokMagic {
		return TokenHeader{}, fmt.Errorf("%w: not a token file (swarm data prepare writes them)", ErrTokenFile)
	}
	le := binary.LittleEndian
	if v := le.Uint32(b[8:]); v != tokVersion {
		return TokenHeader{}, fmt.Errorf("%w: version %d, this build reads %d", ErrTokenFile, v, tokVersion)
	}
	vocab, width, count := le.Uint32(b[12:]), le.Uint32(b[16:]), le.Uint64(b[24:])
	if vocab == 0 || vocab > run.MaxModelDim {
		return TokenHeader{}, fmt.Errorf("%w: vocabulary of %d tokens", ErrTokenFile, vocab)
	}
	if int(width) != tokenWidth(int(vocab)) {
		return TokenHeader{}, fmt.Errorf("%w: %d bytes per token for a vocabulary of %d", ErrTokenFile, width, vocab)
	}
	if body := uint64(len(b) - tokHeaderSize); count > body/uint64(width) || count*uint64(width) != body {
		return TokenHeader{}, fmt.Errorf("%w: header says %d tokens, the file holds %d bytes of them", ErrTokenFile, count, body)
	}
	name := string(bytes.TrimRight(b[32:48], "\x00"))
	if run.TokenizerVocab(name) == 0 {
		return TokenHeader{}, fmt.Errorf("%w: unknown tokenizer %q", ErrTokenFile, name)
	}
	return TokenHeader{Tokenizer: name, Vocab: int(vocab), Count: int(count)}, nil
}

func tokenWidth(vocab int) int {
	if vocab <= 1<<16 {
		return 2
	}
	return 4
}

// EncodeTokens writes tokens as a token file of tokenizer to w.
func EncodeTokens(w io.Writer, tokenizer string, tokens []int32) error {
	vocab := run.TokenizerVocab(tokenizer)
	if vocab == 0 {
		return fmt.Errorf("unknown tokenizer %q (want %s)", tokenizer, strings.Join(run.Tokenizers, " or "))
	}
	width := tokenWidth(vocab)
	h := make([]byte, tokHeaderSize)
	copy(h, tokMagic)
	le := binary.LittleEndian
	le.PutUint32(h[8:], tokVersion)
	le.PutUint32(h[12:], uint32(vocab))
	le.PutUint32(h[16:], uint32(width))
	le.PutUint64(h[24:], uint64(len(tokens)))
	copy(h[32:], tokenizer)
	if _, err := w.Write(h); err != nil {
		return err
	}
	buf := make([]byte, 0, 1<<16)
	for i, t := range tokens {
		if t < 0 || int(t) >= vocab {
			return fmt.Errorf("token %d is %d, outside the vocabulary of %d", i, t, vocab)
		}
		if width == 2 {
			buf = le.AppendUint16(buf, uint16(t))
		} else {
			buf = le.AppendUint32(buf, uint32(t))
		}
		if len(buf) >= 1<<16-4 {
			if _, err := w.Write(buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
	}
	_, err := w.Write(buf)
	return err
}

// Tokenizer cuts text into subword tokens (GPT-2's) or bytes.
type Tokenizer struct {
	name  string
	codec tokenizer.Codec // nil for bytes
	eot   int32
}

// endOfText is how Decode writes the end-of-text token.
const endOfText = "<|endoftext|>"

// NewTokenizer returns the named tokenizer (run.TokenizerGPT2 or
// run.TokenizerBytes). GPT-2's vocabulary is compiled into the binary:
// nothing is downloaded.
func NewTokenizer(name string) (*Tokenizer, error) {
	switch name {
	case run.TokenizerGPT2:
		c, err := tokenizer.Get(tokenizer.R50kBase)
		if err != nil {
			return nil, err
		}
		return &Tokenizer{name: name, codec: c, eot: 50256}, nil
	case run.TokenizerBytes:
		return &Tokenizer{name: name, eot: 256}, nil
	}
	return nil, fmt.Errorf("unknown tokenizer %q (want %s)", name, strings.Join(run.Tokenizers, " or "))
}

// Name is the tokenizer's name, as the manifest records it.
func (t *Tokenizer) Name() string { return t.name }

// EndOfText is the token that separates documents.
func (t *Tokenizer) EndOfText() int32 { return t.eot }

// Encode cuts text into tokens. Any text encodes: GPT-2's byte-level BPE
// turns bytes that are not UTF-8 into U+FFFD; bytes keeps every byte.
func (t *Tokenizer) Encode(text string) ([]int32, error) {
	if t.codec == nil {
		out := make([]int32, len(text))
		for i := 0; i < len(text); i++ {
			out[i] = int32(text[i])
		}
		return out, nil
	}
	ids, _, err := t.codec.Encode(text)
	if err != nil {
		return nil, err
	}
	out := make([]int32, len(ids))
	for i, id := range ids {
		out[i] = int32(id)
	}
	return out, nil
}

// Decode turns tokens back into text; ids outside the vocabulary are an error.
func (t *Tokenizer) Decode(ids []int32) (string, error) {
	v := run.TokenizerVocab(t.name)
	u := make([]uint, len(ids))
	for i, id := range ids {
		if id < 0 || int(id) >= v {
			return "", fmt.Errorf("token %d is %d, outside the vocabulary of %d", i, id, v)
		}
		u[i] = uint(id)
	}
	if t.codec == nil {
		var b strings.Builder
		for _, id := range u {
			if int32(id) == t.eot {
				b.WriteString(endOfText)
			} else {
				b.WriteByte(byte(id))
			}
		}
		return b.String(), nil
	}
	return t.codec.Decode(u)
}

// CorpusFiles lists the files named by paths: a file as itself, a folder as
// every regular file under it whose name ends in one of exts (all files when
// exts is empty), in lexical order. Hidden folders (.git) are skipped.
func CorpusFiles(paths []string, exts []string) ([]string, error) {
	var out []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			out = append(out, p)
			continue
		}
		var found []string
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				if path != p && strings.HasPrefix(d.Name(), ".") {
					return filepath.SkipDir
				}
				return nil
			}
			if !d.Type().IsRegular() {
				return nil
			}
			if len(exts) > 0 && !hasAnySuffix(d.Name(), exts) {
				return nil
			}
			found = append(found, path)
			return nil
		})
		if err != nil {
			return nil, err
		}
		sort.Strings(found)
		out = append(out, found...)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no files found in %s", strings.Join(paths, ", "))
	}
	return out, nil
}

func hasAnySuffix(s string, sfx []string) bool {
	for _, x := range sfx {
		if strings.HasSuffix(s, x) {
			return true
		}
	}
	return false
}

// TokenizeFiles reads the files in order and returns their tokens, each file
// followed by the end-of-text token, and the bytes read.
func TokenizeFiles(t *Tokenizer, files []string) ([]int32, int64, error) {
	var out []int32
	var n int64
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, 0, err
		}
		n += int64(len(b))
		ids, err := t.Encode(string(b))
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", f, err)
		}
		out = append(append(out, ids...), t.EndOfText())
	}
	return out, n, nil
}
