package trainer

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The phases of a synchronous epoch on one node, in the order they pass:
//
//	open    the epoch takes micro-batches, until the decision core closes it
//	close   waiting for the micro-batches still in flight
//	gather  the gradient taken aside, and the wait for the shard's other
//	        holders to show they closed too (swarm/epochs gather)
//	match   the averaging round's matchmaking
//	reduce  the all-reduce, and the rest of the averaging step
//	step    gradient clipping across shards, the optimizer step, and a
//	        state round every epochs.StateEvery epochs
//
// Each is wall time on this node; an epoch is their sum. They say where an
// epoch's time goes: on one machine the averaging and the pipeline's
// transfers, over slow links the gather and the reduce.
const (
	phaseOpen = iota
	phaseClose
	phaseGather
	phaseMatch
	phaseReduce
	phaseStep
	numPhases
)

// phaseWindow is how many recent epochs the medians are over.
const phaseWindow = 64

// EpochPhases are the medians, over this node's last Epochs synchronous
// epochs (at most phaseWindow), of each phase of an epoch and of the whole,
// in milliseconds (status: epoch_phases). Epochs whose round was detached
// (delayed updates) and local mode's rounds are not counted.
type EpochPhases struct {
	Epochs   int     `json:"epochs"`
	OpenMS   float64 `json:"open_ms"`
	CloseMS  float64 `json:"close_ms"`
	GatherMS float64 `json:"gather_ms"`
	MatchMS  float64 `json:"match_ms"`
	ReduceMS float64 `json:"reduce_ms"`
	StepMS   float64 `json:"step_ms"`
	TotalMS  float64 `json:"total_ms"`
}

// epochTimes are the instants one epoch's end passed, as the epoch loop
// saw them, and the averaging step's own split of its time.
type epochTimes struct {
	opened, began, closed, avgStart, reopened time.Time
	avg, match                                time.Duration
}

// phases splits an epoch into its phases; ok is false where an instant is
// missing or out of order (the epoch did not pass every phase here).
func (e epochTimes) phases() (p [numPhases]time.Duration, ok bool) {
	avgEnd := e.avgStart.Add(e.avg)
	for _, t := range []time.Time{e.opened, e.began, e.closed, e.avgStart, e.reopened} {
		if t.IsZero() {
			return p, false
		}
	}
	if e.began.Before(e.opened) || e.closed.Before(e.began) || e.avgStart.Before(e.closed) ||
		e.reopened.Before(avgEnd) || e.match > e.avg || e.match < 0 {
		return p, false
	}
	p[phaseOpen] = e.began.Sub(e.opened)
	p[phaseClose] = e.closed.Sub(e.began)
	p[phaseGather] = e.avgStart.Sub(e.closed)
	p[phaseMatch] = e.match
	p[phaseReduce] = e.avg - e.match
	p[phaseStep] = e.reopened.Sub(avgEnd)
	return p, true
}

// phaseLog keeps the last phaseWindow epochs' phases.
type phaseLog struct {
	ring [phaseWindow][numPhases]time.Duration
	n    int // epochs logged, all time
}

func (l *phaseLog) add(p [numPhases]time.Duration) {
	l.ring[l.n%phaseWindow] = p
	l.n++
}

// medians are the per-phase and total medians of the epochs kept.
func (l *phaseLog) medians() EpochPhases {
	k := min(l.n, phaseWindow)
	out := EpochPhases{Epochs: k}
	if k == 0 {
		return out
	}
	// Column numPhases is each epoch's total.
	var m [numPhases + 1]float64
	v := make([]time.Duration, k)
	for c := range m {
		for i := range k {
			if c < numPhases {
				v[i] = l.ring[i][c]
			} else {
				v[i] = 0
				for _, d := range l.ring[i] {
					v[i] += d
				}
			}
		}
		slices.Sort(v)
		med := v[k/2]
		if k%2 == 0 {
			med = (v[k/2-1] + v[k/2]) / 2
		}
		m[c] = float64(med.Microseconds()) / 1000
	}
	out.OpenMS, out.CloseMS, out.GatherMS = m[phaseOpen], m[phaseClose], m[phaseGather]
	out.MatchMS, out.ReduceMS, out.StepMS, out.TotalMS = m[phaseMatch], m[phaseReduce], m[phaseStep], m[numPhases]
	return out
}

// namedPhase is one phase's median, in milliseconds, under its name.
type namedPhase struct {
	name string
	ms   float64
}

// list is the phases in the order they pass, then the total.
func (p EpochPhases) list() []namedPhase {
	return []namedPhase{{"open", p.OpenMS}, {"close", p.CloseMS}, {"gather", p.GatherMS}, {"match", p.MatchMS},
		{"reduce", p.ReduceMS}, {"step", p.StepMS}, {"total", p.TotalMS}}
}

// String is the phases for a person: "60 ms: open 32, close 0.4, …".
func (p EpochPhases) String() string {
	l := p.list()
	var b strings.Builder
	fmt.Fprintf(&b, "%s ms, median of %d epochs:", msString(p.TotalMS), p.Epochs)
	for i, f := range l[:len(l)-1] {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, " %s %s", f.name, msString(f.ms))
	}
	return b.String()
}

// msString prints milliseconds with a decimal below 10.
func msString(ms float64) string {
	if ms < 10 {
		return strconv.FormatFloat(ms, 'f', 1, 64)
	}
	return strconv.FormatFloat(ms, 'f', 0, 64)
}
