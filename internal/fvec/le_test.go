package fvec

import (
	"bytes"
	"encoding/binary"
	"math"
	"testing"
)

// WriteLE writes each value's IEEE bits little-endian, in order, whatever
// the machine's byte order; nothing for an empty vector.
func TestWriteLE(t *testing.T) {
	v := []float32{1, -2.5, float32(math.Copysign(0, -1)), float32(math.Inf(1)), 3e-39}
	var got bytes.Buffer
	if err := WriteLE(&got, v); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 0, 4*len(v))
	for _, x := range v {
		want = binary.LittleEndian.AppendUint32(want, math.Float32bits(x))
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("WriteLE = % x, want % x", got.Bytes(), want)
	}
	got.Reset()
	if err := WriteLE(&got, nil); err != nil || got.Len() != 0 {
		t.Fatalf("empty: %d bytes, err %v", got.Len(), err)
	}
}
