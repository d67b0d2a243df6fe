package native

import (
	"fmt"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/internal/fvec"
	"github.com/swarm-train/swarm/spec/run"
)

// mlp is the shard's run of Linear units, ReLU after all but the model's last.
type mlp struct {
	s      *Shard
	widths []int // widths[j], widths[j+1]: input and output of the shard's j-th unit
	w, b   [][]float32
	dw, db [][]float32
	relu   []bool
}

func newMLP(s *Shard) *mlp {
	md := s.man.Model
	all := append(append([]int{md.Input}, md.Hidden...), md.Classes)
	sp := s.man.Shards[s.index]
	m := &mlp{s: s, widths: all[sp.Start : sp.End+1]}
	for i := sp.Start; i < sp.End; i++ {
		m.w = append(m.w, s.tensors[fmt.Sprintf("l%d.w", i)])
		m.b = append(m.b, s.tensors[fmt.Sprintf("l%d.b", i)])
		m.relu = append(m.relu, i < md.Units()-1)
	}
	for _, t := range s.layout {
		if run.IsCutTensor(t.Name) {
			continue // the Shard applies the cut's projections
		}
		g := s.grads[t.Offset : t.Offset+t.Size()]
		if len(t.Shape) == 2 {
			m.dw = append(m.dw, g)
		} else {
			m.db = append(m.db, g)
		}
	}
	return m
}

func (m *mlp) checkBatch(b *engine.Batch, needTargets bool) error {
	if m.s.first {
		if len(b.X) != b.N*m.widths[0] {
			return fmt.Errorf("%w: batch X has %d values, want %d×%d", engine.ErrShape, len(b.X), b.N, m.widths[0])
		}
		if i := fvec.FirstNonFinite(b.X); i >= 0 {
			return fmt.Errorf("%w: batch X[%d] is %g", engine.ErrNonFinite, i, b.X[i])
		}
	}
	if m.s.last && (needTargets || b.Targets != nil) {
		return checkIDs("batch targets", b.Targets, b.N, m.widths[len(m.widths)-1])
	}
	return nil
}

// Tape slots: acts[j] is the input of unit j (post-ReLU output of unit j−1),
// acts[units] the last unit's output; then probs and the backward scratch.
func (m *mlp) arenaSize(n int) int {
	total := 0
	for _, w := range m.widths {
		total += n * w
	}
	maxW := 0
	for _, w := range m.widths {
		maxW = max(maxW, w)
	}
	if m.s.last {
		total += n * m.widths[len(m.widths)-1]
	}
	return total + 2*n*maxW
}

func (m *mlp) forward(t *tape, in []float32) ([]float32, float32) {
	th, n := m.s.threads, t.n
	units := len(m.w)
	t.slots = make([][]float32, units+1)
	t.slots[0] = t.alloc(n * m.widths[0])
	copy(t.slots[0], in)
	for j := 0; j < units; j++ {
		out := t.alloc(n * m.widths[j+1])
		linearForward(th, out, t.slots[j], m.w[j], m.b[j], n, m.widths[j], m.widths[j+1])
		if m.relu[j] {
			reluForward(th, out, out)
		}
		t.slots[j+1] = out
	}
	last := t.slots[units]
	if !m.s.last {
		return append([]float32(nil), last...), 0
	}
	probs := t.alloc(len(last))
	t.slots = append(t.slots, probs)
	return nil, crossEntropyForward(th, probs, last, t.targets, n, m.widths[units])
}

func (m *mlp) logits(t *tape) []float32 { return t.slots[len(m.w)] }

func (m *mlp) backward(t *tape, gradOut []float32) []float32 {
	th, n := m.s.threads, t.n
	units := len(m.w)
	maxW := 0
	for _, w := range m.widths {
		maxW = max(maxW, w)
	}
	d, next := t.alloc(n*maxW), t.alloc(n*maxW)
	d = d[:n*m.widths[units]]
	if m.s.last {
		crossEntropyBackward(th, d, t.slots[units+1], t.targets, n, m.widths[units])
	} else {
		copy(d, gradOut)
	}
	var gradIn []float32
	for j := units - 1; j >= 0; j-- {
		if m.relu[j] {
			reluBackward(th, d, t.slots[j+1])
		}
		var dIn []float32
		switch {
		case j > 0:
			dIn = next[:n*m.widths[j]]
		case !m.s.first:
			gradIn = make([]float32, n*m.widths[0])
			dIn = gradIn
		}
		linearBackward(th, dIn, m.dw[j], m.db[j], d, t.slots[j], m.w[j], n, m.widths[j], m.widths[j+1])
		d, next = dIn, d[:cap(d)]
	}
	return gradIn
}
