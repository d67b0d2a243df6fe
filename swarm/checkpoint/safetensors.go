package checkpoint

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"

	"github.com/swarm-train/swarm/spec/run"
)

// TensorInfo is one entry of a safetensors header.
type TensorInfo struct {
	DType   string   `json:"dtype"`
	Shape   []int    `json:"shape"`
	Offsets [2]int64 `json:"data_offsets"` // [begin, end) in bytes from the start of the data
}

// ErrSafetensors wraps every safetensors parsing error.
var ErrSafetensors = errors.New("safetensors: invalid file")

const maxSafetensorsHeader = 100 << 20

// ExportSafetensors writes the whole model — params[i] is shard i's flat
// parameter buffer — as one safetensors file: every tensor of
// run.Manifest.Layout under its layout name, float32, little-endian, in
// layout order. metadata lands in the header's __metadata__ (the run ID and
// the architecture are always added).
func ExportSafetensors(w io.Writer, m *run.Manifest, params [][]float32, metadata map[string]string) error {
	return exportNamed(w, m, params, metadata, func(name string) string { return name })
}

// exportNamed writes every tensor of the run's layout under rename(name),
// in layout order.
func exportNamed(w io.Writer, m *run.Manifest, params [][]float32, metadata map[string]string, rename func(string) string) error {
	if len(params) != len(m.Shards) {
		return fmt.Errorf("export: %d parameter buffers for %d shards", len(params), len(m.Shards))
	}
	id, err := m.ID()
	if err != nil {
		return err
	}
	md := map[string]string{"run_id": id.String(), "arch": m.Model.Arch, "format": "pt"}
	for k, v := range metadata {
		md[k] = v
	}
	var tensors []namedTensor
	for i, p := range params {
		layout, err := m.Layout(i)
		if err != nil {
			return err
		}
		want := 0
		for _, t := range layout {
			want += t.Size()
		}
		if len(p) != want {
			return fmt.Errorf("export: shard %d has %d parameters, layout wants %d", i, len(p), want)
		}
		for _, t := range layout {
			tensors = append(tensors, namedTensor{rename(t.Name), t.Shape, p[t.Offset : t.Offset+t.Size()]})
		}
	}
	return writeSafetensors(w, tensors, md)
}

// namedTensor is one float32 tensor of a safetensors file.
type namedTensor struct {
	name  string
	shape []int
	data  []float32
}

// writeSafetensors writes tensors, in order, as one safetensors file:
// 8 bytes of little-endian header length, the JSON header (each tensor's
// dtype, shape and [begin, end) byte offsets into the data, and
// __metadata__), padded with spaces so the data starts 8-byte aligned, then
// the tensors' float32 values, little-endian.
func writeSafetensors(w io.Writer, tensors []namedTensor, metadata map[string]string) error {
	header := map[string]any{"__metadata__": metadata}
	var off int64
	for _, t := range tensors {
		if _, dup := header[t.name]; dup {
			return fmt.Errorf("export: tensor %q appears twice", t.name)
		}
		n := int64(len(t.data)) * 4
		header[t.name] = TensorInfo{DType: "F32", Shape: t.shape, Offsets: [2]int64{off, off + n}}
		off += n
	}
	hj, err := json.Marshal(header)
	if err != nil {
		return err
	}
	for (8+len(hj))%8 != 0 {
		hj = append(hj, ' ')
	}
	bw := bufio.NewWriterSize(w, 1<<16)
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(hj)))
	bw.Write(n[:])
	bw.Write(hj)
	var buf [4]byte
	for _, t := range tensors {
		for _, x := range t.data {
			binary.LittleEndian.PutUint32(buf[:], math.Float32bits(x))
			bw.Write(buf[:])
		}
	}
	return bw.Flush()
}

// ReadSafetensors parses a safetensors file's header and checks that the
// tensors tile the data exactly. It returns the tensors, the metadata and
// the data section.
func ReadSafetensors(b []byte) (map[string]TensorInfo, map[string]string, []byte, error) {
	bad := func(format string, args ...any) (map[string]TensorInfo, map[string]string, []byte, error) {
		return nil, nil, nil, fmt.Errorf("%w: %s", ErrSafetensors, fmt.Sprintf(format, args...))
	}
	if len(b) < 8 {
		return bad("%d bytes, no header length", len(b))
	}
	n := binary.LittleEndian.Uint64(b)
	if n > maxSafetensorsHeader || n > uint64(len(b)-8) {
		return bad("header length %d out of range", n)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &raw); err != nil {
		return bad("header: %v", err)
	}
	dataSec := b[8+n:]
	tensors := map[string]TensorInfo{}
	var md map[string]string
	type span struct{ a, b int64 }
	var spans []span
	for name, v := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(v, &md); err != nil {
				return bad("__metadata__: %v", err)
			}
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(v))
		dec.DisallowUnknownFields()
		var ti TensorInfo
		if err := dec.Decode(&ti); err != nil {
			return bad("tensor %q: %v", name, err)
		}
		size := map[string]int64{"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I32": 4, "I64": 8, "U8": 1, "I8": 1}[ti.DType]
		if size == 0 {
			return bad("tensor %q: unknown dtype %q", name, ti.DType)
		}
		elems := int64(1)
		for _, d := range ti.Shape {
			if d < 0 || (d > 0 && elems > math.MaxInt64/int64(d)/size) {
				return bad("tensor %q: shape %v out of range", name, ti.Shape)
			}
			elems *= int64(d)
		}
		if ti.Offsets[0] < 0 || ti.Offsets[1]-ti.Offsets[0] != elems*size || ti.Offsets[1] > int64(len(dataSec)) {
			return bad("tensor %q: offsets %v do not hold shape %v of %s in %d data bytes", name, ti.Offsets, ti.Shape, ti.DType, len(dataSec))
		}
		tensors[name] = ti
		spans = append(spans, span{ti.Offsets[0], ti.Offsets[1]})
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].a < spans[j].a })
	var end int64
	for _, s := range spans {
		if s.a != end {
			return bad("tensor data overlaps or leaves a gap at byte %d", end)
		}
		end = s.b
	}
	if end != int64(len(dataSec)) {
		return bad("tensors cover %d of %d data bytes", end, len(dataSec))
	}
	return tensors, md, dataSec, nil
}
