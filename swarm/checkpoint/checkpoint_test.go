package checkpoint

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/swarm-train/swarm/internal/atomicfile"
	"github.com/swarm-train/swarm/internal/testutil"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/data"
)

func randState(seed uint64, step int64) *State {
	rng := rand.New(rand.NewPCG(seed, 1))
	s := &State{RunID: "bafkreitest", Step: step, Samples: step * 128, Position: data.Position{Epoch: 2, Offset: 77}}
	for i := 0; i < 3; i++ {
		sh := ShardState{Index: i, Params: make([]float32, 100+i*37), OptState: make([]float32, 2*(100+i*37))}
		for j := range sh.Params {
			sh.Params[j] = float32(rng.NormFloat64())
		}
		for j := range sh.OptState {
			sh.OptState[j] = float32(rng.ExpFloat64())
		}
		s.Shards = append(s.Shards, sh)
	}
	// Values whose bits a careless encoder would change.
	s.Shards[0].Params[0] = float32(math.Copysign(0, -1))
	s.Shards[0].Params[1] = math.Float32frombits(0x7fc00123) // NaN with a payload
	s.Shards[0].Params[2] = math.Float32frombits(1)          // smallest subnormal
	return s
}

func encode(t testing.TB, s *State) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Encode(&buf, s); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func sameBits(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

func TestRoundTripBitExact(t *testing.T) {
	s := randState(1, 42)
	got, err := Decode(encode(t, s))
	if err != nil {
		t.Fatal(err)
	}
	if got.RunID != s.RunID || got.Step != s.Step || got.Samples != s.Samples || got.Position != s.Position || len(got.Shards) != 3 {
		t.Fatalf("metadata: got %+v", got)
	}
	for i := range s.Shards {
		if got.Shards[i].Index != i || !sameBits(got.Shards[i].Params, s.Shards[i].Params) || !sameBits(got.Shards[i].OptState, s.Shards[i].OptState) {
			t.Fatalf("shard %d buffers differ", i)
		}
	}
}

func TestDecodeRejectsDamage(t *testing.T) {
	b := encode(t, randState(2, 7))
	cases := map[string][]byte{
		"empty":          nil,
		"header only":    b[:headerSize],
		"truncated body": b[:len(b)-1],
		"extra byte":     append(append([]byte{}, b...), 0),
		"bad magic":      append([]byte("XXXXXXXX"), b[8:]...),
	}
	flip := append([]byte{}, b...)
	flip[len(flip)-5] ^= 0x10
	cases["flipped data bit"] = flip
	hdr := append([]byte{}, b...)
	binary.LittleEndian.PutUint32(hdr[8:], 99)
	cases["future version"] = hdr
	for name, bad := range cases {
		if _, err := Decode(bad); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: err = %v, want ErrCorrupt", name, err)
		}
	}
}

func TestDirKeepsLastKAndFallsBack(t *testing.T) {
	d := &Dir{Path: filepath.Join(t.TempDir(), "ckpt"), Keep: 3}
	if _, _, err := d.Latest(); !errors.Is(err, ErrNone) {
		t.Fatalf("empty folder: %v", err)
	}
	for step := int64(1); step <= 5; step++ {
		if _, err := d.Save(randState(uint64(step), step*10)); err != nil {
			t.Fatal(err)
		}
	}
	files, err := d.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 3 || files[0].Step != 30 || files[2].Step != 50 {
		t.Fatalf("kept %+v, want steps 30, 40, 50", files)
	}
	// A leftover temporary file from a crash is ignored.
	os.WriteFile(filepath.Join(d.Path, ".ckpt-000000000060.swck.123.tmp"), []byte("partial"), 0o644)

	// Truncate the newest: Latest reports it and uses the previous one.
	b, _ := os.ReadFile(files[2].Path)
	os.WriteFile(files[2].Path, b[:len(b)/2], 0o644)
	var skipped []string
	d.OnSkip = func(p string, err error) {
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), p) {
			t.Errorf("skip error %v does not name %s as corrupt", err, p)
		}
		skipped = append(skipped, p)
	}
	s, path, err := d.Latest()
	if err != nil || s.Step != 40 || path != files[1].Path {
		t.Fatalf("Latest = step %v %s %v, want step 40", s, path, err)
	}
	if len(skipped) != 1 || skipped[0] != files[2].Path {
		t.Fatalf("skipped %v", skipped)
	}
	want := randState(4, 40)
	if !sameBits(s.Shards[1].Params, want.Shards[1].Params) {
		t.Fatal("fallback checkpoint content differs from what was saved")
	}
	// Corrupt the other two as well: nothing verifies.
	for _, f := range files[:2] {
		b, _ := os.ReadFile(f.Path)
		b[headerSize+3] ^= 1
		os.WriteFile(f.Path, b, 0o644)
	}
	if _, _, err := d.Latest(); !errors.Is(err, ErrNone) || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("all damaged: %v", err)
	}
}

func TestExportSafetensors(t *testing.T) {
	text := "the quick brown fox jumps over the lazy dog"
	m := run.NewGPTChar(data.Charset(text), 3)
	m.Model.NLayer, m.Model.NEmbd, m.Model.BlockSize = 3, 16, 8
	m.Shards = run.EvenShards(3, 3)
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	var params [][]float32
	want := map[string][]float32{}
	for i := range m.Shards {
		p, err := m.InitParams(i)
		if err != nil {
			t.Fatal(err)
		}
		params = append(params, p)
		layout, _ := m.Layout(i)
		for _, ts := range layout {
			want[ts.Name] = p[ts.Offset : ts.Offset+ts.Size()]
		}
	}
	var buf bytes.Buffer
	if err := ExportSafetensors(&buf, m, params, map[string]string{"step": "9"}); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if hl := binary.LittleEndian.Uint64(b); (8+hl)%8 != 0 {
		t.Fatalf("data not 8-byte aligned: header %d bytes", hl)
	}
	tensors, md, dataSec, err := ReadSafetensors(b)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := m.ID()
	if md["run_id"] != id.String() || md["step"] != "9" || md["arch"] != run.ArchGPTChar {
		t.Fatalf("metadata %v", md)
	}
	if len(tensors) != len(want) {
		t.Fatalf("%d tensors, want %d", len(tensors), len(want))
	}
	for name, w := range want {
		ti, ok := tensors[name]
		if !ok {
			t.Fatalf("tensor %s missing", name)
		}
		if ti.DType != "F32" {
			t.Fatalf("%s dtype %s", name, ti.DType)
		}
		raw := dataSec[ti.Offsets[0]:ti.Offsets[1]]
		for j := range w {
			if math.Float32frombits(binary.LittleEndian.Uint32(raw[4*j:])) != w[j] {
				t.Fatalf("%s[%d] differs", name, j)
			}
		}
	}
	if s := tensors["h1.attn.qkv.w"].Shape; len(s) != 2 || s[0] != 48 || s[1] != 16 {
		t.Fatalf("h1.attn.qkv.w shape %v", s)
	}
	if err := ExportSafetensors(&buf, m, params[:2], nil); err == nil {
		t.Fatal("export with a shard missing accepted")
	}
}

func FuzzDecode(f *testing.F) {
	good := encode(f, randState(3, 1))
	f.Add(good)
	f.Add(good[:headerSize+10])
	f.Add(encode(f, &State{RunID: "x"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Decode(b)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to the same bytes.
		if again := encode(t, s); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs: %d vs %d bytes", len(again), len(b))
		}
	})
}

func FuzzReadSafetensors(f *testing.F) {
	m := run.NewMLPMNIST(1)
	m.Model.Hidden = []int{3}
	m.Model.Input, m.Model.Classes = 4, 2
	m.Shards = run.EvenShards(2, 1)
	p, _ := m.InitParams(0)
	var buf bytes.Buffer
	if err := ExportSafetensors(&buf, m, [][]float32{p}, nil); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte{2, 0, 0, 0, 0, 0, 0, 0, '{', '}'})
	f.Add([]byte(`xxxxxxxx{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		tensors, _, dataSec, err := ReadSafetensors(b)
		if err != nil {
			return
		}
		for name, ti := range tensors {
			if ti.Offsets[1] > int64(len(dataSec)) || ti.Offsets[0] > ti.Offsets[1] {
				t.Fatalf("%s: offsets %v outside %d bytes", name, ti.Offsets, len(dataSec))
			}
		}
	})
}

// TestSaveDiskFull: a checkpoint that does not fit fails with the disk-full
// error naming the file, and the previous checkpoint stays the newest that
// loads.
func TestSaveDiskFull(t *testing.T) {
	disk := testutil.SmallDisk(t, 256<<10)
	d := &Dir{Path: filepath.Join(disk, "ckpt")}
	if _, err := d.Save(randState(1, 10)); err != nil {
		t.Fatal(err)
	}
	testutil.FillDisk(t, disk)
	_, err := d.Save(randState(2, 20))
	if !errors.Is(err, atomicfile.ErrDiskFull) || !strings.Contains(err.Error(), filepath.Join(d.Path, "ckpt-000000000020")) {
		t.Fatalf("Save on a full disk: %v, want ErrDiskFull naming ckpt-000000000020", err)
	}
	t.Logf("full disk: %v", err)
	s, path, err := d.Latest()
	if err != nil || s.Step != 10 {
		t.Fatalf("after a failed save: %v, step %v at %s; want step 10 intact", err, s, path)
	}
	files, _ := d.List()
	if len(files) != 1 {
		t.Fatalf("%d checkpoints listed, want the one that was written", len(files))
	}
}
