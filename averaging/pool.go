package averaging

import "sync"

// vecPool keeps float32 buffers from one round to the next: the reducer's
// accumulator and part buffers, and with audits the copy of the vector and
// the values a reducer keeps. Fresh memory costs a page fault per page on
// first touch, which on a loaded virtual machine made a new 64 MiB buffer
// cost more than aggregating it (435 ms against 20 ms for a copy into a
// buffer in hand, BenchmarkAuditCosts): a round that allocates its buffers
// anew pays that every time.
//
// Buffers are kept by capacity, at most limit values in all: about what
// the largest round so far used (1.5 vectors, 2.5 with audits, and a part
// per stream for the values read from it), which an idle averager keeps.
type vecPool struct {
	mu    sync.Mutex
	free  map[int][][]float32 // by capacity
	held  int                 // values held
	limit int
}

// get returns a buffer of length n; its contents are left from before.
func (p *vecPool) get(n int) []float32 {
	if p == nil {
		return make([]float32, n)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if l := p.free[n]; len(l) > 0 {
		b := l[len(l)-1]
		p.free[n] = l[:len(l)-1]
		p.held -= cap(b)
		return b[:n]
	}
	return make([]float32, n)
}

// put gives b back (nil is ignored); nothing may use it afterwards.
func (p *vecPool) put(b []float32) {
	if p == nil || cap(b) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held+cap(b) > p.limit {
		return
	}
	if p.free == nil {
		p.free = map[int][][]float32{}
	}
	p.free[cap(b)] = append(p.free[cap(b)], b[:cap(b)])
	p.held += cap(b)
}

// fit raises the limit to what a round of vecLen values uses, with parts
// of partLen values in a group of n and auditParts audits (the most any
// round used so far).
func (p *vecPool) fit(vecLen, partLen, n, auditParts int) {
	limit := vecLen + vecLen/2
	if auditParts > 0 {
		limit = 5 * vecLen / 2
	}
	limit += (2 + auditParts) * n * min(partLen, vecLen)
	p.mu.Lock()
	p.limit = max(p.limit, limit)
	p.mu.Unlock()
}
