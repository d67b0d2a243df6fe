package trainer

import (
	"testing"
	"time"
)

func TestEpochPhases(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := func(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }
	at := func(n float64) time.Time { return t0.Add(ms(n)) }
	e := epochTimes{opened: at(0), began: at(30), closed: at(30.5), avgStart: at(33), avg: ms(18), match: ms(4), reopened: at(54)}
	p, ok := e.phases()
	want := [numPhases]time.Duration{ms(30), ms(0.5), ms(2.5), ms(4), ms(14), ms(3)}
	if !ok || p != want {
		t.Fatalf("phases = %v, %v; want %v", p, ok, want)
	}
	// An epoch that did not pass every phase here, or whose instants are
	// out of order, is not split.
	for name, bad := range map[string]epochTimes{
		"no round":           {opened: at(0), began: at(30), closed: at(31), reopened: at(40)},
		"closed before open": {opened: at(10), began: at(5), closed: at(11), avgStart: at(12), avg: ms(1), reopened: at(20)},
		"reopened in round":  {opened: at(0), began: at(1), closed: at(2), avgStart: at(3), avg: ms(10), reopened: at(5)},
		"match past round":   {opened: at(0), began: at(1), closed: at(2), avgStart: at(3), avg: ms(2), match: ms(3), reopened: at(9)},
		"never opened":       {began: at(1), closed: at(2), avgStart: at(3), avg: ms(2), reopened: at(9)},
	} {
		if _, ok := bad.phases(); ok {
			t.Errorf("%s: split", name)
		}
	}

	var l phaseLog
	if m := l.medians(); m.Epochs != 0 || m.TotalMS != 0 {
		t.Fatalf("empty log: %+v", m)
	}
	// Old epochs leave the window: 10 slow ones, then phaseWindow fast
	// ones with open 20..20+phaseWindow-1 ms.
	for range 10 {
		l.add([numPhases]time.Duration{ms(500), ms(500), ms(500), ms(500), ms(500), ms(500)})
	}
	for i := range phaseWindow {
		l.add([numPhases]time.Duration{ms(20 + float64(i)), ms(0.5), ms(2), ms(4), ms(14), ms(3)})
	}
	m := l.medians()
	wantOpen := 20 + float64(phaseWindow-1)/2
	if m.Epochs != phaseWindow || m.OpenMS != wantOpen || m.CloseMS != 0.5 || m.GatherMS != 2 || m.MatchMS != 4 ||
		m.ReduceMS != 14 || m.StepMS != 3 || m.TotalMS != wantOpen+23.5 {
		t.Fatalf("medians = %+v, want open %v over %d epochs, total %v", m, wantOpen, phaseWindow, wantOpen+23.5)
	}
	if got, want := m.String(), "75 ms, median of 64 epochs: open 52, close 0.5, gather 2.0, match 4.0, reduce 14, step 3.0"; got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
}
