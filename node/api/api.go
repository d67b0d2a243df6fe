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

// Peer is one remote peer with the addresses we know for it. For a peer of
// the run that trains, the fields after Addrs come from its progress record.
type Peer struct {
	PeerID string   `json:"peer_id"`
	Addrs  []string `json:"addrs"`
	// Connection is direct, training-relay (through a training relay of
	// the run: training traffic passes within the relay's budgets), relayed
	// (only through another relay: progress records pass, training waits
	// for hole punching) or unreachable (a run peer this node cannot
	// connect to at all).
	Connection string `json:"connection,omitempty"`
	// Shard is the shard the peer holds (nil when it is not a training
	// peer, -1 while it chooses).
	Shard      *int    `json:"shard,omitempty"`
	Device     string  `json:"device,omitempty"` // GPU model or CPU
	State      string  `json:"state,omitempty"`  // joining, online or done
	Epoch      uint64  `json:"epoch,omitempty"`
	Throughput float64 `json:"throughput,omitempty"` // samples/s through its shard
	// Credit is the samples its record says its receipts back;
	// CreditCheck is this node's last check of the claim: empty (not
	// checked yet), "backed", or why it failed.
	Credit      int64  `json:"credit,omitempty"`
	CreditCheck string `json:"credit_check,omitempty"`
	// Error is why this node cannot reach the peer (unreachable peers).
	Error string `json:"error,omitempty"`
}

// Shard is one shard of the run: its holders and their total throughput.
type Shard struct {
	Index      int      `json:"index"`
	Peers      []string `json:"peers"`
	Throughput float64  `json:"throughput"` // samples/s, summed over the holders
	// NoHolder: no node holds the shard online; training waits until one
	// takes it. LastSeenEpoch is the epoch it was last seen held at (nil:
	// never, as far as this node knows).
	NoHolder      bool    `json:"no_holder,omitempty"`
	LastSeenEpoch *uint64 `json:"last_seen_epoch,omitempty"`
}

// Averaging is this node's last averaging round.
type Averaging struct {
	Round     uint64  `json:"round"`      // epoch (sync mode) or outer round (local mode)
	GroupSize int     `json:"group_size"` // peers in the group, this one included
	Fraction  float64 `json:"fraction"`   // share of the vector averaged with the whole group
	Seconds   float64 `json:"seconds"`
}

// Governor is the state of the volunteer's GPU limits.
type Governor struct {
	State  string `json:"state"`            // running or paused
	Reason string `json:"reason,omitempty"` // why training is paused
}

// ID identifies the node: its peer ID and the multiaddrs to hand out.
type ID struct {
	PeerID string   `json:"peer_id"`
	Addrs  []string `json:"addrs"`
}

// Status is the answer of GET /v1/status and the output of
// `swarm status --json`. The README documents every field.
type Status struct {
	Schema           int      `json:"schema"`
	Version          string   `json:"version"`
	Role             string   `json:"role"`
	PeerID           string   `json:"peer_id"`
	Addrs            []string `json:"addrs"`
	ListenAddrs      []string `json:"listen_addrs"`
	Reachability     string   `json:"reachability"`
	ReachabilityHelp string   `json:"reachability_help"`
	RunID            string   `json:"run_id"`
	RunName          string   `json:"run_name"`
	DHTMode          string   `json:"dht_mode"`
	RoutingTableSize int      `json:"routing_table_size"`
	Peers            []Peer   `json:"peers"`
	RunPeers         []Peer   `json:"run_peers"`
	// UnreachablePeers are peers of the run this node found but cannot
	// connect to, directly or through a relay (connection "unreachable",
	// with the last dial error in Error).
	UnreachablePeers []Peer  `json:"unreachable_peers,omitempty"`
	UptimeSeconds    float64 `json:"uptime_seconds"`
	// MaxUploadMbps is the volunteer's cap on training uploads (0: none).
	MaxUploadMbps float64 `json:"max_upload_mbps,omitempty"`
	// TrainingRelay is this node's training relay service (relay_training);
	// null when it runs none.
	TrainingRelay *TrainingRelay `json:"training_relay,omitempty"`

	// Training, filled when the node trains (zero values otherwise).
	Engine      string     `json:"engine"`        // native, torch-cpu or torch-cuda
	Device      string     `json:"device"`        // this node's device: GPU model or CPU
	Governor    *Governor  `json:"governor"`      // GPU limits; null without GPUs in use
	State       string     `json:"state"`         // this node: joining, online or done
	Shard       int        `json:"shard"`         // held by this node, -1 when none
	Epoch       uint64     `json:"epoch"`         // this node's collaborative epoch
	Epochs      int        `json:"epochs"`        // epochs in the whole run
	SamplesPerS float64    `json:"samples_per_s"` // global: through the first shard
	Loss        float64    `json:"loss"`          // recent training loss (last shard's holders)
	Credit      int64      `json:"credit"`        // samples this node's receipts back (credited work)
	Averaging   *Averaging `json:"averaging"`     // last averaging round; null before the first
	Shards      []Shard    `json:"shards"`
	// Stall says that training with some shard-mates or neighbouring stages
	// cannot go on because this node cannot reach them, and what to do;
	// null when nothing is blocked.
	Stall *Stall `json:"stall,omitempty"`

	Security *Security `json:"security,omitempty"` // admission and refused peer input; omitted on bootstrap nodes without refusals

	Services map[string]json.RawMessage `json:"services,omitempty"`
}

// TrainingRelay is this node's training relay: its budgets and today's use.
type TrainingRelay struct {
	Mbps           float64 `json:"mbps"`             // rate cap, all circuits together
	GBPerDay       float64 `json:"gb_per_day"`       // daily cap (UTC days)
	CircuitMB      int     `json:"circuit_mb"`       // per circuit and direction, MiB
	UsedTodayBytes int64   `json:"used_today_bytes"` // relayed today, both directions
	Spent          bool    `json:"spent"`            // today's budget is used up
	SpentUntil     string  `json:"spent_until,omitempty"`
}

// Stall is training held up by connectivity: the shard-mates and
// neighbouring stages this node cannot train with.
type Stall struct {
	// Stalled is true when no holder of a shard this node needs can be
	// reached (a neighbouring stage, or every other holder of its own
	// shard); false when training goes on with the others, slower.
	Stalled bool `json:"stalled"`
	// Peers are the blocked peers: peer_id, shard, connection (relayed or
	// unreachable) and, in error, why.
	Peers   []Peer `json:"peers"`
	Message string `json:"message"` // what is blocked and what to do
	Since   string `json:"since"`   // RFC 3339
}

// Security is this node's admission to its run and the peer input it refused.
type Security struct {
	Admission string `json:"admission"` // open, token or private
	// TokenExpires is when this node's admission token expires (RFC 3339;
	// token runs only).
	TokenExpires string `json:"token_expires,omitempty"`
	// AdmissionRefused is the latest reason a run peer gave for refusing
	// this node, with what to do about it; empty when none refused it.
	AdmissionRefused string `json:"admission_refused,omitempty"`
	// Refusals counts refused peer input by protocol and reason.
	Refusals []Refusal `json:"refusals"`
	// Offenders is how many peers were disconnected and banned for repeated
	// bad input; Banned how many are refused right now.
	Offenders uint64 `json:"offenders"`
	Banned    int    `json:"banned"`
}

// Refusal is one row of Security.Refusals.
type Refusal struct {
	Protocol string `json:"protocol"`
	Reason   string `json:"reason"`
	Count    uint64 `json:"count"`
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

// TokenFile is the file in the daemon's home holding the control API's
// token: 64 hex digits, mode 0600, created on first start and kept across
// restarts. Every request carries it, normally as
// "Authorization: Bearer <token>"; the CLI reads it from the home.
const TokenFile = "api-token"

// TokenCookie is the cookie a browser gets after opening any GET endpoint
// with ?token=<token> (HttpOnly, SameSite=Strict), so that a dashboard
// served by the API needs the token in its address only once.
const TokenCookie = "swarm_api_token"

// RunSummary is what a training node tells anyone who asks for its run by
// run ID on the summary protocol (node.SummaryProtocol): the public swarm
// page of a bootstrap node reads it, since a bootstrap is not a run peer
// and never sees progress records. Every figure is the node's own report,
// checked for range by the asker but not proven.
type RunSummary struct {
	RunID       string  `json:"run_id"`
	Shard       int     `json:"shard"` // -1 before choosing
	State       string  `json:"state"`
	Epoch       uint64  `json:"epoch"`
	Loss        float64 `json:"loss"`          // the run's recent training loss as this node sees it
	SamplesPerS float64 `json:"samples_per_s"` // this node's samples/s through its shard
	Processed   int64   `json:"processed"`     // samples through its shard since it started
	Credit      int64   `json:"credit"`        // samples its receipts back (signed by the stages it worked with)
	BusySeconds float64 `json:"busy_seconds"`  // its compute time since it started
	Device      string  `json:"device"`
	Engine      string  `json:"engine"`
	Version     string  `json:"version"`
}
