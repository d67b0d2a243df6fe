package torch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"reflect"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	meta := map[string]any{"tape": 7, "train": true}
	ts := []tensor{f32([]float32{1, -2.5, float32(math.Inf(1))}), i32([]int32{-3, 0, 1 << 30}), f32(nil)}
	if err := encodeFrame(&buf, msgForward, 42, meta, ts); err != nil {
		t.Fatal(err)
	}
	f, err := readFrame(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if f.Type != msgForward || f.ID != 42 || f.Meta["tape"] != float64(7) || f.Meta["train"] != true {
		t.Fatalf("header/meta: %+v", f)
	}
	if len(f.Tensors) != 3 || !reflect.DeepEqual(f.Tensors[0].F, ts[0].F) || !reflect.DeepEqual(f.Tensors[1].I, ts[1].I) || f.Tensors[2].len() != 0 {
		t.Fatalf("tensors: %+v", f.Tensors)
	}
}

func TestFrameRejects(t *testing.T) {
	good := func() []byte {
		var buf bytes.Buffer
		if err := encodeFrame(&buf, msgOK, 1, map[string]any{"a": 1}, []tensor{f32([]float32{1, 2})}); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	cases := map[string]func(b []byte) []byte{
		"bad magic":        func(b []byte) []byte { b[0] ^= 1; return b },
		"bad version":      func(b []byte) []byte { b[4] = 9; return b },
		"huge length":      func(b []byte) []byte { binary.LittleEndian.PutUint32(b[12:], MaxFrame+1); return b },
		"truncated":        func(b []byte) []byte { return b[:len(b)-3] },
		"meta past end":    func(b []byte) []byte { binary.LittleEndian.PutUint32(b[16:], 1000); return b },
		"meta not object":  func(b []byte) []byte { copy(b[20:], `[1,2,3]`); return b },
		"tensor past end":  func(b []byte) []byte { binary.LittleEndian.PutUint32(b[len(b)-12:], 1<<31); return b },
		"unknown dtype":    func(b []byte) []byte { b[len(b)-13] = 9; return b },
		"too many tensors": func(b []byte) []byte { binary.LittleEndian.PutUint32(b[len(b)-20:], MaxTensors+1); return b },
		"trailing bytes": func(b []byte) []byte {
			b = append(b, 0)
			binary.LittleEndian.PutUint32(b[12:], binary.LittleEndian.Uint32(b[12:])+1)
			return b
		},
	}
	for name, mutate := range cases {
		_, err := readFrame(bytes.NewReader(mutate(good())))
		if err == nil {
			t.Errorf("%s: accepted", name)
		} else if !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v, want ErrProtocol", name, err)
		}
	}
}

// FuzzReadFrame: any bytes decode to a frame or an error, never a panic or
// an allocation beyond what the input's declared (and checked) sizes allow;
// a decoded frame re-encodes to the same frame.
func FuzzReadFrame(f *testing.F) {
	for _, ts := range [][]tensor{nil, {f32([]float32{1, 2, 3})}, {i32([]int32{5}), f32(nil)}} {
		var buf bytes.Buffer
		if err := encodeFrame(&buf, msgStep, 3, map[string]any{"lr": 0.1}, ts); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Add([]byte("SWTW\x02\x00\x40\x00\x01\x00\x00\x00\x08\x00\x00\x00\x02\x00\x00\x00{}\x00\x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := readFrame(bytes.NewReader(data))
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := encodeFrame(&buf, fr.Type, fr.ID, fr.Meta, fr.Tensors); err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		again, err := readFrame(&buf)
		if err != nil {
			t.Fatalf("decode re-encoded: %v", err)
		}
		if again.Type != fr.Type || again.ID != fr.ID || len(again.Tensors) != len(fr.Tensors) {
			t.Fatalf("round trip changed the frame")
		}
		for i := range fr.Tensors {
			if fr.Tensors[i].isInt() != again.Tensors[i].isInt() || fr.Tensors[i].len() != again.Tensors[i].len() {
				t.Fatalf("tensor %d changed", i)
			}
		}
	})
}

// TestFrameLargeAndUnaligned: tensors past the inline size are written from
// their own memory, decode to the same values, and a payload that is not
// 4-byte aligned in memory decodes by conversion to the same frame.
func TestFrameLargeAndUnaligned(t *testing.T) {
	big := make([]float32, 100_000)
	for i := range big {
		big[i] = float32(i) * 0.5
	}
	ids := []int32{-1, 2, 1 << 20}
	var buf bytes.Buffer
	if err := encodeFrame(&buf, msgSetState, 9, map[string]any{"what": []string{"params"}}, []tensor{f32(big), i32(ids), f32([]float32{3})}); err != nil {
		t.Fatal(err)
	}
	raw := buf.Bytes()
	f, err := readFrame(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f.Tensors[0].F, big) || !reflect.DeepEqual(f.Tensors[1].I, ids) || f.Tensors[2].F[0] != 3 {
		t.Fatal("aligned decode changed the tensors")
	}
	payload := raw[headerSize:]
	if ml := binary.LittleEndian.Uint32(payload); ml%4 != 0 {
		t.Errorf("meta of %d bytes is not padded to a multiple of 4", ml)
	}
	shifted := make([]byte, len(payload)+1)[1:]
	copy(shifted, payload)
	g, err := decodePayload(shifted)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g.Tensors[0].F, big) || !reflect.DeepEqual(g.Tensors[1].I, ids) {
		t.Fatal("unaligned decode changed the tensors")
	}
	// The portable conversion agrees with the in-place view.
	want := make([]byte, 8)
	binary.LittleEndian.PutUint32(want, math.Float32bits(-2.5))
	binary.LittleEndian.PutUint32(want[4:], math.Float32bits(7))
	if got := wireBytes([]float32{-2.5, 7}, func(b []byte, v float32) { binary.LittleEndian.PutUint32(b, math.Float32bits(v)) }); !bytes.Equal(got, want) {
		t.Errorf("wire bytes %x, want %x", got, want)
	}
}
