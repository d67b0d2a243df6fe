package data

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/spec/run"
)

func gpt2(t testing.TB) *Tokenizer {
	t.Helper()
	tk, err := NewTokenizer(run.TokenizerGPT2)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func TestGPT2Tokenizer(t *testing.T) {
	tk := gpt2(t)
	// GPT-2's published ids for "Hello world".
	ids, err := tk.Encode("Hello world")
	if err != nil || !slices.Equal(ids, []int32{15496, 995}) {
		t.Fatalf("Hello world = %v (%v), want [15496 995]", ids, err)
	}
	src := "package main\n\nfunc main() {\n\tprintln(\"héllo, 世界\")\n}\n\x00"
	ids, err = tk.Encode(src)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) >= len(src)/2 {
		t.Errorf("%d tokens for %d bytes: no merges?", len(ids), len(src))
	}
	if back, err := tk.Decode(ids); err != nil || back != src {
		t.Fatalf("round trip: %q (%v)", back, err)
	}
	// Bytes that are not UTF-8 encode as U+FFFD.
	if ids, err := tk.Encode("a\xffb"); err != nil || len(ids) == 0 {
		t.Fatalf("invalid UTF-8: %v (%v)", ids, err)
	}
	if _, err := tk.Decode([]int32{50257}); err == nil {
		t.Error("decoded a token outside the vocabulary")
	}
	if _, err := NewTokenizer("cl100k"); err == nil {
		t.Error("unknown tokenizer accepted")
	}
}

// The byte tokenizer: every byte is its own token, invalid UTF-8 included,
// 256 ends a document; its token files round-trip, and a GPT-2 run refuses
// them.
func TestBytesTokenizer(t *testing.T) {
	tk, err := NewTokenizer(run.TokenizerBytes)
	if err != nil {
		t.Fatal(err)
	}
	text := "func main() {\n\t\xff é}"
	ids, err := tk.Encode(text)
	if err != nil || len(ids) != len(text) || ids[0] != 'f' || ids[len("func main() {\n\t")] != 0xff {
		t.Fatalf("encoded %v (%v)", ids, err)
	}
	back, err := tk.Decode(append(ids, tk.EndOfText()))
	if err != nil || back != text+"<|endoftext|>" || tk.EndOfText() != 256 || run.TokenizerVocab(run.TokenizerBytes) != 257 {
		t.Fatalf("decoded %q (%v)", back, err)
	}
	if _, err := tk.Decode([]int32{257}); err == nil {
		t.Fatal("decoded a token outside the vocabulary")
	}
	var buf bytes.Buffer
	if err := EncodeTokens(&buf, run.TokenizerBytes, append(ids, 256)); err != nil {
		t.Fatal(err)
	}
	got, err := DecodeTokens(buf.Bytes(), run.TokenizerBytes)
	if err != nil || !slices.Equal(got, append(ids, 256)) {
		t.Fatalf("token file: %v (%v)", got, err)
	}
	if _, err := DecodeTokens(buf.Bytes(), run.TokenizerGPT2); err == nil || !strings.Contains(err.Error(), `"bytes"`) {
		t.Fatalf("a bytes token file for a gpt2 run: %v", err)
	}
}

func TestTokenFileRoundTrip(t *testing.T) {
	toks := []int32{0, 1, 50256, 15496, 995, 50256}
	var buf bytes.Buffer
	if err := EncodeTokens(&buf, run.TokenizerGPT2, toks); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != tokHeaderSize+2*len(toks) {
		t.Fatalf("file of %d bytes", buf.Len())
	}
	got, err := DecodeTokens(buf.Bytes(), run.TokenizerGPT2)
	if err != nil || !slices.Equal(got, toks) {
		t.Fatalf("decoded %v (%v), want %v", got, err, toks)
	}
	if err := EncodeTokens(&bytes.Buffer{}, run.TokenizerGPT2, []int32{50257}); err == nil {
		t.Error("wrote a token outside the vocabulary")
	}
	good := buf.Bytes()
	edit := func(f func(b []byte) []byte) []byte { return f(slices.Clone(good)) }
	for _, c := range []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "not a token file"},
		{"text", []byte("package main\n" + strings.Repeat(" ", 60)), "not a token file"},
		{"version", edit(func(b []byte) []byte { b[8] = 2; return b }), "version 2"},
		{"vocabulary", edit(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[12:], 50000); return b }), "vocabulary of 50000"},
		{"width", edit(func(b []byte) []byte { b[16] = 4; return b }), "bytes per token"},
		{"truncated", good[:len(good)-1], "header says 6 tokens"},
		{"count past the end", edit(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[24:], 1<<62); return b }), "header says"},
		{"other tokenizer", edit(func(b []byte) []byte { copy(b[32:], "bpe\x00\x00"); return b }), "unknown tokenizer"},
		{"token out of range", edit(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[tokHeaderSize+4:], 60000); return b }), "token 2 is 60000"},
	} {
		_, err := DecodeTokens(c.b, run.TokenizerGPT2)
		if !errors.Is(err, ErrTokenFile) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want ErrTokenFile mentioning %q", c.name, err, c.want)
		}
	}
}

// TestTokenRun: files tokenized into a token file feed a llama run whose
// manifest pins the file; a file changed afterwards is refused by its hash.
func TestTokenRun(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "pkg"), 0o755)
	os.MkdirAll(filepath.Join(src, ".git"), 0o755)
	body := strings.Repeat("func add(a, b int) int {\n\treturn a + b\n}\n\n", 40)
	os.WriteFile(filepath.Join(src, "a.go"), []byte("package a\n"+body), 0o644)
	os.WriteFile(filepath.Join(src, "pkg", "b.go"), []byte("package b\n"+body), 0o644)
	os.WriteFile(filepath.Join(src, "notes.txt"), []byte("not Go"), 0o644)
	os.WriteFile(filepath.Join(src, ".git", "c.go"), []byte("hidden"), 0o644)
	files, err := CorpusFiles([]string{src}, []string{".go"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{filepath.Join(src, "a.go"), filepath.Join(src, "pkg", "b.go")}; !slices.Equal(files, want) {
		t.Fatalf("files %v, want %v", files, want)
	}
	tk := gpt2(t)
	toks, n, err := TokenizeFiles(tk, files)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(2*(len(body)+10)) || toks[len(toks)-1] != tk.EndOfText() || slices.Index(toks, tk.EndOfText()) == len(toks)-1 {
		t.Fatalf("%d bytes, %d tokens: want two documents each ended by <|endoftext|>", n, len(toks))
	}
	var buf bytes.Buffer
	if err := EncodeTokens(&buf, tk.Name(), toks); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "corpus.tok")
	os.WriteFile(path, buf.Bytes(), 0o644)

	m, err := run.NewLlama(run.PresetLlamaTiny, "ab", 1)
	if err != nil {
		t.Fatal(err)
	}
	m.Model.Vocab, m.Model.BlockSize = run.TokenizerVocab(run.TokenizerGPT2), 16
	m.Dataset = run.DatasetSpec{Name: run.DatasetText, Path: path, SHA256: CorpusSHA256(buf.String()), Tokenizer: run.TokenizerGPT2, ValFraction: 0.2}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := NewSource(m, "")
	if err != nil {
		t.Fatal(err)
	}
	b := s.Next(3)
	if b.N != 3 || len(b.Tokens) != 3*16 || len(b.Targets) != 3*16 {
		t.Fatalf("batch %+v", b)
	}
	if !slices.Equal(b.Tokens[1:16], b.Targets[:15]) {
		t.Fatal("targets are not the next tokens")
	}
	if _, err := engineBatchOK(b, m.Model.Vocab); err != nil {
		t.Fatal(err)
	}
	if l, _, err := BigramBaseline(m); err != nil || !(l > 0) {
		t.Fatalf("bigram baseline %g (%v)", l, err)
	}

	// The file changes: the pinned hash refuses it, naming the field.
	os.WriteFile(path, append(buf.Bytes(), 0, 0), 0o644)
	if _, err := NewSource(m, ""); err == nil || !strings.Contains(err.Error(), "dataset.sha256") {
		t.Fatalf("changed token file: %v", err)
	}
	// A token file of another vocabulary under a manifest that pins it.
	bad := slices.Clone(buf.Bytes())
	binary.LittleEndian.PutUint32(bad[12:], 256)
	os.WriteFile(path, bad, 0o644)
	m.Dataset.SHA256 = CorpusSHA256(string(bad))
	if _, err := NewSource(m, ""); err == nil || !strings.Contains(err.Error(), "dataset.path") || !strings.Contains(err.Error(), "corpus.tok") {
		t.Fatalf("token file of another vocabulary: %v", err)
	}
}

func engineBatchOK(b *engine.Batch, vocab int) (bool, error) {
	for _, v := range append(slices.Clone(b.Tokens), b.Targets...) {
		if v < 0 || int(v) >= vocab {
			return false, errors.New("token outside the vocabulary")
		}
	}
	return true, nil
}

func FuzzDecodeTokens(f *testing.F) {
	var buf bytes.Buffer
	EncodeTokens(&buf, run.TokenizerGPT2, []int32{1, 2, 50256})
	f.Add(buf.Bytes())
	f.Add(buf.Bytes()[:tokHeaderSize])
	f.Add([]byte("SWARMTOK"))
	f.Fuzz(func(t *testing.T, b []byte) {
		toks, err := DecodeTokens(b, run.TokenizerGPT2)
		if err != nil {
			if !errors.Is(err, ErrTokenFile) {
				t.Fatalf("error %v does not wrap ErrTokenFile", err)
			}
			return
		}
		for _, v := range toks {
			if v < 0 || v >= 50257 {
				t.Fatalf("token %d accepted", v)
			}
		}
		if len(b) != tokHeaderSize+2*len(toks) {
			t.Fatalf("%d tokens from %d bytes", len(toks), len(b))
		}
	})
}

// TestTokenFileMapped: a token file is read in place from its mapping (on
// Unix) and gives the tokens DecodeTokens gives; its windows are the same
// as those of the decoded copy; a wrong hash, a token outside the
// vocabulary and a foreign tokenizer are refused naming the file.
func TestTokenFileMapped(t *testing.T) {
	ids := make([]int32, 5000)
	for i := range ids {
		ids[i] = int32((i * 7919) % 50257)
	}
	var buf bytes.Buffer
	if err := EncodeTokens(&buf, run.TokenizerGPT2, ids); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "c.tok")
	os.WriteFile(path, buf.Bytes(), 0o644)
	tk, err := TokenFile(path, run.TokenizerGPT2, CorpusSHA256(buf.String()))
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS == "linux" && !tk.Mapped() {
		t.Fatal("token file read into memory, not mapped")
	}
	if tk.Len() != len(ids) {
		t.Fatalf("%d tokens, want %d", tk.Len(), len(ids))
	}
	got := make([]int32, 300)
	tk.Slice(1000, 2000).Copy(got, 17)
	if !slices.Equal(got, ids[1017:1317]) {
		t.Fatal("a window of the mapped tokens differs from the file's")
	}
	for _, c := range []struct {
		b         []byte
		tokenizer string
		sha       string
		want      string
	}{
		{buf.Bytes(), run.TokenizerGPT2, strings.Repeat("0", 64), "dataset.sha256"},
		{buf.Bytes(), run.TokenizerBytes, "", `"gpt2"`},
		{func() []byte {
			b := slices.Clone(buf.Bytes())
			binary.LittleEndian.PutUint16(b[tokHeaderSize+2*4321:], 50257)
			return b
		}(), run.TokenizerGPT2, "", "token 4321"},
	} {
		os.WriteFile(path, c.b, 0o644)
		if _, err := TokenFile(path, c.tokenizer, c.sha); err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %v, want an error naming %s and %q", c.want, err, path, c.want)
		}
	}
}

// FuzzTokenView: the in-place view of a token file accepts exactly what
// DecodeTokens accepts and gives the same tokens.
func FuzzTokenView(f *testing.F) {
	var buf bytes.Buffer
	EncodeTokens(&buf, run.TokenizerGPT2, []int32{1, 2, 50256})
	f.Add(buf.Bytes())
	f.Add(buf.Bytes()[:tokHeaderSize])
	f.Fuzz(func(t *testing.T, b []byte) {
		want, werr := DecodeTokens(b, run.TokenizerGPT2)
		// A copy at an even address, as a mapping's page-aligned bytes are.
		al := make([]uint16, (len(b)+1)/2)
		c := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(al))), len(b))
		copy(c, b)
		got, gerr := tokenView(c, run.TokenizerGPT2, nil)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("DecodeTokens: %v; tokenView: %v", werr, gerr)
		}
		if werr != nil {
			return
		}
		ids := make([]int32, got.Len())
		got.Copy(ids, 0)
		if !slices.Equal(ids, want) {
			t.Fatal("tokenView and DecodeTokens differ")
		}
	})
}
