//go:build !amd64 || purego

package averaging

var hasMeanDistAVX2 = false

func meanDistAsm(m []float32, xs [][]float32, w []float64, b int, W float64, acc *[8][4]float64) int {
	return 0
}
