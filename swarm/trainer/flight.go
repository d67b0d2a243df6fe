package trainer

import (
	"math"
	"slices"
	"time"
)

// MaxInFlight bounds Config.InFlight.
const MaxInFlight = 64

// With Config.InFlight 0 a first-shard node adapts how many micro-batches it
// keeps in the pipeline between these bounds.
const (
	autoMinInFlight = 2
	autoMaxInFlight = 8
	flightTrips     = 32 // round trips remembered
)

// flightCtl sizes the pipeline window of a first-shard node like a
// bandwidth-delay product: a micro-batch is on this node's engine for
// compute out of its whole round trip, so about trip/compute of them keep
// the engine busy while the others travel. The round trip is the minimum of
// the recent ones, so queues that a bigger window builds downstream do not
// feed back into a bigger window still. The limit moves by one per
// observation.
type flightCtl struct {
	limit   int
	trips   []time.Duration // ring of recent round trips
	next    int
	compute time.Duration // moving average of this node's compute per micro-batch
}

func newFlightCtl() flightCtl { return flightCtl{limit: autoMinInFlight} }

// observeCompute records the compute time of one micro-batch on this node.
func (f *flightCtl) observeCompute(d time.Duration) {
	if d <= 0 {
		return
	}
	if f.compute == 0 {
		f.compute = d
		return
	}
	f.compute = (4*f.compute + d) / 5
}

// observeTrip records one micro-batch's round trip (draw to finish) and
// moves the limit towards what the measurements ask for.
func (f *flightCtl) observeTrip(d time.Duration) {
	if d <= 0 {
		return
	}
	if len(f.trips) < flightTrips {
		f.trips = append(f.trips, d)
	} else {
		f.trips[f.next] = d
		f.next = (f.next + 1) % flightTrips
	}
	want := f.want()
	switch {
	case want > f.limit:
		f.limit++
	case want < f.limit:
		f.limit--
	}
}

// want is the window the measurements ask for.
func (f *flightCtl) want() int {
	if f.compute <= 0 || len(f.trips) == 0 {
		return autoMinInFlight
	}
	w := int(math.Ceil(float64(slices.Min(f.trips)) / float64(f.compute)))
	return min(max(w, autoMinInFlight), autoMaxInFlight)
}
