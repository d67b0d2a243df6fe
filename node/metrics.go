package node

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the node's own collectors, next to libp2p's, on the node's
// registry (served at /metrics).
type metrics struct {
	runPeers      prometheus.Gauge
	runPeersFound prometheus.Counter
	runQueries    prometheus.Counter
	bootstrapFail prometheus.Counter

	// Training relays: this node's as a relay, and its streams through others'.
	relayBytes     prometheus.Counter
	relayClosed    *prometheus.CounterVec
	relayRefused   *prometheus.CounterVec
	streamsRelayed prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, n *Node) *metrics {
	const ns, sub = "swarm", "node"
	m := &metrics{
		runPeers: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "run_peers", Help: "Live, verified peers of this node's run."}),
		runPeersFound: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "run_peers_found_total", Help: "Run peers verified by the run handshake."}),
		runQueries: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "run_queries_total", Help: "DHT queries for the run's providers."}),
		bootstrapFail: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "bootstrap_dial_failures_total", Help: "Failed dials to bootstrap peers."}),
		relayBytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "training_relay_bytes_total", Help: "Bytes this node relayed as a training relay, both directions."}),
		relayClosed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "training_relay_circuits_closed_total",
			Help: "Circuits this training relay closed for its budgets (circuit-data: one circuit's; daily-data: the day's)."},
			[]string{"reason"}),
		relayRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "training_relay_refused_total",
			Help: "Reservations and circuits this training relay refused (not-run-peer, daily-budget)."},
			[]string{"reason"}),
		streamsRelayed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "training_streams_relayed_total",
			Help: "Training streams this node opened through a training relay (hole punching had failed)."}),
	}
	reg.MustRegister(m.runPeers, m.runPeersFound, m.runQueries, m.bootstrapFail,
		m.relayBytes, m.relayClosed, m.relayRefused, m.streamsRelayed,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "routing_table_size", Help: "Peers in the DHT routing table."},
			func() float64 { return float64(n.dht.RoutingTable().Size()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "connected_peers", Help: "Peers with an open connection."},
			func() float64 { return float64(len(n.host.Network().Peers())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "uptime_seconds", Help: "Seconds since the node started."},
			func() float64 { return n.uptime().Seconds() }),
	)
	return m
}

// registerProcessCollectors adds the Go runtime and process collectors; only
// the daemon does it (a process has one of each).
func registerProcessCollectors(reg prometheus.Registerer) {
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
}
