package trainer

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/internal/clock"
	"github.com/swarm-train/swarm/swarm/data"
)

// driver is the first-shard driver: on a node that holds shard 0 it draws
// micro-batches from the node's own order of the training data and sends
// them through the pipeline, keeping several in flight at once — as many as
// Config.InFlight fixes, or as the in-flight controller (flightCtl) finds
// keep the engine busy while activations travel. It owns the data stream,
// the controller and its count of micro-batches in flight, under its own
// lock (a leaf). Whether a micro-batch may start at all (the node online
// on shard 0, the epoch open, the target batch not yet drawn) is the
// trainer's to say, through driverGate.
type driver struct {
	clk   clock.Clock
	log   *slog.Logger
	hop   time.Duration // a micro-batch's deadline, through the whole pipeline
	fixed int           // Config.InFlight; 0: adapt
	gate  driverGate

	srcMu sync.Mutex
	src   data.Source // set by Run before the loops start

	mu      sync.Mutex
	flight  flightCtl
	busyAt  time.Duration // the node's busy time when its last micro-batch finished
	driving int           // micro-batches drawn and not finished
	trips   int           // micro-batches finished, for the periodic debug line
}

// windowLogEvery is how many finished micro-batches apart the driver logs
// its window (debug): the limit, the round trips and the compute behind it.
const windowLogEvery = 200

// driverGate is what the driver needs of the trainer.
type driverGate interface {
	// waitRunning blocks while the volunteer's limits pause training.
	waitRunning(ctx context.Context) error
	// admitDraw waits until this node may start a micro-batch on shard 0
	// and admits it in the epoch; slots says whether the driver has room
	// for another in flight and takes it. It returns the shard, the epoch
	// and how many samples to draw; false once ctx ends.
	admitDraw(ctx context.Context, slots flightSlots) (engine.Shard, uint64, int, bool)
	// send runs a drawn micro-batch of epoch through the pipeline.
	send(ctx context.Context, sh engine.Shard, epoch uint64, b *engine.Batch) error
	// undraw ends an admitted micro-batch of n samples of epoch, finished
	// or failed: it no longer counts as drawn or in flight in the epoch.
	undraw(epoch uint64, n int)
	// poke pushes this node's progress record (samples it claimed are free
	// again).
	poke()
}

// flightSlots are the driver's places in flight as admitDraw sees them:
// room and take are called under the trainer's lock, which serialises
// them, so a place seen free is still free when taken.
type flightSlots interface {
	room() bool
	take()
}

// failPause is how long a drive loop waits after a failed micro-batch.
const failPause = 50 * time.Millisecond

func newDriver(clk clock.Clock, log *slog.Logger, hop time.Duration, fixed int, gate driverGate) *driver {
	return &driver{clk: clk, log: log, hop: hop, fixed: fixed, gate: gate, flight: newFlightCtl()}
}

// loops is the number of goroutines that draw micro-batches: one per place
// in flight at most.
func (d *driver) loops() int {
	if d.fixed > 0 {
		return d.fixed
	}
	return autoMaxInFlight
}

// limit is how many micro-batches this node may have in the pipeline now.
func (d *driver) limit() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.limitLocked()
}

func (d *driver) room() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.driving < d.limitLocked()
}

func (d *driver) take() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.driving++
}

func (d *driver) limitLocked() int {
	if d.fixed > 0 {
		return d.fixed
	}
	return d.flight.limit
}

// computed tells the controller the node's busy time when a micro-batch of
// the first shard finished: the engine time per micro-batch is the busy
// time since the last one finished (concurrent ones share it).
func (d *driver) computed(busy time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.flight.observeCompute(busy - d.busyAt)
	d.busyAt = busy
}

// finished ends one of the driver's micro-batches; a successful one's
// round trip feeds the controller.
func (d *driver) finished(ok bool, trip time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.driving--
	if ok {
		d.flight.observeTrip(trip)
		d.trips++
		if d.trips%windowLogEvery == 0 {
			d.log.Debug("pipeline window", "limit", d.limitLocked(), "in_flight", d.driving, "trip", trip,
				"min_trip", slices.Min(d.flight.trips), "max_trip", slices.Max(d.flight.trips), "compute", d.flight.compute)
		}
	}
}

// next draws n training samples.
func (d *driver) next(n int) *engine.Batch {
	d.srcMu.Lock()
	defer d.srcMu.Unlock()
	return d.src.Next(n)
}

// evalSet is the run's held-out set.
func (d *driver) evalSet() *data.EvalSet { return d.src.Eval() }

// run is one drive loop: draw a micro-batch when the trainer admits one,
// send it through the pipeline, account it; until ctx ends.
func (d *driver) run(ctx context.Context) {
	for ctx.Err() == nil {
		if d.gate.waitRunning(ctx) != nil {
			continue
		}
		sh, epoch, n, ok := d.gate.admitDraw(ctx, d)
		if !ok {
			continue
		}
		start := d.clk.Now()
		b := d.next(n)
		mctx, cancel := context.WithTimeout(ctx, d.hop)
		err := d.gate.send(mctx, sh, epoch, b)
		cancel()
		d.finished(err == nil, d.clk.Since(start))
		d.gate.undraw(epoch, n)
		if err != nil && ctx.Err() == nil {
			d.gate.poke()
			if !errors.Is(err, errStale) {
				d.log.Debug("micro-batch failed", "err", err)
			}
			_ = clock.Sleep(ctx, d.clk, failPause)
		}
	}
}
