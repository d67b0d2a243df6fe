package epochs

// Delayed parameter updates (sync mode, Config.Delayed: the manifest's
// averaging.delayed_updates). Epoch e's gradient round runs in the
// background while epoch e+1's micro-batches run on the parameters after
// epoch e−1's step; when the round lands, its step is applied on top
// (epoch e+1's gradient keeps accumulating meanwhile). Communication then
// hides behind an epoch of compute, at the price of gradients one step
// stale. The rules:
//
//   - An epoch may start before the last round finished: once an epoch
//     closed and gathered, its round is detached (Average with Detach) and
//     the next epoch reopens at once; not the run's last epoch, whose round,
//     step and state round end the run as without delay.
//   - At most one round in flight: an epoch whose end comes before the
//     last round landed first waits for it (Land) and takes its step, then
//     goes on with its own end.
//   - A round that fails or lands alone: the step takes the node's own
//     gradient, as without delay, and the node counts itself drifted (a
//     state round follows the step); unless a holder of the shard is past
//     the round (Lag epochs past it): the round went on without this node,
//     whose state is stale. It then takes no step and catches up at its
//     epoch's end (which comes at once: the swarm is ahead), not in the
//     middle of an epoch.
//   - A peer that leaves mid-overlap is absent from the round; a node no
//     longer on the round's shard (it moved, or lost it) drops the landed
//     round without a step.
//   - A holder one epoch ahead detached the round this node is ending and
//     reopened: it is a mate of the round (it counts as closing it), not a
//     holder ahead. Only a holder two epochs ahead is past the round: a
//     node then catches up before the round, and a round in flight aborts.
//   - State served (snapshots, checkpoints) is the parameters with the
//     epoch they belong to, which is one behind the open epoch while a
//     round is in flight; a joiner that loads it opens that epoch, ends it
//     at once (the swarm is ahead) and joins the round in flight.
//   - The clipping of a delayed step waits for the norms of the other
//     shards' holders up to Lag epochs ahead of the step: they publish it
//     when their own round of that epoch lands.

// Lag is how many epochs a holder may be ahead of a round it still takes
// part in: 1 with delayed updates, else 0.
func (c *Config) Lag() uint64 {
	if c.Delayed && !c.Local {
		return 1
	}
	return 0
}

// inFlight is a gradient round detached from its epoch.
type inFlight struct {
	shard int
	epoch uint64
}

// next is what follows a step and its state round.
type next uint8

const (
	reopenNext  next = iota // reopen the next epoch (the step of the epoch being ended)
	resumeOpen              // a round landed while the next epoch was open: back to it
	resumeClose             // a round landed at the next epoch's end: go on ending it
)

// InFlight reports whether a gradient round is in flight, and its epoch.
func (m *Machine) InFlight() (uint64, bool) {
	if m.flight == nil {
		return 0, false
	}
	return m.flight.epoch, true
}

// landedOpen takes a round that landed while the next epoch was open.
func (m *Machine) landedOpen(in Input, ev Event) Action {
	f := m.flight
	m.flight = nil
	n := in.Node
	if f == nil || !n.Held || n.Shard != f.shard {
		return Action{}
	}
	m.shard, m.epoch = n.Shard, n.Epoch
	return m.landed(in, ev, f, resumeOpen)
}

// landedClosing takes the round that was in flight when the next epoch
// closed.
func (m *Machine) landedClosing(in Input, ev Event) Action {
	f := m.flight
	m.flight = nil
	if f == nil || m.lost || f.shard != m.shard {
		return m.closed(in)
	}
	return m.landed(in, ev, f, resumeClose)
}

func (m *Machine) landed(in Input, ev Event, f *inFlight, then next) Action {
	m.takeRound(in, ev)
	if m.group <= 1 && len(m.holdersAhead(in, f.shard, f.epoch+m.cfg.Lag())) > 0 {
		m.behind, m.then = true, then
		return m.afterStepping(in, 0)
	}
	m.phase, m.stepEpoch, m.then = stepping, f.epoch, then
	return Action{Kind: Step, Shard: f.shard, Epoch: f.epoch, Delayed: true}
}

// afterStepping follows a step (and its state round): reopen epoch, or,
// for a delayed step, go back to the open epoch or its end.
func (m *Machine) afterStepping(in Input, epoch uint64) Action {
	then := m.then
	m.then = reopenNext
	switch then {
	case resumeOpen:
		m.phase = open
		return Action{}
	case resumeClose:
		return m.closed(in)
	}
	return m.reopen(epoch)
}

// closed goes on with a sync-mode epoch's end once no round is in flight:
// a holder of this shard already past the epoch's round averaged it
// without this node; nobody is left to average with, and waiting out the
// round would hold this node (and so the swarm) for the averaging timeout.
// It takes the newer state instead.
func (m *Machine) closed(in Input) Action {
	if m.lost {
		return m.reopen(m.epoch)
	}
	past := m.epoch + m.cfg.Lag()
	if m.behind {
		// The last round went on without this node: any holder ahead
		// has the state it missed.
		past, m.behind = m.epoch, false
	}
	if d := m.holdersAhead(in, m.shard, past); len(d) > 0 {
		m.phase = catchBefore
		return Action{Kind: CatchUp, Shard: m.shard, Epoch: m.epoch, Donors: d}
	}
	return m.gather(in)
}
