package train

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"
)

// progress draws "step 120/1200 [=====>    ] loss 0.2345 5123 samples/s ETA
// 1m02s" in place on a terminal, or logs a line every tenth of the run.
type progress struct {
	w          io.Writer
	log        *slog.Logger
	first, end int64
	last       time.Time
	lastLen    int
	loss       float64
	logEvery   int64
}

func newProgress(w io.Writer, log *slog.Logger, first, end int64) *progress {
	return &progress{w: w, log: log, first: first, end: end, loss: -1, logEvery: max((end-first)/10, 1)}
}

func (p *progress) update(step int64, loss float64, samples int64, dur time.Duration) {
	// Smooth the loss shown; the first value starts the average.
	if p.loss < 0 {
		p.loss = loss
	} else {
		p.loss = 0.9*p.loss + 0.1*loss
	}
	rate := float64(samples) / dur.Seconds()
	done := step - p.first
	eta := time.Duration(float64(dur) / float64(done) * float64(p.end-step)).Round(time.Second)
	if p.w == nil {
		if done%p.logEvery == 0 || step == p.end {
			p.log.Info("training", "step", step, "of", p.end, "loss", fmt.Sprintf("%.4f", p.loss),
				"samples_per_s", fmt.Sprintf("%.0f", rate), "eta", eta)
		}
		return
	}
	// Wall clock: the bar is redrawn on the terminal at most ten times a second.
	if now := time.Now(); now.Sub(p.last) < 100*time.Millisecond && step != p.end {
		return
	} else {
		p.last = now
	}
	const width = 24
	fill := int(float64(width) * float64(step) / float64(max(p.end, 1)))
	bar := strings.Repeat("=", fill) + strings.Repeat(" ", width-fill)
	if fill < width {
		bar = strings.Repeat("=", fill) + ">" + strings.Repeat(" ", width-fill-1)
	}
	line := fmt.Sprintf("step %d/%d [%s] loss %.4f  %.0f samples/s  ETA %s", step, p.end, bar, p.loss, rate, eta)
	pad := ""
	if n := p.lastLen - len(line); n > 0 {
		pad = strings.Repeat(" ", n)
	}
	fmt.Fprintf(p.w, "\r%s%s", line, pad)
	p.lastLen = len(line)
}

// clear removes the bar so that a log line can be printed.
func (p *progress) clear() {
	if p.w != nil && p.lastLen > 0 {
		fmt.Fprintf(p.w, "\r%s\r", strings.Repeat(" ", p.lastLen))
		p.lastLen = 0
	}
}

// done ends the bar's line.
func (p *progress) done() {
	if p.w != nil && p.lastLen > 0 {
		fmt.Fprintln(p.w)
		p.lastLen = 0
	}
}
