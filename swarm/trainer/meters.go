package trainer

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/swarm/epochs"
	"github.com/swarm-train/swarm/swarm/statesync"
)

// meters are this node's measurements: the time its engine computed, the
// samples through its shard and their recent rate, the recent training loss
// (last shard), the last averaging round and the counts behind the
// Prometheus collectors. Progress records, status and metrics read them;
// nothing decides on them but the claims' compute rate. Their lock is a
// leaf: nothing else is locked under it.
type meters struct {
	clk   clock.Clock
	start time.Time // when the trainer was built: wall time counts from it

	mu          sync.Mutex
	busy        time.Duration // wall time during which the engine computed, up to computeFrom
	computing   int           // engine calls running now
	computeFrom time.Time     // when the running ones began
	processed   int64         // samples through this shard, all time
	window      []tpPoint     // (time, processed) over the last throughputWindow
	lossEMA     float64
	lastAvg     avgInfo
	phases      phaseLog // the last synchronous epochs' phases

	avgRounds  atomic.Uint64 // averaging rounds finished (with peers or alone)
	avgGrouped atomic.Uint64 // of them, rounds averaged with at least one peer
	fetched    atomic.Uint64 // bytes of state downloaded from donors
	// Local mode's rounds averaged with peers, by kind: delta rounds and
	// rounds that also average the outer state, with the bytes this node
	// sent and received in them.
	deltaRounds, stateRounds atomic.Uint64
	deltaBytes, stateBytes   atomic.Int64
	deltaValues              atomic.Int64 // the length of the last delta
}

type tpPoint struct {
	t time.Time
	n int64
}

// avgInfo is one averaging round as status and records show it.
type avgInfo struct {
	Round     uint64  `json:"round"`
	GroupSize int     `json:"group_size"`
	Fraction  float64 `json:"fraction"`
	Mode      string  `json:"mode"`
	Seconds   float64 `json:"seconds"`
	// Bytes this node sent and received in the round's all-reduce.
	BytesSent     int64  `json:"bytes_sent,omitempty"`
	BytesReceived int64  `json:"bytes_received,omitempty"`
	Key           string `json:"-"` // local mode: epochs.KeyDelta or KeyOuter
	Values        int    `json:"-"` // local mode: the delta's length
}

// throughputWindow is the span over which samples/s is measured.
const throughputWindow = 10 * time.Second

func newMeters(clk clock.Clock) *meters { return &meters{clk: clk, start: clk.Now()} }

// beginCompute and endCompute bracket engine work (forward, backward,
// optimizer steps): busy time is the wall time during which any of it runs,
// so micro-batches computed concurrently count once and utilisation stays
// within 1.
func (m *meters) beginCompute() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.computing == 0 {
		m.computeFrom = m.clk.Now()
	}
	m.computing++
}

func (m *meters) endCompute() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.computing--
	if m.computing == 0 {
		m.busy += m.clk.Since(m.computeFrom)
	}
}

// busyTime is the time this node has spent computing.
func (m *meters) busyTime() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.busyLocked()
}

func (m *meters) busyLocked() time.Duration {
	if m.computing > 0 {
		return m.busy + m.clk.Since(m.computeFrom)
	}
	return m.busy
}

// wall is the time since the trainer was built.
func (m *meters) wall() time.Duration { return m.clk.Since(m.start) }

// account adds n finished samples.
func (m *meters) account(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.processed += int64(n)
	now := m.clk.Now()
	m.window = append(m.window, tpPoint{now, m.processed})
	for len(m.window) > 2 && now.Sub(m.window[0].t) > throughputWindow {
		m.window = m.window[1:]
	}
}

// samples is the number of samples through this shard, all time.
func (m *meters) samples() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.processed
}

// throughput is samples/s through this shard over the last seconds (0
// before half a second of samples).
func (m *meters) throughput() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.window) < 2 {
		return 0
	}
	a, b := m.window[0], m.window[len(m.window)-1]
	span := m.clk.Since(a.t).Seconds()
	if span < 0.5 || b.n == a.n {
		return 0
	}
	return float64(b.n-a.n) / span
}

// rate is the measured compute rate in FLOP/s on a shard of flops per
// sample; false until the node has computed for a second.
func (m *meters) rate(flops float64) (float64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	busy := m.busyLocked()
	if busy < time.Second || m.processed == 0 {
		return 0, false
	}
	return float64(m.processed) * flops / busy.Seconds(), true
}

// observeLoss feeds a micro-batch's training loss (last shard) into the
// moving average the records report.
func (m *meters) observeLoss(loss float64) {
	if loss <= 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lossEMA == 0 {
		m.lossEMA = loss
	} else {
		m.lossEMA = 0.9*m.lossEMA + 0.1*loss
	}
}

// loss is the recent training loss (0 before any).
func (m *meters) loss() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lossEMA
}

// averaged records a finished averaging round.
func (m *meters) averaged(info avgInfo) {
	m.mu.Lock()
	m.lastAvg = info
	m.mu.Unlock()
	m.avgRounds.Add(1)
	if info.GroupSize > 1 {
		m.avgGrouped.Add(1)
		if info.Values > 0 {
			m.deltaValues.Store(int64(info.Values))
		}
		switch info.Key {
		case epochs.KeyDelta:
			m.deltaRounds.Add(1)
			m.deltaBytes.Add(info.BytesSent + info.BytesReceived)
		case epochs.KeyOuter:
			m.stateRounds.Add(1)
			m.stateBytes.Add(info.BytesSent + info.BytesReceived)
		}
	}
}

// epochEnded logs an epoch's phases (those that passed every phase).
func (m *meters) epochEnded(e epochTimes) {
	p, ok := e.phases()
	if !ok {
		return
	}
	m.mu.Lock()
	m.phases.add(p)
	m.mu.Unlock()
}

// epochPhases are the medians of the last epochs' phases.
func (m *meters) epochPhases() EpochPhases {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.phases.medians()
}

// lastRound is the last averaging round.
func (m *meters) lastRound() avgInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lastAvg
}

// fetchedState counts a snapshot downloaded from donors.
func (m *meters) fetchedState(s *statesync.Snapshot) {
	m.fetched.Add(uint64(4 * (len(s.Params) + len(s.Opt))))
}
