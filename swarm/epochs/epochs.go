// Package epochs is the decision core of a swarm node's training: when its
// epoch ends, whether it averages, catches up or steps, when it averages its
// whole state, when it may move to another shard, and when it evaluates.
//
// An epoch is one collaborative optimizer step of the swarm (sync mode: the
// step all holders of a shard take together; local mode: one outer round),
// as the README defines it under Architecture, "Epoch".
//
// The core is a pure state machine, like averaging's matcher: it never
// touches the network, a goroutine, a lock or the wall clock. The trainer
// (swarm/trainer) gathers an Input (the live progress records, this node's
// counters and the time) and calls Step with the outcome of the last action;
// Step answers with the next Action, which the trainer carries out. It is a
// package of its own so that its imports show it: it cannot reach a host, an
// engine or a clock, and its tests drive simulated swarms in virtual time.
//
// One epoch's end in sync mode is the sequence
//
//	Close → [CatchUp] → Average → [CatchUp] → Step → [AverageState] → Reopen
//
// where a successful CatchUp skips to Reopen at the donor's epoch. In local
// mode the core asks for OuterStep (the trainer's outer optimizer closes and
// reopens the round itself) or for Close → CatchUp → Reopen when a holder of
// the shard is in a later round.
//
// With delayed updates (sync mode, Config.Delayed) an epoch's gradient round
// runs in the background while the next epoch computes:
//
//	Close → [Land → Step → [AverageState]] → [CatchUp] → Average (detached) → Reopen
//
// and when the round lands while the next epoch is open: Step →
// [AverageState], without a Reopen (delayed.go).
package epochs

import (
	"cmp"
	"errors"
	"slices"
	"time"

	"github.com/swarm-train/swarm/swarm/progress"
)

// Config is the run as the core needs it.
type Config struct {
	Self        string // this node's peer ID, as records carry it
	Epochs      uint64 // the run's epochs (sync: optimizer steps; local: outer rounds)
	TargetBatch int    // samples of the first shard in one sync-mode epoch
	BatchSize   int    // samples in a micro-batch
	GroupSize   int    // the manifest's averaging group size
	Local       bool   // averaging.mode local (DiLoCo)
	// Delayed (sync mode, averaging.delayed_updates): an epoch's gradient
	// round runs while the next epoch computes, and its step is applied
	// when it lands (delayed.go).
	Delayed    bool
	LocalSteps int // inner steps in a local-mode round
}

// Finished reports whether epoch is past the run's last.
func (c *Config) Finished(epoch uint64) bool { return epoch >= c.Epochs }

// Node is this node's counters.
type Node struct {
	Shard     int    // the shard it holds or is joining (-1: none yet)
	Held      bool   // the shard's state is loaded
	Online    bool   // online on it (not joining)
	Done      bool   // finished the run
	Epoch     uint64 // the epoch (round) it is in
	Samples   int    // samples finished in the epoch
	Drawn     int    // samples started in the epoch and not finished (first shard)
	Evaluated bool   // the test-set accuracy is known
	// RoundSteps (local mode) is the inner steps this node's round should
	// have (Pace.Target); 0: Config.LocalSteps.
	RoundSteps int
	// Outer (local mode) fingerprints the outer state it began Epoch with
	// (progress.Record.Outer); 0: none for this round.
	Outer uint64
}

// Input is what the core sees at one moment.
type Input struct {
	Now     time.Time
	Records []progress.Record // the live records, this node's own included
	Node    Node
}

// Kind names an action.
type Kind uint8

const (
	// Wait: nothing to do until the next input.
	Wait Kind = iota
	// Close stops admitting micro-batches of Epoch and waits (bounded) for
	// those in flight; report Closed.
	Close
	// Average averages the accumulated gradient with the shard's holders
	// under Key in round Epoch, starting as soon as Group peers joined;
	// report Averaged. The trainer ends it early when Abort says so.
	Average
	// CatchUp loads the shard's state from one of Donors (latest epoch
	// first); report CaughtUp.
	CatchUp
	// Step clips (across shards) and takes the optimizer step of Epoch;
	// report Stepped.
	Step
	// AverageState averages parameters and optimizer state under Key in
	// round Epoch with Group peers; report StateAveraged.
	AverageState
	// Reopen opens epoch Epoch (Finished: the run is over) and ends the
	// sequence.
	Reopen
	// OuterStep is local mode's outer step of round Epoch, with the outer
	// state (anchor, momentum) when Full; the trainer reopens the round.
	OuterStep
	// Evaluate runs the test set through the pipeline.
	Evaluate
	// Land waits for the gradient round in flight (Epoch) and reports
	// Land with its outcome; the trainer also reports Land on its own,
	// between actions, when the round ends while the epoch is open
	// (delayed.go).
	Land
)

var kindNames = [...]string{"wait", "close", "average", "catch-up", "step", "average-state", "reopen", "outer-step", "evaluate", "land"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// Averaging keys within a shard.
const (
	KeyGrad  = "grad"
	KeyState = "state"
	KeyDelta = "delta"
	KeyOuter = "outer"
)

// Action is what the core asks the trainer to do next.
type Action struct {
	Kind  Kind
	Shard int
	Epoch uint64
	Key   string // Average, AverageState
	Group int    // Average, AverageState, OuterStep: start once this many peers (this one included) joined
	// Want and Room (Average): the round starts once every peer of Want
	// (and Group peers) joined; others may join it meanwhile, up to Room
	// members, as long as a place stays for each peer of Want.
	Want     []string
	Room     int
	Donors   []string // CatchUp: peer IDs, latest epoch first
	Full     bool     // OuterStep
	Finished bool     // Reopen
	// Detach (Average): run the round in the background and report
	// Detached at once; its outcome comes later as a Land event.
	Detach bool
	// Delayed (Step, AverageState): of the round that was in flight, not
	// of the epoch being ended.
	Delayed bool
}

// Event is the outcome of the last action; the zero Event is a plain tick.
type Event struct {
	Kind     Kind     // the action it answers (Wait: none)
	OK       bool     // Averaged, CaughtUp, StateAveraged: it succeeded
	Err      error    // Stepped; StateAveraged: ErrLoad when the engine refused the averaged state
	Lost     bool     // Closed: the node no longer holds a shard
	Shard    int      // Closed: the shard closed
	Epoch    uint64   // Closed: the epoch closed; CaughtUp: the epoch of the state loaded
	Group    int      // Averaged, StateAveraged: members, this node included
	Members  []string // Averaged: the members' peer IDs
	Fraction float64  // StateAveraged: share of the vector averaged
	// Detached (Average): the round runs in the background.
	Detached bool
	// LeftOut (Averaged, Land; not OK): the shard's other holders formed
	// their group without this node.
	LeftOut bool
}

// ErrLoad marks a state round whose result the engine refused: the node
// keeps its own state and what it knew of its drift.
var ErrLoad = errors.New("epochs: averaged state not loaded")

// Period, in epochs, of whole-state averaging when no drift was seen:
// holders that averaged every gradient completely take identical steps, so
// this is only a safety net (a state round costs three times a gradient
// round: parameters and both AdamW moments).
const StateEvery = 50

// OuterStateEvery is local mode's period, in rounds, of the rounds that may
// average the outer state (anchor and momentum) with the deltas: three
// times an uncompressed delta round's traffic, a hundred times a compressed
// one's, and the cure for holders whose anchors parted. Such a round (and
// the run's last) averages the outer state only where the holders in it do
// not all show the same fingerprint of it (outerApart): holders that
// averaged every round together apply the same averaged deltas to the same
// anchor, and stay equal to the bit, so over a run with compressed deltas
// the state rounds cost nothing unless a round left someone out.
const OuterStateEvery = 10

// ClaimStall is how long a first-shard peer may go without finishing
// samples before the others stop counting its in-flight claim and its share
// of the target batch: its micro-batches keep failing (it is excluded
// downstream, or its next stage vanished), and waiting on them would stall
// every epoch. The mark lasts across epochs until the peer finishes samples
// again; counting a slow but honest peer out costs at most a slightly larger
// epoch.
const ClaimStall = 3 * time.Second

type phase uint8

const (
	open        phase = iota
	closing           // Close asked
	gathering         // waiting (GatherGrace at most) for the shard-mates to close too
	catchBefore       // CatchUp asked before the gradient round
	averaging         // Average asked
	catchAfter        // CatchUp asked after the gradient round
	stepping          // Step asked
	syncing           // AverageState asked
	catchLocal        // local mode: CatchUp asked
	landing           // Land asked (delayed updates)
)

type claimSeen struct {
	epoch   uint64
	samples int
	at      time.Time // when the peer last finished samples (or was first seen)
	// since is when this core first saw the peer in sinceEpoch: its
	// sample budget in that epoch starts then (sampleBound).
	since      time.Time
	sinceEpoch uint64
}

// Machine is one node's decision core. It is not safe for concurrent use:
// the trainer calls it under its own lock.
type Machine struct {
	cfg   Config
	phase phase

	// the epoch being ended
	shard      int
	epoch      uint64
	expected   int           // the shard-mates the gradient round was for
	gatherFrom time.Time     // when gathering began
	gatherFor  time.Duration // how long gathering waits (gatherWait; 0: GatherGrace)
	// wanted are the mates the gradient round waited for; late those that
	// were waited for and did not join, with the epoch (average).
	wanted []string
	late   map[string]uint64
	// joinFrom: when this node's round joinEpoch (local mode) began
	// waiting for a joining mate (matesJoining).
	joinFrom  time.Time
	joinEpoch uint64
	group     int // members of the gradient round (1: alone)
	// leftOut: the gradient round failed because the mates grouped
	// without this node (afterStep).
	leftOut bool
	donors  []string // local mode: the holders ahead when the round closed
	drift   bool     // this node may differ from its shard's other holders

	// claims remembers when each first-shard peer last finished samples,
	// so that a peer whose micro-batches keep failing stops holding the
	// epoch back with its in-flight claim.
	claims map[string]claimSeen
	// own is this node's own claim, kept the same way while it holds the
	// first shard (firstShardLive).
	own claimSeen

	// opened is when this node opened openEpoch (ShareGrace).
	openEpoch uint64
	opened    time.Time
	// judge decides which peers to ban (verdict.go).
	judge judge

	// Delayed updates (delayed.go): the gradient round in flight, the
	// epoch the step under way is for, and what follows that step.
	flight    *inFlight
	stepEpoch uint64
	then      next
	lost      bool // the epoch being ended closed without a shard
	behind    bool // a landed round went on without this node: catch up at the epoch's end
}

// New returns a core for the run cfg.
func New(cfg Config) *Machine {
	return &Machine{cfg: cfg, claims: map[string]claimSeen{}}
}

// Config returns the run the core decides for.
func (m *Machine) Config() Config { return m.cfg }

// Drift reports whether the core thinks this node may differ from its
// shard's other holders (a state round is due).
func (m *Machine) Drift() bool { return m.drift }

// Step takes the outcome of the last action (the zero Event after Wait,
// Reopen, OuterStep or Evaluate) and returns the next action.
func (m *Machine) Step(in Input, ev Event) Action {
	a := m.step(in, ev)
	if a.Kind == Reopen {
		m.openEpoch, m.opened = a.Epoch, in.Now
	}
	return a
}

func (m *Machine) step(in Input, ev Event) Action {
	if ev.Kind == Land && m.phase == open {
		return m.landedOpen(in, ev)
	}
	switch m.phase {
	case closing:
		m.shard, m.epoch, m.lost = ev.Shard, ev.Epoch, ev.Lost
		if m.flight != nil {
			// At most one round in flight: the last one lands (and its
			// step is taken) before this epoch's round starts.
			m.phase = landing
			return Action{Kind: Land, Shard: m.flight.shard, Epoch: m.flight.epoch}
		}
		if ev.Lost {
			return m.reopen(m.epoch)
		}
		if m.cfg.Local {
			m.phase = catchLocal
			return Action{Kind: CatchUp, Shard: m.shard, Epoch: m.epoch, Donors: m.donors}
		}
		return m.closed(in)
	case landing:
		return m.landedClosing(in, ev)
	case catchBefore:
		if ev.OK {
			return m.caughtUp(in, ev.Epoch)
		}
		return m.gather(in)
	case gathering:
		return m.gather(in)
	case averaging:
		if ev.Detached {
			m.flight = &inFlight{shard: m.shard, epoch: m.epoch}
			return m.reopen(m.epoch + 1)
		}
		m.takeRound(in, ev)
		return m.afterRound(in)
	case catchAfter:
		if ev.OK {
			return m.caughtUp(in, ev.Epoch)
		}
		m.phase, m.stepEpoch, m.then = stepping, m.epoch, reopenNext
		return Action{Kind: Step, Shard: m.shard, Epoch: m.epoch}
	case stepping:
		if ev.Err != nil {
			return m.afterStepping(in, m.stepEpoch)
		}
		return m.afterStep(in)
	case syncing:
		switch {
		case errors.Is(ev.Err, ErrLoad):
		case !ev.OK:
			// The other holders may not see a drift (it is this node's
			// view): retrying every epoch would stall each one for the
			// matchmaking timeout. The next incomplete gradient round or
			// the periodic round tries again.
			m.drift = false
		default:
			m.drift = ev.Fraction < 1 || ev.Group < m.reliableGroup(in)
		}
		return m.afterStepping(in, m.stepEpoch+1)
	case catchLocal:
		if ev.OK {
			// A donor serves its last outer state, which may be a round
			// behind what its record says while it is in its next outer
			// round (or waiting for this node in it). Reopening at the
			// state's own round would find the donors ahead again and catch
			// up again, forever; the round the corroborated holders are in
			// lets this node meet them in it, and the round's averaging
			// brings its parameters along.
			return m.reopen(max(ev.Epoch, aheadEpoch(m.latestAhead(in), in.Records)))
		}
		return m.reopen(m.epoch)
	}
	return m.tick(in)
}

// tick decides, with the epoch open, whether it is due.
func (m *Machine) tick(in Input) Action {
	n := in.Node
	if n.Held && n.Done && !n.Evaluated && n.Shard == 0 {
		return Action{Kind: Evaluate, Shard: n.Shard, Epoch: n.Epoch}
	}
	if !n.Held || !n.Online || n.Done || n.Shard < 0 {
		return Action{}
	}
	m.shard, m.epoch, m.donors = n.Shard, n.Epoch, nil
	if !m.cfg.Local {
		// The epoch ends when the first shard's holders together finished
		// the target batch (each counted within what it could have done),
		// or when the swarm is in a later epoch as its holders corroborate
		// it. A pipeline request's epoch is no input: one peer's requests
		// cannot end epochs (the records say when the swarm moved on).
		if m.Samples(in) >= m.cfg.TargetBatch || SwarmEpoch(in.Records) > n.Epoch {
			m.phase = closing
			return Action{Kind: Close, Shard: n.Shard, Epoch: n.Epoch}
		}
		return Action{}
	}
	// A holder of the shard already in a later round (this node joined
	// from a snapshot taken just before an outer step, or missed one)
	// would never share a round with it again.
	if d := m.latestAhead(in); len(d) > 0 {
		m.phase, m.donors = closing, d
		return Action{Kind: Close, Shard: n.Shard, Epoch: n.Epoch}
	}
	// The round ends when the shard's holders together took local_steps
	// (or the pace's longer target) inner steps each on average: all of them see it at about the same
	// moment, so they average together even though the wiring gives them
	// unequal shares.
	steps := m.cfg.LocalSteps
	if in.Node.RoundSteps > 0 {
		steps = in.Node.RoundSteps
	}
	due := m.shardInner(in) >= steps
	if n.Shard > 0 {
		// Later shards follow the first shard's rounds: their own count
		// runs ahead while a holder is still joining.
		if first, ok := firstShardRound(in.Records); ok {
			due = first > n.Epoch
		}
	}
	if !due {
		return Action{}
	}
	// A holder loading this shard's state to join it (its record joining
	// the shard) is waited for, JoinWait at most: the state it loads is
	// this round's anchor, and a round averaged without it parts them, the
	// outer step taken alone here and the joiner's own round alone there,
	// which costs a dense outer-state round later (outerApart). In two of
	// three 30-round demos every shard paid one so at the start (the second
	// holder came online 0.8 s into the first holder's first round). The
	// round runs on meanwhile (inner steps go on); a joiner that did not
	// come within JoinWait is late, and not waited for again.
	if joining := m.matesJoining(in); len(joining) > 0 {
		if m.joinFrom.IsZero() || m.joinEpoch != n.Epoch {
			m.joinEpoch, m.joinFrom = n.Epoch, in.Now
		}
		if in.Now.Sub(m.joinFrom) < JoinWait {
			return Action{}
		}
		for _, p := range joining {
			m.markLate(p)
		}
	}
	// A holder whose mates are all in earlier rounds (one gave up on a
	// group the other still waited in) waits for them here instead of
	// running on: a lone holder's lead is nobody's corroborated epoch, so
	// the mates could never catch up from it, and each would average alone,
	// waiting on the other, for the rest of the run. Behind, they take
	// their rounds alone and reach this one. A mate that has not within
	// AheadWait is late: not waited for again until it shares a round, or
	// LateProbe rounds later.
	if behind := m.matesBehind(in); len(behind) > 0 {
		if in.Now.Sub(m.openedAt(in)) < AheadWait {
			return Action{}
		}
		for _, p := range behind {
			m.markLate(p)
		}
	}
	// Some rounds also average the outer state, which every holder keeps
	// for itself: after a round that a holder averaged alone or in part,
	// their anchors differ and the same averaged delta would keep them
	// apart. Holders agree on these rounds by number, and on whether they
	// are needed by the fingerprints in their records; the run's last
	// round is among them, so holders end on one model.
	full := (n.Epoch%OuterStateEvery == OuterStateEvery-1 || m.cfg.Finished(n.Epoch+1)) && m.outerApart(in)
	return Action{Kind: OuterStep, Shard: n.Shard, Epoch: n.Epoch, Full: full, Group: m.groupSize(in)}
}

// outerApart reports whether this node's outer state may differ from that
// of a shard-mate in its round: a mate in the round that shows no
// fingerprint, or another than this node's, or this node without one (it
// loaded a state of another round). Mates in other rounds are not asked:
// one behind catches up from a holder ahead (catchLocal), and one ahead is
// no mate. Every holder in the round sees the same records, published when
// the round opened, a round's inner steps before it is due: they agree on
// the answer unless a record is that late, and a round they disagree on
// (averaged under two keys, each part alone or in part) parts their
// fingerprints, which the next eligible round sees.
func (m *Machine) outerApart(in Input) bool {
	own := in.Node.Outer
	if own == 0 {
		return true
	}
	mates := m.mates(in)
	for _, r := range in.Records {
		if r.Epoch == in.Node.Epoch && slices.Contains(mates, r.Peer) && r.Outer != own {
			return true
		}
	}
	return false
}

// GatherGrace is how long a holder that closed its epoch first waits for
// its shard-mates' records to show them closing it too before its gradient
// round starts. Honest holders close on the same records: on one machine or
// a LAN within milliseconds of each other, but over slow links a record
// takes a link's latency, and the queue of the averaging traffic sharing
// it, to arrive. The wait adapts (gatherWait): a gather that ended with a
// reliable mate still not closing doubles it for the next epochs, and one
// that saw every reliable mate close sets it to twice the latest of them,
// never below GatherGrace nor above GatherMax. Without it, over a 50 ms
// link the last mate's closing record came after 200 ms in most epochs: it
// was counted late, left out of the round it was about to join, averaged
// alone and fell behind (sync mode at 2% utilisation on two of four
// nodes).
const GatherGrace = 200 * time.Millisecond

// GatherMax bounds the adapted wait: a mate that closes just before the
// wait ends, every epoch (slow, or hostile), costs each epoch that much at
// most. It is the matchmaking window a round waits for a member anyway.
const GatherMax = time.Second

// LateProbe: a mate that was waited for in a gradient round and did not
// join it, or that was not closing its epoch when the others closing it
// started the round (late), is not waited for again, until it joins a
// round, or once every LateProbe epochs. A holder that keeps finishing its epochs late (one
// whose samples the others did not believe, one that lost its way when the
// other shard banned it) then costs the matchmaking window once in that
// many epochs, not in every round; an honest one that missed a round is
// waited for again as soon as it is in one.
const LateProbe = 32

// gather waits, GatherGrace at most, until every reliable shard-mate (not
// late) is closing this epoch, then starts the gradient round (average).
func (m *Machine) gather(in Input) Action {
	if m.phase != gathering {
		m.phase, m.gatherFrom = gathering, in.Now
	}
	waited := in.Now.Sub(m.gatherFrom)
	closing := m.closingMates(in)
	all := true
	for _, p := range m.reliable(in) {
		all = all && slices.Contains(closing, p)
	}
	if !all && waited < m.gatherWait() {
		return Action{}
	}
	m.adaptGather(all, waited)
	return m.average(in)
}

// gatherWait is how long gathering waits now (GatherGrace until adapted).
func (m *Machine) gatherWait() time.Duration {
	if m.gatherFor <= 0 {
		return GatherGrace
	}
	return m.gatherFor
}

// adaptGather sets the next epochs' wait from this gather: doubled when it
// ran out with a reliable mate still not closing, else twice the time the
// last reliable mate's closing took to show (waited), coming down by a
// quarter an epoch at most (arrivals over a link vary with its queue);
// within [GatherGrace, GatherMax].
func (m *Machine) adaptGather(all bool, waited time.Duration) {
	next := max(2*waited, m.gatherWait()*3/4)
	if !all {
		next = 2 * m.gatherWait()
	}
	m.gatherFor = min(max(next, GatherGrace), GatherMax)
}

// reliable are the mates that are not late (or are due for a probe).
func (m *Machine) reliable(in Input) []string {
	var out []string
	for _, p := range m.mates(in) {
		if at, late := m.late[p]; !late || m.epoch >= at+LateProbe {
			out = append(out, p)
		}
	}
	return out
}

// closingMates are the mates whose records show them closing this epoch.
func (m *Machine) closingMates(in Input) []string {
	var out []string
	for _, r := range in.Records {
		// With delayed updates a mate one epoch ahead detached this
		// epoch's round and reopened: it is in the round.
		past := m.cfg.Lag() > 0 && r.Epoch == m.epoch+1
		if r.Shard == m.shard && r.Peer != m.cfg.Self && (r.Epoch == m.epoch && r.Closing || past) && slices.Contains(m.mates(in), r.Peer) {
			out = append(out, r.Peer)
		}
	}
	return out
}

// average starts the gradient round, or skips it when the shard has no
// other holder. The round waits for the reliable mates closing this epoch
// (or, with none closing, for the reliable mates); the others may still
// join while it gathers. Those waited for and absent are late (noteRound).
func (m *Machine) average(in Input) Action {
	mates := m.mates(in)
	m.group = 1
	if len(mates) == 0 {
		m.expected, m.wanted = 0, nil
		return m.afterRound(in)
	}
	m.phase = averaging
	want := m.reliable(in)
	var closing []string
	for _, p := range m.closingMates(in) {
		if slices.Contains(want, p) {
			closing = append(closing, p)
		}
	}
	if len(closing) > 0 {
		// The reliable mates not closing by now finish late: late.
		for _, p := range want {
			if !slices.Contains(closing, p) {
				m.markLate(p)
			}
		}
		want = closing
	}
	m.expected, m.wanted = len(want), want
	group := max(min(len(want)+1, m.cfg.GroupSize), 2)
	detach := m.cfg.Lag() > 0 && !m.cfg.Finished(m.epoch+1)
	a := Action{Kind: Average, Shard: m.shard, Epoch: m.epoch, Key: KeyGrad, Group: group, Detach: detach}
	if len(want) < m.cfg.GroupSize {
		// The round waits for the mates it wants, not for a count: a
		// late mate may still join while a place is left, but it never
		// takes the place of one that was on time (which would then
		// average alone, and be late for the next round in its turn).
		// With more wanted than a group holds, any of them will do.
		a.Want, a.Room = slices.Clone(want), max(group, m.groupSize(in))
	}
	return a
}

// takeRound takes a gradient round's outcome (Averaged, or Land with
// delayed updates): its group (1: alone), whether this node was left out,
// and what its members say of the late mates.
func (m *Machine) takeRound(in Input, ev Event) {
	m.group, m.leftOut = 1, !ev.OK && ev.LeftOut
	if ev.OK {
		m.group = ev.Group
		m.noteRound(in, ev.Members)
	}
}

// noteRound learns from a gradient round's members: a mate waited for and
// absent is late; a member is not.
func (m *Machine) noteRound(in Input, members []string) {
	if m.late == nil {
		m.late = map[string]uint64{}
	}
	mates := m.mates(in)
	for p := range m.late {
		if !slices.Contains(mates, p) || slices.Contains(members, p) {
			delete(m.late, p)
		}
	}
	for _, p := range m.wanted {
		if !slices.Contains(members, p) {
			m.markLate(p)
		}
	}
}

func (m *Machine) markLate(p string) {
	if m.late == nil {
		m.late = map[string]uint64{}
	}
	if len(m.late) < maxLate {
		m.late[p] = m.epoch
	}
}

// maxLate bounds the late mates remembered (noteRound forgets those that
// are no longer mates).
const maxLate = 1024

// afterRound: behind the swarm, or left out of a round a shard-mate
// finished and stepped past, this node's state is stale. It catches up
// through state sync instead of stepping, from a holder of its shard that
// is ahead. When none is (the swarm is ahead only in other shards), this
// shard is the one holding the swarm back: it steps, and the next epochs
// end at once until it is level.
func (m *Machine) afterRound(in Input) Action {
	if d := m.holdersAhead(in, m.shard, m.epoch); len(d) > 0 && (SwarmEpoch(in.Records) > m.epoch+1 || m.group <= 1) {
		m.phase = catchAfter
		return Action{Kind: CatchUp, Shard: m.shard, Epoch: m.epoch, Donors: d}
	}
	m.phase, m.stepEpoch, m.then = stepping, m.epoch, reopenNext
	return Action{Kind: Step, Shard: m.shard, Epoch: m.epoch}
}

// afterStep: holders that missed a round, or joined, drift apart;
// averaging the whole state every StateEvery epochs, and right after a
// round that did not include every holder, pulls them back together. A
// holder that came online during the round (a joiner, with a copy of a
// holder's state) was not missed by it. The run's last epoch is always a
// state round (holders agree on it by number), so holders end on one model
// even if a late round missed one of them.
//
// A holder left out of the round (its mates grouped without it: LeftOut)
// stepped with its own gradient and differs from them by that step, but
// runs no state round for it: its mates, each having averaged with every
// mate it waited for, run none, and one alone would only wait out the
// matchmaking timeout, late for the next round too. Over a 50 ms link that
// kept one node of four out of every round, a round behind, for whole
// runs. The periodic state round and the run's last bring it back.
func (m *Machine) afterStep(in Input) Action {
	holders := len(m.mates(in))
	if m.group < min(m.expected, holders)+1 && !m.leftOut {
		m.drift = true
	}
	e := m.stepEpoch
	last := m.cfg.Finished(e + 1)
	if holders > 0 && (m.drift || last || e%StateEvery == StateEvery-1) {
		m.phase = syncing
		return Action{Kind: AverageState, Shard: m.shard, Epoch: e, Key: KeyState, Group: m.reliableGroup(in), Delayed: m.then != reopenNext}
	}
	return m.afterStepping(in, e+1)
}

// caughtUp reopens after a catch-up (sync mode) that loaded the state of
// epoch: at that epoch, unless the shard's holders moved on to the next
// one meanwhile (their round of it over; with delayed updates, in flight).
// A download slower than an epoch (a state is three gradients, and over a
// slow link it shares the donor's uplink with its rounds) would otherwise
// find them ahead again and catch up again, forever, never computing: over
// 100 Mbit/s two nodes of four did for a whole run. The node then takes
// part from the next epoch on, one step short of its mates, which the
// periodic state round (or the run's last) makes up.
func (m *Machine) caughtUp(in Input, epoch uint64) Action {
	past := epoch + m.cfg.Lag()
	if aheadEpoch(m.holdersAhead(in, m.shard, past), in.Records) == past+1 {
		return m.reopen(epoch + 1)
	}
	return m.reopen(epoch)
}

func (m *Machine) reopen(epoch uint64) Action {
	m.phase = open
	return Action{Kind: Reopen, Shard: m.shard, Epoch: epoch, Finished: m.cfg.Finished(epoch)}
}

// Abort reports whether the gradient round under way (or in flight) is
// pointless: a holder of the shard is already past its epoch (with delayed
// updates, Lag epochs past it), so the round is over without this node.
func (m *Machine) Abort(in Input) bool {
	if f := m.flight; f != nil {
		return len(m.holdersAhead(in, f.shard, f.epoch+m.cfg.Lag())) > 0
	}
	return m.phase == averaging && len(m.holdersAhead(in, m.shard, m.epoch)) > 0
}

// MayRebalance reports whether this node may consider moving to another
// shard now: online, not finished, its last move at least twice the
// rebalancing interval ago, and no node finished the run yet (a finished
// holder's shard looks unheld to the plan, and a move would only restart
// this node for the last epochs).
func (m *Machine) MayRebalance(in Input, movedAt time.Time, every time.Duration) bool {
	n := in.Node
	if !n.Online || n.Done || in.Now.Sub(movedAt) < 2*every {
		return false
	}
	for _, r := range in.Records {
		if r.State == progress.StateDone {
			return false
		}
	}
	return true
}

// Samples is the samples the first shard's holders finished in this
// node's epoch (this node's from its counters), each peer's counted within
// what it could have finished since it was first seen in the epoch
// (sampleBound).
func (m *Machine) Samples(in Input) int {
	n := 0
	if in.Node.Shard == 0 {
		n = in.Node.Samples
	}
	m.observe(in.Records, in.Now)
	rc := m.rateCap(in.Records)
	live, opened := m.firstShardLive(in), m.openedAt(in) // opened from the epoch's first look, not the first need
	for _, r := range in.Records {
		if r.Peer == m.cfg.Self || r.Shard != 0 || m.Overclaims(r) {
			continue
		}
		switch r.Epoch {
		case in.Node.Epoch:
			n += min(r.Samples, m.sampleBound(r, in.Now, rc))
		case in.Node.Epoch + 1:
			if !live {
				// A first-shard holder already in the next epoch saw this
				// one's target reached; the records that showed it are gone
				// once their holders moved on. While no first-shard holder
				// still in this epoch finishes samples (a mate whose
				// micro-batches all fail, one that vanished), nobody else
				// could close it: the one ahead counts as the whole target
				// batch, held to what it could have finished since this
				// epoch opened here. A liar one epoch ahead of honest holders
				// that do finish samples counts for nothing.
				n += min(m.cfg.TargetBatch, m.boundSince(r, opened, in.Now, rc))
			}
		}
	}
	m.pruneClaims(in.Records)
	return n
}

// firstShardLive reports whether a holder of the first shard in this node's
// epoch (this node included) finished samples within ClaimStall.
func (m *Machine) firstShardLive(in Input) bool {
	if in.Node.Shard == 0 {
		m.own.note(in.Node.Epoch, in.Node.Samples, in.Now, m.own.at.IsZero())
		if in.Now.Sub(m.own.at) < ClaimStall {
			return true
		}
	}
	for _, r := range in.Records {
		if r.Peer != m.cfg.Self && r.Shard == 0 && r.Epoch == in.Node.Epoch && holding(r) && !m.Overclaims(r) && m.claimLive(r, in.Now) {
			return true
		}
	}
	return false
}

// Claimed adds to Samples the samples the first shard's holders started in
// this epoch and have not finished; a peer that finished nothing for
// ClaimStall no longer counts. It forgets the claims of peers without a
// live record.
func (m *Machine) Claimed(in Input) int {
	n := m.Samples(in)
	if in.Node.Shard == 0 {
		n += in.Node.Drawn
	}
	rc := m.rateCap(in.Records)
	for _, r := range in.Records {
		if r.Peer != m.cfg.Self && r.Shard == 0 && r.Epoch == in.Node.Epoch && r.State == progress.StateOnline && !m.Overclaims(r) && m.claimLive(r, in.Now) {
			// Finished and in flight together within the peer's bound:
			// a liar's claim must not keep the others from drawing what
			// Samples does not count.
			b := m.sampleBound(r, in.Now, rc)
			n += min(r.Samples+r.InFlight, b) - min(r.Samples, b)
		}
	}
	m.pruneClaims(in.Records)
	return n
}

// Share is this node's share of the target batch: an equal part among the
// online holders of the first shard that hold one (sharing).
func (m *Machine) Share(in Input) int {
	n := 1
	for _, r := range in.Records {
		if r.Peer != m.cfg.Self && r.Shard == 0 && r.State == progress.StateOnline && m.sharing(r, in) {
			n++
		}
	}
	return (m.cfg.TargetBatch + n - 1) / n
}

// ShareGrace is how long after this node opened its epoch a first-shard
// holder that has not started on it still holds a share of its target
// batch (Share). Holders reopen an epoch together, within milliseconds of
// each other, and each hears of the others' reopening only from their
// next records: counting a holder whose record is still in the epoch
// before out of the share made every holder draw the whole target batch
// at once (the demo computed 1.75 times the samples its epochs count). A
// holder that stays idle or behind (a liar, a paused volunteer, one left
// behind) leaves its share to the others after the grace, so it can delay
// an epoch by ShareGrace at most and never keep it from filling.
const ShareGrace = 250 * time.Millisecond

// sharing reports whether r, a first-shard peer's record, holds a share of
// this node's epoch: it is in the epoch, or (within ShareGrace of its
// opening) one epoch behind it; it started or finished samples in it, or
// the epoch opened less than ShareGrace ago; its started samples did not
// stop finishing (ClaimStall); its record is not a lie on its face. A
// record in a later epoch, or further behind, holds none: its samples do
// not count in this one, and a peer claiming an epoch nobody corroborates
// would otherwise hold a share nobody draws.
func (m *Machine) sharing(r progress.Record, in Input) bool {
	e := in.Node.Epoch
	behind := e > 0 && r.Epoch == e-1
	if r.Epoch != e && !behind || m.Overclaims(r) {
		return false
	}
	if r.InFlight > 0 && !m.claimLive(r, in.Now) {
		return false
	}
	started := r.Epoch == e && r.Samples+r.InFlight > 0
	return started || in.Now.Sub(m.openedAt(in)) < ShareGrace
}

// openedAt is when this core saw this node open its epoch: when Step
// answered Reopen, or the first time it saw the epoch.
func (m *Machine) openedAt(in Input) time.Time {
	if m.opened.IsZero() || m.openEpoch != in.Node.Epoch {
		m.openEpoch, m.opened = in.Node.Epoch, in.Now
	}
	return m.opened
}

// claimLive reports whether r's claim still counts: r finished samples
// within ClaimStall.
func (m *Machine) claimLive(r progress.Record, now time.Time) bool {
	return now.Sub(m.seen(r, now).at) < ClaimStall
}

// pruneClaims forgets the claims of peers without a live record, so the
// map never outgrows the tracker.
func (m *Machine) pruneClaims(live []progress.Record) {
	if len(m.claims) <= len(live) {
		return
	}
	keep := make(map[string]bool, len(live))
	for _, r := range live {
		keep[r.Peer] = true
	}
	for p := range m.claims {
		if !keep[p] {
			delete(m.claims, p)
		}
	}
}

// holders are the other live holders of shard, online or done.
func (m *Machine) holders(in Input, shard int) []string {
	var out []string
	for _, r := range in.Records {
		if r.Shard == shard && r.Peer != m.cfg.Self && r.State != progress.StateJoining {
			out = append(out, r.Peer)
		}
	}
	return out
}

// groupSize starts a round as soon as every live holder joined it, rather
// than waiting out the matchmaking window when the shard has fewer holders
// than the manifest's group size.
// reliableGroup is groupSize without the late mates: a state round does
// not wait for a mate that does not join rounds (at least two, with any
// mate).
func (m *Machine) reliableGroup(in Input) int {
	if len(m.mates(in)) == 0 {
		return 1
	}
	return max(min(len(m.reliable(in))+1, m.cfg.GroupSize), 2)
}

func (m *Machine) groupSize(in Input) int {
	return min(len(m.mates(in))+1, m.cfg.GroupSize)
}

// mates are the other live holders of the shard being ended that may
// share its rounds: none past its epoch (a holder ahead already averaged
// it, and one whose lead nobody corroborates is not waited for either),
// none whose record lies on its face (Overclaims).
func (m *Machine) mates(in Input) []string {
	var out []string
	for _, r := range in.Records {
		if r.Shard == m.shard && r.Peer != m.cfg.Self && r.State != progress.StateJoining && r.Epoch <= m.epoch+m.cfg.Lag() && !m.Overclaims(r) {
			out = append(out, r.Peer)
		}
	}
	return out
}

// holdersAhead is the other online (or done) holders of shard whose epoch
// is later than epoch, latest first. Catching up from a holder that is not
// ahead would only restore this node's own epoch, and two holders left
// behind by the other shards would do so from each other forever. A holder
// beyond the swarm's corroborated epoch (SwarmEpoch) is not one, nor is a
// single holder ahead while the shard's other holders are not: a single
// peer's claim to be ahead neither aborts a round nor offers a state.
func (m *Machine) holdersAhead(in Input, shard int, epoch uint64) []string {
	var recs []progress.Record
	swarm := SwarmEpoch(in.Records)
	others := 0
	for _, r := range in.Records {
		if r.Peer != m.cfg.Self && r.Shard == shard && active(r) {
			others++
			if r.Epoch > epoch && r.Epoch <= swarm {
				recs = append(recs, r)
			}
		}
	}
	// The shard itself must agree that it moved on: two holders ahead, or
	// a majority of its other holders (a lone shard-mate ahead is one).
	if len(recs) < 2 && 2*len(recs) <= others {
		return nil
	}
	slices.SortStableFunc(recs, func(a, b progress.Record) int { return cmp.Compare(b.Epoch, a.Epoch) })
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Peer
	}
	return out
}

// latestAhead is the other online (or done) holders of this node's shard
// in the latest round, when that round is later than this node's (local
// mode) and no later than the swarm's corroborated one.
func (m *Machine) latestAhead(in Input) []string {
	var out []string
	top := in.Node.Epoch
	swarm := SwarmEpoch(in.Records)
	for _, r := range in.Records {
		if r.Peer == m.cfg.Self || r.Shard != in.Node.Shard || r.Epoch <= in.Node.Epoch || r.Epoch > swarm || !active(r) {
			continue
		}
		if r.Epoch > top {
			top, out = r.Epoch, nil
		}
		out = append(out, r.Peer)
	}
	return out
}

// AheadWait bounds how long a local-mode holder ahead of all its mates
// waits for one of them to reach its round (matesBehind).
const AheadWait = 10 * time.Second

// JoinWait bounds how long a local-mode holder whose round is due waits
// for a holder joining its shard (matesJoining) to come online.
const JoinWait = 5 * time.Second

// matesJoining are the peers whose records say they are loading this
// node's shard to join it, none of them late (one not come within
// JoinWait once).
func (m *Machine) matesJoining(in Input) []string {
	var out []string
	for _, r := range in.Records {
		if r.Peer == m.cfg.Self || r.Shard != in.Node.Shard || r.State != progress.StateJoining || m.Overclaims(r) {
			continue
		}
		if _, late := m.late[r.Peer]; !late {
			out = append(out, r.Peer)
		}
	}
	return out
}

// matesBehind are the online mates of this node's shard (local mode) that
// it waits for before its outer step: all of them when every one is in an
// earlier round, none when one shares its round or is past it. Mates that
// are late (and not due for a probe) are not waited for; one sharing the
// round is late no more.
func (m *Machine) matesBehind(in Input) []string {
	var behind []string
	for _, r := range in.Records {
		if r.Peer == m.cfg.Self || r.Shard != in.Node.Shard || r.State != progress.StateOnline || m.Overclaims(r) {
			continue
		}
		if r.Epoch >= in.Node.Epoch {
			delete(m.late, r.Peer)
			return nil
		}
		if at, late := m.late[r.Peer]; !late || m.epoch >= at+LateProbe {
			behind = append(behind, r.Peer)
		}
	}
	return behind
}

// aheadEpoch is the round the holders named by peers (latestAhead) are in;
// 0 when there are none.
func aheadEpoch(peers []string, recs []progress.Record) uint64 {
	var top uint64
	for _, r := range recs {
		if slices.Contains(peers, r.Peer) {
			top = max(top, r.Epoch)
		}
	}
	return top
}

// shardInner is the mean number of inner steps (micro-batches) the holders
// of this node's shard took in the current outer round (local mode).
func (m *Machine) shardInner(in Input) int {
	samples, holders := in.Node.Samples, 1
	for _, r := range in.Records {
		if r.Peer != m.cfg.Self && r.Shard == in.Node.Shard && r.State == progress.StateOnline {
			holders++
			if r.Epoch == in.Node.Epoch {
				samples += r.Samples
			}
		}
	}
	return samples / (holders * max(m.cfg.BatchSize, 1))
}

// firstShardRound is the lowest round among the first shard's online (or
// done) holders; ok is false when it has none.
func firstShardRound(recs []progress.Record) (uint64, bool) {
	var low uint64
	ok := false
	for _, r := range recs {
		if r.Shard == 0 && active(r) {
			if !ok || r.Epoch < low {
				low = r.Epoch
			}
			ok = true
		}
	}
	return low, ok
}

func active(r progress.Record) bool {
	return r.State == progress.StateOnline || r.State == progress.StateDone
}
