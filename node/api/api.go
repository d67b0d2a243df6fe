// Package api holds the JSON types of the node's local control API. The
// daemon (package node) serves them and the typed client (package
// node/client) decodes them, so both sides agree on one schema.
package api

import "encoding/json"

// Paths of the control API. /metrics (Prometheus text format) is served on
// the same listener.
const (
	PathStatus  = "/v1/status"
	PathID      = "/v1/id"
	PathPeers   = "/v1/peers"
	PathConnect = "/v1/connect"
	PathRefresh = "/v1/run/refresh"
	PathMetrics = "/metrics"
)

// SchemaVersion is the version of the Status JSON object. It grows when a
// field changes meaning or disappears; new fields do not bump it.
const SchemaVersion = 1

// Reachability verdicts reported in Status.Reachability.
const (
	ReachPublic      = "public"      // other peers can dial us directly
	ReachRelayed     = "relayed"     // behind NAT, reachable through a relay
	ReachUnreachable = "unreachable" // behind NAT, no relay yet
	ReachLocal       = "local"       // only loopback/private addresses, a local swarm
	ReachUnknown     = "unknown"     // no verdict yet
)

// Peer is one remote peer with the addresses we know for it.
type Peer struct {
	PeerID string   `json:"peer_id"`
	Addrs  []string `json:"addrs"`
}

// ID identifies the node: its peer ID and the multiaddrs to hand out.
type ID struct {
	PeerID string   `json:"peer_id"`
	Addrs  []string `json:"addrs"`
}

// Status is the answer of GET /v1/status and the output of
// `swarm status --json`. The README documents every field.
type Status struct {
	Schema           int                        `json:"schema"`
	Version          string                     `json:"version"`
	Role             string                     `json:"role"`
	PeerID           string                     `json:"peer_id"`
	Addrs            []string                   `json:"addrs"`
	ListenAddrs      []string                   `json:"listen_addrs"`
	Reachability     string                     `json:"reachability"`
	ReachabilityHelp string                     `json:"reachability_help"`
	RunID            string                     `json:"run_id"`
	RunName          string                     `json:"run_name"`
	DHTMode          string                     `json:"dht_mode"`
	RoutingTableSize int                        `json:"routing_table_size"`
	Peers            []Peer                     `json:"peers"`
	RunPeers         []Peer                     `json:"run_peers"`
	UptimeSeconds    float64                    `json:"uptime_seconds"`
	Services         map[string]json.RawMessage `json:"services,omitempty"`
}

// ConnectRequest is the body of POST /v1/connect.
type ConnectRequest struct {
	Addr string `json:"addr"`
}

// Error is the body of every 4xx/5xx answer.
type Error struct {
	Error string `json:"error"`
}

// AddressFile is the file in the daemon's home holding the control API's
// address (http://127.0.0.1:PORT or unix:/path). The daemon writes it once
// the API is serving and removes it on shutdown.
const AddressFile = "api"
