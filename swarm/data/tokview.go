package data

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"github.com/swarm-train/swarm/spec/run"
)

// Tokens is a read-only token stream: the ids of a character corpus in
// memory, or a token file's tokens read in place from the file's
// memory-mapped bytes (TokenFile), so a node holds no copy of a large
// corpus on its heap.
type Tokens struct {
	i32 []int32
	u16 []uint16 // a 2-byte token file's body, little-endian hosts
	m   *mapping // keeps the mapping alive while a view of it is
}

// IDs wraps ids in memory as Tokens.
func IDs(ids []int32) Tokens { return Tokens{i32: ids} }

// Len is the number of tokens.
func (t Tokens) Len() int {
	if t.u16 != nil {
		return len(t.u16)
	}
	return len(t.i32)
}

// Slice is tokens [lo, hi).
func (t Tokens) Slice(lo, hi int) Tokens {
	if t.u16 != nil {
		return Tokens{u16: t.u16[lo:hi], m: t.m}
	}
	return Tokens{i32: t.i32[lo:hi]}
}

// Copy writes tokens [start, start+len(dst)) into dst.
func (t Tokens) Copy(dst []int32, start int) {
	if t.u16 == nil {
		copy(dst, t.i32[start:start+len(dst)])
		return
	}
	src := t.u16[start : start+len(dst)]
	for i, v := range src {
		dst[i] = int32(v)
	}
}

// Mapped says whether the tokens are read from a memory-mapped file.
func (t Tokens) Mapped() bool { return t.u16 != nil }

// mapping is a file mapped read-only; it is unmapped once unreachable.
type mapping struct{ b []byte }

// TokenFile opens a token file of the run's tokenizer at path: the file is
// memory-mapped where the platform allows (read in otherwise), its SHA-256
// checked against sha (hex; "" skips), its header against the tokenizer and
// every token against the vocabulary, as DecodeTokens does, without a copy
// of its tokens on the heap. Errors name the file.
func TokenFile(path, tokenizer, sha string) (Tokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return Tokens{}, fmt.Errorf("read corpus: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Tokens{}, fmt.Errorf("read corpus: %w", err)
	}
	if st.Size() == 0 {
		return Tokens{}, fmt.Errorf("corpus %s is empty", path)
	}
	b, mapped, err := mapFile(f, st.Size())
	if err != nil {
		return Tokens{}, fmt.Errorf("read corpus %s: %w", path, err)
	}
	m := &mapping{b: b}
	if mapped {
		runtime.SetFinalizer(m, func(m *mapping) { unmapFile(m.b) })
	}
	release := func() {
		if mapped {
			runtime.SetFinalizer(m, nil)
			unmapFile(m.b)
		}
	}
	if sha != "" {
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != sha {
			release()
			return Tokens{}, fmt.Errorf("dataset.sha256: corpus %s has sha256 %x, the run's is %s", path, sum, sha)
		}
	}
	t, err := tokenView(b, tokenizer, m)
	if err != nil {
		release()
		return Tokens{}, fmt.Errorf("dataset.path: %s: %w", path, err)
	}
	return t, nil
}

// littleEndian: the host stores a uint16 as the file does.
var littleEndian = func() bool { x := uint16(1); return *(*byte)(unsafe.Pointer(&x)) == 1 }()

// tokenView checks a token file's bytes as DecodeTokens does and views its
// tokens in place (2-byte tokens on a little-endian host), or decodes them.
func tokenView(b []byte, tokenizer string, m *mapping) (Tokens, error) {
	h, err := ParseTokenHeader(b)
	if err != nil {
		return Tokens{}, err
	}
	if h.Tokenizer != tokenizer {
		return Tokens{}, fmt.Errorf("%w: written with tokenizer %q, the run's is %q", ErrTokenFile, h.Tokenizer, tokenizer)
	}
	if v := run.TokenizerVocab(tokenizer); h.Vocab != v {
		return Tokens{}, fmt.Errorf("%w: vocabulary of %d tokens, tokenizer %s has %d", ErrTokenFile, h.Vocab, tokenizer, v)
	}
	body := b[tokHeaderSize:]
	if tokenWidth(h.Vocab) != 2 || !littleEndian || h.Count == 0 || uintptr(unsafe.Pointer(&body[0]))%2 != 0 {
		ids, err := DecodeTokens(b, tokenizer)
		if err != nil {
			return Tokens{}, err
		}
		return IDs(ids), nil
	}
	u := unsafe.Slice((*uint16)(unsafe.Pointer(&body[0])), h.Count)
	for i, v := range u {
		if int(v) >= h.Vocab {
			return Tokens{}, fmt.Errorf("%w: token %d is %d, outside the vocabulary of %d", ErrTokenFile, i, v, h.Vocab)
		}
	}
	return Tokens{u16: u, m: m}, nil
}

var errNoMmap = errors.New("memory mapping unavailable")
