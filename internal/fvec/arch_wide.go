//go:build amd64 || arm64

package fvec

const unaligned = true
