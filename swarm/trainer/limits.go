package trainer

import "context"

// expired is a context that has already ended: WaitRunning with it answers
// at once whether training may run now.
var expired = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// waitRunning blocks while the volunteer's limits pause training.
func (t *Trainer) waitRunning(ctx context.Context) error {
	if t.cfg.WaitRunning == nil {
		return nil
	}
	return t.cfg.WaitRunning(ctx)
}

// pausedNow reports whether the volunteer's limits pause training now.
func (t *Trainer) pausedNow() bool {
	return t.cfg.WaitRunning != nil && t.cfg.WaitRunning(expired) != nil
}

// startRate is the FLOP/s announced before the node has measured itself.
func (t *Trainer) startRate() float64 {
	if t.cfg.Rate > 0 {
		return t.cfg.Rate
	}
	return defaultRate
}
