package averaging

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	rounds    *prometheus.CounterVec   // mode, outcome
	failures  *prometheus.CounterVec   // kind
	groupSize prometheus.Histogram     //
	bytes     *prometheus.CounterVec   // direction
	duration  *prometheus.HistogramVec // phase
	fraction  prometheus.Histogram
	audits    *prometheus.CounterVec // outcome of a round's audit draw
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "swarm", "averaging"
	m := &metrics{
		rounds: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "rounds_total",
			Help: "Averaging steps by mode (group, gossip, local) and outcome (ok, partial, failed)."}, []string{"mode", "outcome"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "failures_total",
			Help: "Failures by kind: no_group, sender_dropped, reducer_failed, bad_peer, gossip_failed."}, []string{"kind"}),
		groupSize: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "group_size",
			Help: "Size of the groups this peer averaged in.", Buckets: []float64{2, 3, 4, 6, 8, 12, 16, 32, 64}}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "bytes_total",
			Help: "Payload bytes exchanged by direction (sent, received)."}, []string{"direction"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "duration_seconds",
			Help: "Time spent per phase (match, allreduce, gossip, step).", Buckets: prometheus.ExponentialBuckets(0.01, 2, 14)}, []string{"phase"}),
		fraction: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "fraction_averaged",
			Help: "Fraction of the vector averaged with at least one other peer.", Buckets: []float64{0, 0.25, 0.5, 0.75, 0.9, 0.99, 1}}),
		audits: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "audit_draws_total",
			Help: "Rounds whose audit was drawn (audited) or not (skipped), with averaging.audit_rate below 1."}, []string{"outcome"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.rounds, m.failures, m.groupSize, m.bytes, m.duration, m.fraction, m.audits} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
		}
	}
	return m, nil
}
