package trainer

import (
	"testing"
	"time"
)

func TestFlightCtl(t *testing.T) {
	ms := time.Millisecond
	cases := []struct {
		name    string
		compute time.Duration
		trips   []time.Duration
		want    int
	}{
		{"no measurements", 0, nil, autoMinInFlight},
		{"trip is mostly compute", 10 * ms, []time.Duration{12 * ms, 15 * ms}, autoMinInFlight},
		{"trip five times compute", 10 * ms, []time.Duration{50 * ms, 48 * ms, 60 * ms}, 5},
		{"slow link, capped", 10 * ms, []time.Duration{400 * ms}, autoMaxInFlight},
		// Queues downstream lengthen most trips; the shortest one sets the window.
		{"queueing ignored", 10 * ms, []time.Duration{30 * ms, 300 * ms, 250 * ms, 280 * ms}, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFlightCtl()
			f.observeCompute(c.compute)
			// Observed many times, the limit settles on the window wanted.
			for range 8 {
				for _, d := range c.trips {
					f.observeTrip(d)
				}
			}
			if len(c.trips) == 0 {
				f.observeTrip(time.Second) // no compute measured: stays at the floor
			}
			if f.limit != c.want {
				t.Fatalf("limit %d, want %d", f.limit, c.want)
			}
		})
	}
}

func TestFlightCtlMovesByOne(t *testing.T) {
	f := newFlightCtl()
	f.observeCompute(time.Millisecond)
	f.observeTrip(time.Second) // wants the cap
	if f.limit != autoMinInFlight+1 {
		t.Fatalf("limit %d after one slow trip, want %d", f.limit, autoMinInFlight+1)
	}
	// The ring forgets old trips: 32 fast ones bring the window back down.
	for range flightTrips + autoMaxInFlight {
		f.observeTrip(time.Millisecond)
	}
	if f.limit != autoMinInFlight {
		t.Fatalf("limit %d after fast trips, want %d", f.limit, autoMinInFlight)
	}
}
