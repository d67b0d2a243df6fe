package dataset

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the data protocol's collectors (swarm_data_*). A nil
// *Metrics counts nothing.
type Metrics struct {
	bytes  *prometheus.CounterVec // direction: in, out
	chunks *prometheus.CounterVec // outcome: ok, corrupt, missing, failed
}

// NewMetrics registers the collectors on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "swarm", Subsystem: "data", Name: "bytes_total",
			Help: "Data set bytes fetched from peers (in, verified) and served to them (out)."}, []string{"direction"}),
		chunks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "swarm", Subsystem: "data", Name: "chunks_total",
			Help: "Data set chunks asked of peers, by outcome: ok (verified), corrupt (failed its CID), missing (not held), failed (stream error or stall)."}, []string{"outcome"}),
	}
	for _, c := range []prometheus.Collector{m.bytes, m.chunks} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("dataset: register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *Metrics) addBytes(direction string, n int) {
	if m != nil {
		m.bytes.WithLabelValues(direction).Add(float64(n))
	}
}

func (m *Metrics) chunk(outcome string) {
	if m != nil {
		m.chunks.WithLabelValues(outcome).Inc()
	}
}
