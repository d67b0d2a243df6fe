package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/swarm-train/swarm/gpu"
	"github.com/swarm-train/swarm/internal/atomicfile"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/swarm-train/swarm/node/api"
)

// ConfigVersion is the schema version of config.json. A file with another
// version is rejected rather than guessed at.
const ConfigVersion = 1

// DefaultBootstrapPeers is the one place that lists the public bootstrap nodes
// a volunteer dials when neither the config file nor --bootstrap says
// otherwise. It is empty until the project runs public bootstrap nodes; an
// empty list means a local swarm that other peers must dial into.
var DefaultBootstrapPeers = []string{}

// Files inside the home directory.
const (
	IdentityFile = "identity.key"
	ConfigFile   = "config.json"
	APIFile      = api.AddressFile
	LockFile     = "lock"
)

// Role says which program a Node is.
type Role string

const (
	RoleNode      Role = "node"      // volunteer daemon
	RoleBootstrap Role = "bootstrap" // public bootstrap node: DHT server, relay service
)

// Reachability settings accepted in Config.Reachability.
const (
	ReachabilityAuto    = "auto"
	ReachabilityPublic  = "public"
	ReachabilityPrivate = "private"
)

// DHT modes accepted in Config.DHTMode.
const (
	DHTAuto   = "auto"   // server when publicly reachable (or in a local swarm), client otherwise
	DHTServer = "server" // always answer DHT queries
	DHTClient = "client" // never answer DHT queries
)

// Config is the node's configuration. The fields with JSON tags are the
// versioned config file (home/config.json); the others are set by code.
type Config struct {
	Version int `json:"version"`
	// Listen lists the libp2p listen multiaddrs (TCP and QUIC).
	Listen []string `json:"listen"`
	// Bootstrap lists the peers dialled first (/ip4/.../tcp/.../p2p/...).
	// Empty is allowed: a local swarm.
	Bootstrap []string `json:"bootstrap"`
	// API is where the control API listens: host:port on a loopback address
	// or unix:/path/to/socket.
	API string `json:"api"`
	// RunName names the training run this node joins; its CID is the run ID
	// until the run manifest provides one.
	RunName string `json:"run_name"`
	// DHTMode is auto, server or client.
	DHTMode string `json:"dht_mode"`
	// ConnsLow and ConnsHigh are the connection manager's water marks; the
	// resource manager's connection limits are derived from ConnsHigh.
	ConnsLow  int `json:"conns_low"`
	ConnsHigh int `json:"conns_high"`
	// MaxMemoryMB and MaxFDs bound the libp2p resource manager.
	MaxMemoryMB int `json:"max_memory_mb"`
	MaxFDs      int `json:"max_fds"`
	// PortMapping asks the router for a port forward (UPnP / NAT-PMP).
	PortMapping bool `json:"port_mapping"`
	// RelayService makes this node a circuit relay v2 for peers behind NAT
	// (on by default for bootstrap nodes).
	RelayService bool `json:"relay_service"`
	// RelayTraining makes this volunteer a training relay for its run: a
	// circuit relay v2 for the run's peers only, whose circuits carry
	// training traffic (pipeline, averaging, state sync) between peers
	// that failed to punch a direct connection, within the budgets below
	// (--relay-training). It needs a public address.
	RelayTraining bool `json:"relay_training"`
	// RelayMbps caps the rate this node relays at, all circuits together,
	// in megabits per second (--relay-mbps).
	RelayMbps float64 `json:"relay_mbps"`
	// RelayGBPerDay caps what it relays per UTC day, both directions of
	// every circuit together, in gigabytes (--relay-gb-per-day).
	RelayGBPerDay float64 `json:"relay_gb_per_day"`
	// RelayCircuitMB caps what one circuit carries in each direction, in
	// MiB; a circuit over it is closed (the peers open another).
	RelayCircuitMB int `json:"relay_circuit_mb"`
	// MetricsWithoutToken serves /metrics without the API token, for a
	// Prometheus scraper on this machine; the Host and Origin checks still
	// apply and every other endpoint still wants the token.
	MetricsWithoutToken bool `json:"metrics_without_token"`
	// Token is this node's admission token for runs that admit by token
	// (`swarm run admit` prints it; --token, SWARM_TOKEN).
	Token string `json:"token,omitempty"`
	// SwarmKeyFile is the pre-shared key of a private swarm (the 64-hex
	// libp2p key file format): only peers with the same key can connect,
	// and the node listens on TCP only (QUIC cannot use a pre-shared key).
	SwarmKeyFile string `json:"swarm_key_file,omitempty"`
	// Reachability is public, private or auto: public skips AutoNAT and
	// counts this node as dialable at once (the relay service, when on,
	// starts at once); private counts it as behind NAT (relay reservations
	// at once); auto lets AutoNAT decide. Empty means the role's default:
	// public on bootstrap nodes, auto on volunteers (--reachability).
	Reachability string `json:"reachability,omitempty"`
	// Announce replaces the direct addresses this node tells other peers
	// to dial it at (a port forward, a public IP the host cannot see);
	// relay addresses are still added (--announce).
	Announce []string `json:"announce,omitempty"`
	// MaxUploadMbps caps what this node sends on training streams
	// (pipeline, averaging, state sync, progress records), in Mbit/s;
	// 0: no cap (--max-upload-mbps).
	MaxUploadMbps float64 `json:"max_upload_mbps,omitempty"`
	// The volunteer's pause rules for training (flags of the same names
	// override them): ActiveHours is the daily window of local time to
	// train in ("22:00-07:00"; empty: all hours); PauseOtherCPUPct pauses
	// while other processes use more than this share of the CPU (0: never);
	// PauseOnInput pauses while keyboard or mouse input came within this
	// period ("5m"; empty: never).
	ActiveHours      string `json:"active_hours,omitempty"`
	PauseOtherCPUPct int    `json:"pause_other_cpu_pct,omitempty"`
	PauseOnInput     string `json:"pause_on_input,omitempty"`

	// Home is the home directory (identity, config, API address, lock).
	Home string `json:"-"`
	// Role is RoleNode or RoleBootstrap.
	Role Role `json:"-"`
	// RunID overrides the CID derived from RunName (the run manifest's CID).
	RunID cid.Cid `json:"-"`
	// Version string reported in status.
	AppVersion string `json:"-"`
	// Services are started after the host, DHT and API are up, and closed in
	// reverse order before them.
	Services []Service `json:"-"`
	// DiscoveryInterval is the slowest interval between two queries for run
	// peers (the first queries come faster); 0 means the default.
	DiscoveryInterval time.Duration `json:"-"`
	// Admission is the run's admission policy (set from the run manifest;
	// the zero value is an open run).
	Admission Admission `json:"-"`
	// Pprof serves Go's runtime profiles under /debug/pprof/ on the control
	// API (loopback or a unix socket only, like the rest of the API).
	Pprof bool `json:"-"`
}

// DefaultConfig returns the configuration a volunteer gets on first start.
func DefaultConfig() Config {
	return Config{
		Version: ConfigVersion,
		Listen: []string{
			"/ip4/0.0.0.0/tcp/4001",
			"/ip4/0.0.0.0/udp/4001/quic-v1",
			"/ip6/::/tcp/4001",
			"/ip6/::/udp/4001/quic-v1",
		},
		Bootstrap:   append([]string{}, DefaultBootstrapPeers...),
		API:         "127.0.0.1:0",
		RunName:     "default",
		DHTMode:     DHTAuto,
		ConnsLow:    128,
		ConnsHigh:   384,
		MaxMemoryMB: 512,
		MaxFDs:      1024,
		PortMapping: true,
		Role:        RoleNode,
		// Training relay budgets (used with relay_training only).
		RelayMbps:      100,
		RelayGBPerDay:  50,
		RelayCircuitMB: 1024,
	}
}

// ErrCorruptFile is wrapped by errors about a file in the home that cannot
// be parsed; such a file is never overwritten.
var ErrCorruptFile = errors.New("corrupt file")

// LoadConfig reads home/config.json over DefaultConfig. A missing file yields
// the defaults and exists=false; a file that does not parse or validate is
// an error naming the file and the field, and is left untouched.
func LoadConfig(home string) (cfg Config, exists bool, err error) {
	cfg = DefaultConfig()
	cfg.Home = home
	path := filepath.Join(home, ConfigFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return cfg, false, nil
	}
	if err != nil {
		return cfg, false, fmt.Errorf("read config %s: %w", path, err)
	}
	if err := decodeConfig(data, &cfg); err != nil {
		return cfg, true, fmt.Errorf("config %s: %w: %w", path, ErrCorruptFile, err)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, true, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, true, nil
}

// decodeConfig parses a config file over cfg, rejecting unknown fields,
// trailing data and other schema versions.
func decodeConfig(data []byte, cfg *Config) error {
	var probe struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return describeJSONError(data, err)
	}
	if probe.Version == nil {
		return errors.New("field version: missing")
	}
	if *probe.Version != ConfigVersion {
		return fmt.Errorf("field version: %d is not supported (want %d)", *probe.Version, ConfigVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return describeJSONError(data, err)
	}
	if dec.More() {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

func describeJSONError(data []byte, err error) error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		return fmt.Errorf("field %s: want %s, got %s", typeErr.Field, typeErr.Type, typeErr.Value)
	case errors.As(err, &syntaxErr):
		line := 1 + bytes.Count(data[:min(int(syntaxErr.Offset), len(data))], []byte("\n"))
		return fmt.Errorf("line %d: %v", line, err)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return fmt.Errorf("field %s: unknown", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return err
}

// WriteConfig writes cfg as home/config.json if no such file exists yet, so
// that a volunteer has a file to edit. An existing file is never replaced.
func WriteConfig(home string, cfg Config) error {
	cfg.Version = ConfigVersion
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	return writeFileExclusive(filepath.Join(home, ConfigFile), data, 0o644)
}

// writeFileExclusive writes data to path atomically unless a file is
// there already (os.ErrExist): path appears complete or not at all, and an
// existing file is never replaced.
func writeFileExclusive(path string, data []byte, mode os.FileMode) error {
	return atomicfile.WriteNew(path, data, mode)
}

// Validate checks every field and names the first bad one.
func (c *Config) Validate() error {
	if c.Version != ConfigVersion {
		return fmt.Errorf("field version: %d is not supported (want %d)", c.Version, ConfigVersion)
	}
	if len(c.Listen) == 0 {
		return errors.New("field listen: at least one address is needed")
	}
	for i, s := range c.Listen {
		if _, err := ma.NewMultiaddr(s); err != nil {
			return fmt.Errorf("field listen[%d]: %q is not a multiaddr: %v", i, s, err)
		}
	}
	if _, err := c.BootstrapPeers(); err != nil {
		return err
	}
	if c.API == "" && c.Home != "" {
		return errors.New("field api: empty (the CLI finds a daemon through its control API)")
	}
	if c.API == "" {
		// An embedded, ephemeral node without a control API.
	} else if err := validateAPIAddr(c.API); err != nil {
		return fmt.Errorf("field api: %w", err)
	}
	if c.Role != RoleBootstrap && strings.TrimSpace(c.RunName) == "" && !c.RunID.Defined() {
		return errors.New("field run_name: empty")
	}
	switch c.Reachability {
	case "", ReachabilityAuto, ReachabilityPublic, ReachabilityPrivate:
	default:
		return fmt.Errorf("field reachability: %q is not public, private or auto", c.Reachability)
	}
	if _, err := c.AnnounceAddrs(""); err != nil {
		return err
	}
	if !(c.MaxUploadMbps >= 0 && c.MaxUploadMbps <= MaxUploadMbpsLimit) { // NaN fails too
		return fmt.Errorf("field max_upload_mbps: %v is not between 0 (no cap) and %d", c.MaxUploadMbps, MaxUploadMbpsLimit)
	}
	if c.MaxUploadMbps > 0 && c.MaxUploadMbps < 0.1 {
		return fmt.Errorf("field max_upload_mbps: %v is below 0.1 Mbit/s, too little to train (0 means no cap)", c.MaxUploadMbps)
	}
	if _, err := gpu.ParseActiveHours(c.ActiveHours); err != nil {
		return fmt.Errorf("field active_hours: %w", err)
	}
	if c.PauseOtherCPUPct != 0 {
		if _, err := gpu.NewCPUBusy(c.PauseOtherCPUPct, 0); err != nil {
			return fmt.Errorf("field pause_other_cpu_pct: %w", err)
		}
	}
	if c.PauseOnInput != "" {
		d, err := time.ParseDuration(c.PauseOnInput)
		if err == nil {
			_, err = gpu.NewInputIdle(d)
		}
		if err != nil {
			return fmt.Errorf("field pause_on_input: %q: %w", c.PauseOnInput, err)
		}
	}
	if err := c.validateRelayTraining(); err != nil {
		return err
	}
	switch c.DHTMode {
	case DHTAuto, DHTServer, DHTClient:
	default:
		return fmt.Errorf("field dht_mode: %q is not auto, server or client", c.DHTMode)
	}
	if c.ConnsLow < 1 || c.ConnsHigh < c.ConnsLow {
		return fmt.Errorf("fields conns_low/conns_high: want 1 <= conns_low (%d) <= conns_high (%d)", c.ConnsLow, c.ConnsHigh)
	}
	if c.MaxMemoryMB < 64 {
		return fmt.Errorf("field max_memory_mb: %d is below the minimum of 64", c.MaxMemoryMB)
	}
	if c.MaxFDs < 64 {
		return fmt.Errorf("field max_fds: %d is below the minimum of 64", c.MaxFDs)
	}
	switch c.Role {
	case RoleNode, RoleBootstrap:
	default:
		return fmt.Errorf("role %q is not node or bootstrap", c.Role)
	}
	return nil
}

// validateRelayTraining checks the training relay's settings: budgets are
// checked whether or not the relay is on (a config file is checked as a
// whole); the relay itself needs a volunteer in a run that may be public.
func (c *Config) validateRelayTraining() error {
	if !(c.RelayMbps > 0) || c.RelayMbps > 1e6 {
		return fmt.Errorf("field relay_mbps: %v: want a rate above 0 and at most 1000000 Mbit/s", c.RelayMbps)
	}
	if !(c.RelayGBPerDay > 0) || c.RelayGBPerDay > 1e6 {
		return fmt.Errorf("field relay_gb_per_day: %v: want a budget above 0 and at most 1000000 GB", c.RelayGBPerDay)
	}
	if c.RelayCircuitMB < 1 || c.RelayCircuitMB > 1<<20 {
		return fmt.Errorf("field relay_circuit_mb: %d: want 1 to %d MiB", c.RelayCircuitMB, 1<<20)
	}
	if !c.RelayTraining {
		return nil
	}
	switch {
	case c.Role == RoleBootstrap:
		return errors.New("field relay_training: a bootstrap node is in no run; run the training relay as a volunteer of the run (swarm node --run ... --relay-training)")
	case c.RelayService:
		return errors.New("fields relay_service and relay_training: a node runs one relay; the training relay also carries its run's hellos and records")
	case c.Reachability == ReachabilityPrivate:
		return errors.New("field relay_training: a node set private (reachability) cannot be dialled, so it cannot relay; set public on a machine with a public address or a port forward")
	}
	return nil
}

// BootstrapPeers parses Config.Bootstrap; every entry must carry /p2p/ID.
func (c *Config) BootstrapPeers() ([]peer.AddrInfo, error) {
	var addrs []ma.Multiaddr
	for i, s := range c.Bootstrap {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("field bootstrap[%d]: %q is not a multiaddr: %v", i, s, err)
		}
		if _, err := peer.AddrInfoFromP2pAddr(a); err != nil {
			return nil, fmt.Errorf("field bootstrap[%d]: %q must end in /p2p/<peer id>: %v", i, s, err)
		}
		addrs = append(addrs, a)
	}
	infos, err := peer.AddrInfosFromP2pAddrs(addrs...)
	if err != nil {
		return nil, fmt.Errorf("field bootstrap: %v", err)
	}
	return infos, nil
}

// ReachabilitySetting is Config.Reachability with the role's default
// filled in: public on bootstrap nodes, auto on volunteers.
func (c *Config) ReachabilitySetting() string {
	switch {
	case c.Reachability != "":
		return c.Reachability
	case c.Role == RoleBootstrap:
		return ReachabilityPublic
	}
	return ReachabilityAuto
}

// AnnounceAddrs parses Config.Announce into direct multiaddrs without
// /p2p. An entry may end in /p2p/ID only when ID is self (when self is
// empty any ID passes, for checks before the identity is loaded); relay
// (p2p-circuit) addresses are refused: the relay client adds its own.
//
// An unspecified address (0.0.0.0) is refused, and so is a loopback or
// private one when the bootstrap nodes are public: peers there cannot
// reach it.
func (c *Config) AnnounceAddrs(self peer.ID) ([]ma.Multiaddr, error) {
	boot, _ := c.BootstrapPeers()
	public := !localSwarm(boot)
	var out []ma.Multiaddr
	for i, s := range c.Announce {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("field announce[%d]: %q is not a multiaddr: %v", i, s, err)
		}
		if _, err := a.ValueForProtocol(ma.P_CIRCUIT); err == nil {
			return nil, fmt.Errorf("field announce[%d]: %q is a relay address; announce direct addresses only", i, s)
		}
		transport, id := peer.SplitAddr(a)
		if len(transport) == 0 {
			return nil, fmt.Errorf("field announce[%d]: %q has no transport address", i, s)
		}
		if id != "" && self != "" && id != self {
			return nil, fmt.Errorf("field announce[%d]: %q names peer %s, but this node is %s", i, s, id, self)
		}
		if _, err := transport.ValueForProtocol(ma.P_TCP); err != nil {
			if _, err := transport.ValueForProtocol(ma.P_UDP); err != nil {
				return nil, fmt.Errorf("field announce[%d]: %q names no TCP or UDP port", i, s)
			}
		}
		if manet.IsIPUnspecified(transport) {
			return nil, fmt.Errorf("field announce[%d]: %q is an unspecified address: peers cannot dial it; announce the public IP or DNS name", i, s)
		}
		if public && !manet.IsPublicAddr(transport) && isIPAddr(transport) {
			return nil, fmt.Errorf("field announce[%d]: %q is a loopback or private address, unreachable for peers of a swarm "+
				"whose bootstrap nodes are public; announce the router's public address and the forwarded port", i, s)
		}
		out = append(out, transport)
	}
	return out, nil
}

// isIPAddr reports whether a starts with an IP address (not a DNS name).
func isIPAddr(a ma.Multiaddr) bool {
	if len(a) == 0 {
		return false
	}
	code := a[0].Protocol().Code
	return code == ma.P_IP4 || code == ma.P_IP6
}

// validateAPIAddr accepts unix:/path or host:port where host is a loopback
// IP or "localhost": the control API is never served on a public address.
func validateAPIAddr(s string) error {
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		if path == "" {
			return errors.New("unix: needs a socket path")
		}
		return nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q: want 127.0.0.1:PORT or unix:/path: %v", s, err)
	}
	if port == "" {
		return fmt.Errorf("%q: missing port", s)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q: the control API listens on loopback only (127.0.0.1, ::1) or a unix socket", s)
	}
	return nil
}
