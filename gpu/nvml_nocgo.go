//go:build !cgo

package gpu

// NVMLCompiledIn is false: this binary was built without cgo.
const NVMLCompiledIn = false

// Open reports ErrNoNVML: NVML needs cgo.
func Open() (Sampler, error) { return nil, ErrNoNVML }
