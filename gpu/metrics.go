package gpu

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the GPU collectors on /metrics (namespace swarm, subsystem gpu).
type Metrics struct {
	memTotal, memUsed, otherMem *prometheus.GaugeVec
	util, otherUtil, temp       *prometheus.GaugeVec
	power                       *prometheus.GaugeVec
	paused                      prometheus.Gauge
	pauses                      *prometheus.CounterVec
}

// NewMetrics registers the GPU collectors on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	dev := []string{"gpu", "uuid"}
	g := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "swarm", Subsystem: "gpu", Name: name, Help: help}, dev)
	}
	m := &Metrics{
		memTotal:  g("memory_total_bytes", "GPU memory."),
		memUsed:   g("memory_used_bytes", "GPU memory in use by every process."),
		otherMem:  g("other_memory_bytes", "GPU memory held by processes other than this node's."),
		util:      g("utilization_ratio", "GPU busy share over the last sample period."),
		otherUtil: g("other_utilization_ratio", "SM share used by processes other than this node's."),
		temp:      g("temperature_celsius", "GPU temperature."),
		power:     g("power_watts", "GPU power draw."),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "swarm", Subsystem: "gpu", Name: "paused",
			Help: "1 while the volunteer's limits pause training."}),
		pauses: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "swarm", Subsystem: "gpu", Name: "pauses_total",
			Help: "Pauses by reason (temperature, other-memory, other-util, device)."}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{m.memTotal, m.memUsed, m.otherMem, m.util, m.otherUtil, m.temp, m.power, m.paused, m.pauses} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Metrics) observe(devs []Device, own func(int) bool) {
	for _, d := range devs {
		l := prometheus.Labels{"gpu": strconv.Itoa(d.Index), "uuid": d.UUID}
		m.memTotal.With(l).Set(float64(d.MemoryTotal))
		m.memUsed.With(l).Set(float64(d.MemoryUsed))
		mem, util := OtherUse(d, own)
		m.otherMem.With(l).Set(float64(mem))
		m.otherUtil.With(l).Set(float64(util) / 100)
		if d.UtilizationPct >= 0 {
			m.util.With(l).Set(float64(d.UtilizationPct) / 100)
		}
		m.temp.With(l).Set(float64(d.TemperatureC))
		m.power.With(l).Set(d.PowerW)
	}
}

func (m *Metrics) setState(s State, reason string) {
	if s == Paused {
		m.paused.Set(1)
		m.pauses.WithLabelValues(reason).Inc()
		return
	}
	m.paused.Set(0)
}
