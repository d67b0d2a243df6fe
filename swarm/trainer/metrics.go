package trainer

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/swarm-train/swarm/swarm/progress"
)

// RegisterMetrics registers the trainer's collectors (swarm_training_*) on
// reg. They are read at scrape time from the trainer's state.
func (t *Trainer) RegisterMetrics(reg prometheus.Registerer) error {
	return reg.Register(newCollector(t))
}

type metricDesc struct {
	d   *prometheus.Desc
	typ prometheus.ValueType
}

type collector struct {
	t     *Trainer
	descs map[string]metricDesc
}

func newCollector(t *Trainer) *collector {
	c := &collector{t: t, descs: map[string]metricDesc{}}
	add := func(name string, typ prometheus.ValueType, help string, labels ...string) {
		c.descs[name] = metricDesc{prometheus.NewDesc(prometheus.BuildFQName("swarm", "training", name), help, labels, nil), typ}
	}
	g, k := prometheus.GaugeValue, prometheus.CounterValue
	add("epoch", g, "This node's collaborative epoch (local mode: outer round).")
	add("epochs", g, "Epochs in the whole run.")
	add("shard", g, "Shard held by this node, -1 before it chose.")
	add("state", g, "1 for this node's training state (joining, online, done).", "state")
	add("paused", g, "1 while the volunteer's limits pause training.")
	add("samples_total", k, "Training samples through this node's shard.")
	add("samples_per_second", g, "This node's samples/s through its shard, over the last seconds.")
	add("swarm_samples_per_second", g, "The swarm's samples/s through the first shard.")
	add("loss", g, "Recent training loss reported by the last shard's holders.")
	add("utilization_ratio", g, "This node's time computing divided by wall time.")
	add("compute_seconds_total", k, "Time this node spent computing.")
	add("in_flight_limit", g, "Micro-batches this node may keep in the pipeline at once (first shard).")
	add("averaging_rounds_total", k, "Averaging rounds finished, by outcome (grouped: with at least one peer; alone).", "outcome")
	add("averaging_group_size", g, "Peers in the last averaging round, this node included.")
	add("averaging_fraction", g, "Share of the vector averaged with the whole group in the last round.")
	add("averaging_seconds", g, "Duration of the last averaging round.")
	add("epoch_phase_seconds", g, "Median over this node's last synchronous epochs of each phase of an epoch: open, close, gather, match, reduce, step, and total.", "phase")
	add("pipeline_hops_total", k, "Micro-batches sent to a peer of the next stage.")
	add("pipeline_hop_failures_total", k, "Hops that failed (no answer, bad answer, busy peer).")
	add("pipeline_hop_retries_total", k, "Hops retried with another peer after a failure.")
	add("pipeline_bans_total", k, "Peers excluded for a while (failed hops, invalid micro-batches).")
	add("pipeline_bytes_sent_total", k, "Bytes of training micro-batches (activations, targets) and answers (gradients) this node sent.")
	add("statesync_bytes_total", k, "Shard state moved by state sync, by direction (fetched, served).", "direction")
	add("accuracy", g, "Test accuracy at the end of the run (-1 before).")
	return c
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d.d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	t := c.t
	emit := func(name string, v float64, labels ...string) {
		d := c.descs[name]
		ch <- prometheus.MustNewConstMetric(d.d, d.typ, v, labels...)
	}
	sum := progress.Summarize(t.tracker.Live(t.clk.Now()), len(t.m.Shards))
	t.mu.Lock()
	epoch, index, state, done, acc := t.epoch, t.index, t.state, t.done, t.accuracy
	t.mu.Unlock()
	flight := t.drive.limit()
	mt := t.meters
	processed, busy, tp, avg, wall := mt.samples(), mt.busyTime(), mt.throughput(), mt.lastRound(), mt.wall().Seconds()
	if done {
		state = progress.StateDone
	}
	emit("epoch", float64(epoch))
	emit("epochs", float64(t.totalEpochs()))
	emit("shard", float64(index))
	for _, s := range []string{progress.StateJoining, progress.StateOnline, progress.StateDone} {
		v := 0.0
		if s == state {
			v = 1
		}
		emit("state", v, s)
	}
	paused := 0.0
	if t.pausedNow() {
		paused = 1
	}
	emit("paused", paused)
	emit("samples_total", float64(processed))
	emit("samples_per_second", tp)
	emit("swarm_samples_per_second", sum.Throughput)
	emit("loss", sum.Loss)
	util := 0.0
	if wall > 0 {
		util = busy.Seconds() / wall
	}
	emit("utilization_ratio", util)
	emit("compute_seconds_total", busy.Seconds())
	emit("in_flight_limit", float64(flight))
	rounds, grouped := mt.avgRounds.Load(), mt.avgGrouped.Load()
	emit("averaging_rounds_total", float64(grouped), "grouped")
	emit("averaging_rounds_total", float64(rounds-grouped), "alone")
	emit("averaging_group_size", float64(avg.GroupSize))
	emit("averaging_fraction", avg.Fraction)
	emit("averaging_seconds", avg.Seconds)
	if ph := mt.epochPhases(); ph.Epochs > 0 {
		for _, p := range ph.list() {
			emit("epoch_phase_seconds", p.ms/1000, p.name)
		}
	}
	bs := t.stage.bal.Stats()
	emit("pipeline_hops_total", float64(bs.Hops))
	emit("pipeline_hop_failures_total", float64(bs.Failures))
	emit("pipeline_hop_retries_total", float64(bs.Retries))
	emit("pipeline_bans_total", float64(bs.Bans))
	emit("pipeline_bytes_sent_total", float64(t.stage.sent.Load()))
	emit("statesync_bytes_total", float64(mt.fetched.Load()), "fetched")
	emit("statesync_bytes_total", float64(t.states.BytesServed()), "served")
	emit("accuracy", acc)
}
