package fvec

import (
	"encoding/binary"
	"io"
	"math"
	"unsafe"
)

// littleEndian: a float32 slice's memory is already its little-endian form.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// WriteLE writes v to w as little-endian float32s: straight from v's memory
// where that is their form, else through a small buffer. Hashes of vectors
// (the averaging's audits, local mode's outer-state fingerprint) are taken
// so, the same on every machine.
func WriteLE(w io.Writer, v []float32) error {
	if littleEndian {
		if len(v) == 0 {
			return nil
		}
		_, err := w.Write(unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v)))
		return err
	}
	var buf [4096]byte
	for len(v) > 0 {
		n := min(len(v), len(buf)/4)
		for i, x := range v[:n] {
			binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(x))
		}
		if _, err := w.Write(buf[:4*n]); err != nil {
			return err
		}
		v = v[n:]
	}
	return nil
}
