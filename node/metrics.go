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
	}
	reg.MustRegister(m.runPeers, m.runPeersFound, m.runQueries, m.bootstrapFail,
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
