// Package node is the swarm daemon: a libp2p host with swarm's own Kademlia
// DHT, NAT traversal, run membership found through the DHT, a local control
// API and Prometheus metrics. The volunteer daemon (`swarm node`) and the
// public bootstrap node (`swarm bootstrap`) are both a Node, with different
// roles. Further services (training) attach through Config.Services.
//
// Lifecycle: New binds everything (errors surface there), Run serves until
// its context ends, Close (idempotent) shuts down in reverse order.
package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p-kad-dht/records"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/swarm-train/swarm/internal/guard"
	"github.com/swarm-train/swarm/node/api"
)

// DHTProtocolPrefix keeps swarm's DHT apart from the IPFS network.
const DHTProtocolPrefix = "/swarm"

// Service is something more the node runs (training, for instance). Start
// is called once the host, DHT and control API are up; ctx ends when the
// node shuts down. Close is called in reverse order of Start.
type Service interface {
	Start(ctx context.Context, n *Node) error
	Close() error
}

// Node is a running swarm daemon.
type Node struct {
	// workMu guards work: the peers the trainer works with, protected
	// from the connection manager (SetWorkPeers).
	workMu sync.Mutex
	work   map[peer.ID]bool

	cfg   Config
	log   *slog.Logger
	key   crypto.PrivKey
	lock  *homeLock
	host  host.Host
	dht   *dht.IpfsDHT
	reg   *prometheus.Registry
	boot  []peer.AddrInfo
	runID cid.Cid
	runs  *membership // nil on bootstrap nodes
	// refusals counts refused peer input of every protocol and bans
	// offenders (the gater refuses their connections).
	refusals *guard.Refusals
	// upload is the --max-upload-mbps bucket (nil: no cap).
	upload *bucket
	psk    []byte // private swarm key, nil when the swarm is open

	metrics *metrics
	start   time.Time

	reachMu sync.Mutex
	reach   network.Reachability
	nat     natState       // peers' connectivity (nat.go)
	trelay  *trainingRelay // this node's training relay (relay_training), nil without

	statusMu sync.Mutex
	status   map[string]func() any
	fillers  []func(*api.Status)

	apiLn    net.Listener
	apiSrv   *http.Server
	apiURL   string
	apiFile  string
	apiToken string
	started  []Service

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	ready  chan struct{}

	runOnce   sync.Once
	closeOnce sync.Once
	closeErr  error
	closed    chan struct{}
}

// New validates cfg, takes the home's lock, loads or creates the identity,
// and builds the host, the DHT and the control API listener. Nothing is
// served until Run. With cfg.Home empty the node is ephemeral: a fresh key,
// no lock and no API address file (tests and benchmarks embed such nodes).
func New(cfg Config, log *slog.Logger) (_ *Node, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	boot, _ := cfg.BootstrapPeers()
	n := &Node{
		cfg:    cfg,
		log:    log,
		reg:    prometheus.NewRegistry(),
		boot:   boot,
		status: make(map[string]func() any),
		ready:  make(chan struct{}),
		closed: make(chan struct{}),
		start:  time.Now(),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			n.Close()
		}
	}()

	if cfg.Home != "" {
		if err := os.MkdirAll(cfg.Home, 0o700); err != nil {
			return nil, fmt.Errorf("home %s: %w", cfg.Home, err)
		}
		if n.lock, err = lockHome(cfg.Home); err != nil {
			return nil, err
		}
		if n.key, err = LoadOrCreateIdentity(cfg.Home); err != nil {
			return nil, err
		}
	} else if n.key, _, err = crypto.GenerateEd25519Key(nil); err != nil {
		return nil, err
	}

	if cfg.Role == RoleNode {
		n.runID = cfg.RunID
		if !n.runID.Defined() {
			n.runID = RunIDFromName(cfg.RunName)
		}
	}

	if n.refusals, err = guard.New(n.reg, log, guard.Policy{}); err != nil {
		return nil, err
	}
	if cfg.MaxUploadMbps > 0 {
		n.upload = newBucket(cfg.MaxUploadMbps, time.Now, time.Sleep)
	}
	if cfg.SwarmKeyFile != "" {
		if n.psk, err = LoadSwarmKey(cfg.SwarmKeyFile); err != nil {
			return nil, err
		}
		log.Info("private swarm: only peers with the same swarm key can connect; listening on TCP only (QUIC cannot use a pre-shared key)",
			"swarm_key", cfg.SwarmKeyFile)
	}
	// In a swarm with public bootstrap nodes, volunteers dial them QUIC
	// first (dialRanker), guessing their QUIC address when given TCP; every
	// dialler of them (this node's loop, the DHT, the relay client) gets
	// both addresses.
	var quicBoot []peer.AddrInfo
	if cfg.Role == RoleNode && n.psk == nil && !localSwarm(boot) {
		boot = withQUICSiblings(boot)
		n.boot, quicBoot = boot, boot
	}
	// The relay finder may ask for candidates while libp2p.New is still
	// building the host: it sees none until the host is complete.
	var built atomic.Pointer[host.Host]
	relays := relayCandidates(func() host.Host {
		if h := built.Load(); h != nil {
			return *h
		}
		return nil
	}, boot)
	n.host, err = newHost(&n.cfg, n.key, n.reg, relays, banGater{n}, n.psk, quicBoot)
	if err != nil {
		return nil, err
	}
	built.Store(&n.host)

	mode := dht.ModeAuto
	switch {
	case cfg.Role == RoleBootstrap, cfg.DHTMode == DHTServer:
		mode = dht.ModeServer
	case cfg.DHTMode == DHTClient:
		mode = dht.ModeClient
	case localSwarm(boot):
		mode = dht.ModeServer
	}
	n.dht, err = dht.New(n.host,
		dht.ProtocolPrefix(DHTProtocolPrefix),
		dht.Mode(mode),
		dht.BootstrapPeers(boot...),
		dht.AddressFilter(n.dhtAddrFilter),
		dht.ProviderManagerOpts(
			records.ProvideValidity(providerValidity),
			records.ProviderAddrTTL(providerValidity),
		),
	)
	if err != nil {
		return nil, fmt.Errorf("dht: %w", err)
	}
	n.metrics = newMetrics(n.reg, n)

	if cfg.Role == RoleNode {
		n.runs = newMembership(n, n.runID, cfg.DiscoveryInterval)
		n.host.SetStreamHandler(HelloProtocol, n.runs.handleHello)
		if cfg.RelayTraining {
			if n.trelay, err = startTrainingRelay(n); err != nil {
				return nil, err
			}
		}
	}
	n.refusals.OnOffender(func(p peer.ID, _ string) {
		if n.runs != nil {
			n.runs.drop(p)
		}
		_ = n.host.Network().ClosePeer(p)
	})

	if cfg.API != "" {
		if err := n.listenAPI(); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// Run starts the control API, the bootstrap and discovery loops and the
// services, writes the API address file, and serves until ctx ends or Close
// is called; then it shuts the node down and returns Close's error.
func (n *Node) Run(ctx context.Context) error {
	first := false
	n.runOnce.Do(func() { first = true })
	if !first {
		return errors.New("node: Run called twice")
	}
	select {
	case <-n.closed:
		return errors.New("node: closed")
	default:
	}
	if n.apiLn != nil {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			if err := n.apiSrv.Serve(n.apiLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				n.log.Error("control API stopped", "err", err)
			}
		}()
	}
	n.goLoop(n.bootstrapLoop)
	n.startRelaySearch()
	n.goLoop(n.watchReachability)
	if n.runs != nil {
		n.goLoop(n.runs.run)
		n.goLoop(n.keepTrainingReservations)
	}
	for _, s := range n.cfg.Services {
		if err := s.Start(n.ctx, n); err != nil {
			n.Close()
			return fmt.Errorf("start service %T: %w", s, err)
		}
		n.started = append(n.started, s)
	}
	if err := n.writeAPIFile(); err != nil {
		n.Close()
		return err
	}
	close(n.ready)
	n.log.Info("swarm "+string(n.cfg.Role)+" started", "peer_id", n.host.ID(), "run_id", n.runIDString(),
		"api", n.apiURL, "listen", n.host.Network().ListenAddresses())
	if len(n.boot) == 0 {
		n.log.Info("no bootstrap peers configured: this is a local swarm until another peer dials in (use --bootstrap to join one)")
	}
	select {
	case <-ctx.Done():
	case <-n.ctx.Done():
	}
	return n.Close()
}

func (n *Node) goLoop(f func(context.Context)) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f(n.ctx)
	}()
}

// mergeCtx returns a context that ends when ctx or the node ends.
func (n *Node) mergeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	c, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(n.ctx, cancel)
	return c, func() { stop(); cancel() }
}

// Ready is closed once Run has started everything and written the API file.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// Close shuts the node down: services (reverse order), control API (and its
// address file), DHT, host, lock. It is safe to call more than once.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.cancel()
		var errs []error
		for i := len(n.started) - 1; i >= 0; i-- {
			if err := n.started[i].Close(); err != nil {
				errs = append(errs, fmt.Errorf("close service %T: %w", n.started[i], err))
			}
		}
		if n.apiSrv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := n.apiSrv.Shutdown(ctx); err != nil {
				n.apiSrv.Close()
			}
			cancel()
		} else if n.apiLn != nil {
			n.apiLn.Close()
		}
		if n.apiFile != "" {
			if err := os.Remove(n.apiFile); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		n.wg.Wait()
		if n.trelay != nil {
			n.trelay.Close()
		}
		if n.dht != nil {
			if err := n.dht.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close dht: %w", err))
			}
		}
		if n.host != nil {
			if err := n.host.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close host: %w", err))
			}
		}
		if err := n.lock.release(); err != nil {
			errs = append(errs, err)
		}
		n.closeErr = errors.Join(errs...)
		close(n.closed)
		select {
		case <-n.ready:
			n.log.Info("swarm " + string(n.cfg.Role) + " stopped")
		default:
		}
	})
	return n.closeErr
}

// Host is the libp2p host.
func (n *Node) Host() host.Host { return n.host }

// DHT is swarm's Kademlia DHT.
func (n *Node) DHT() *dht.IpfsDHT { return n.dht }

// Logger is the node's logger; services derive theirs with With.
func (n *Node) Logger() *slog.Logger { return n.log }

// Registerer is where services register their Prometheus collectors; they
// are served at /metrics.
func (n *Node) Registerer() prometheus.Registerer { return n.reg }

// Gatherer gives read access to the node's metrics.
func (n *Node) Gatherer() prometheus.Gatherer { return n.reg }

// Refusals is where services count refused peer input; offenders it names
// are disconnected and refused for a while.
func (n *Node) Refusals() *guard.Refusals { return n.refusals }

// Config returns the node's configuration.
func (n *Node) Config() Config { return n.cfg }

// RunID is the CID of the run this node takes part in (undefined on
// bootstrap nodes).
func (n *Node) RunID() cid.Cid { return n.runID }

// Trains says whether the node is a run member that may train: false on a
// bootstrap node.
func (n *Node) Trains() bool { return n.runs != nil }

// RunPeers returns the known live peers of this node's run: peers found
// through the DHT, confirmed by the run handshake, and still connected.
func (n *Node) RunPeers() []peer.AddrInfo {
	if n.runs == nil {
		return nil
	}
	return n.runs.list()
}

// RefreshRunPeers asks for a DHT query for run peers now rather than at the
// next scheduled one.
func (n *Node) RefreshRunPeers() {
	if n.runs != nil {
		n.runs.refresh()
	}
}

// Announced is closed once the node's run announcement first reached the
// DHT (never closed on bootstrap nodes).
func (n *Node) Announced() <-chan struct{} {
	if n.runs == nil {
		return nil
	}
	return n.runs.announced
}

// APIURL is the control API's address (http://127.0.0.1:PORT or unix:PATH),
// empty when the API is off.
func (n *Node) APIURL() string { return n.apiURL }

// AddStatus adds a field to the status API answer: key maps to the JSON of
// f's result under "services". Services call it from Start.
func (n *Node) AddStatus(key string, f func() any) {
	n.statusMu.Lock()
	defer n.statusMu.Unlock()
	n.status[key] = f
}

// FillStatus adds a function that fills typed fields of the status API
// answer (training fills epoch, shards and peers' shards). Fillers run in
// the order they were added, after the node's own fields are set.
func (n *Node) FillStatus(f func(*api.Status)) {
	n.statusMu.Lock()
	defer n.statusMu.Unlock()
	n.fillers = append(n.fillers, f)
}

// Addrs are the node's multiaddrs with /p2p/ID appended, the form handed
// to other peers.
func (n *Node) Addrs() []ma.Multiaddr {
	addrs, err := peer.AddrInfoToP2pAddrs(&peer.AddrInfo{ID: n.host.ID(), Addrs: n.host.Addrs()})
	if err != nil {
		return nil
	}
	return addrs
}

func (n *Node) uptime() time.Duration { return time.Since(n.start) }

func (n *Node) runIDString() string {
	if !n.runID.Defined() {
		return ""
	}
	return n.runID.String()
}

// Status assembles the status API answer.
func (n *Node) Status() api.Status {
	verdict, help := n.reachability()
	st := api.Status{
		Schema:           api.SchemaVersion,
		Version:          n.cfg.AppVersion,
		Role:             string(n.cfg.Role),
		PeerID:           n.host.ID().String(),
		Addrs:            strs(n.Addrs()),
		ListenAddrs:      strs(n.host.Network().ListenAddresses()),
		Reachability:     verdict,
		ReachabilityHelp: help,
		RunID:            n.runIDString(),
		RoutingTableSize: n.dht.RoutingTable().Size(),
		Peers:            []api.Peer{},
		RunPeers:         []api.Peer{},
		UptimeSeconds:    n.uptime().Seconds(),
		Shard:            -1,
		Shards:           []api.Shard{},
	}
	if n.cfg.Role == RoleNode {
		st.RunName = n.cfg.RunName
	}
	st.DHTMode = "client"
	if n.dht.Mode() == dht.ModeServer {
		st.DHTMode = "server"
	}
	for _, p := range n.host.Network().Peers() {
		st.Peers = append(st.Peers, n.apiPeer(n.host.Peerstore().PeerInfo(p)))
	}
	sort.Slice(st.Peers, func(i, j int) bool { return st.Peers[i].PeerID < st.Peers[j].PeerID })
	for _, ai := range n.RunPeers() {
		st.RunPeers = append(st.RunPeers, n.apiPeer(ai))
	}
	st.UnreachablePeers = n.unreachableRunPeers()
	if n.trelay != nil {
		st.TrainingRelay = n.trelay.status()
	}
	st.Security = n.security()
	st.MaxUploadMbps = n.cfg.MaxUploadMbps
	n.statusMu.Lock()
	providers := make(map[string]func() any, len(n.status))
	for k, f := range n.status {
		providers[k] = f
	}
	fillers := append([]func(*api.Status){}, n.fillers...)
	n.statusMu.Unlock()
	for _, f := range fillers {
		f(&st)
	}
	for k, f := range providers {
		b, err := json.Marshal(f())
		if err != nil {
			b, _ = json.Marshal(api.Error{Error: err.Error()})
		}
		if st.Services == nil {
			st.Services = make(map[string]json.RawMessage)
		}
		st.Services[k] = b
	}
	return st
}

func apiPeer(ai peer.AddrInfo) api.Peer {
	return api.Peer{PeerID: ai.ID.String(), Addrs: strs(ai.Addrs)}
}

// apiPeer is apiPeer with the connection kind (direct, relayed).
func (n *Node) apiPeer(ai peer.AddrInfo) api.Peer {
	p := apiPeer(ai)
	p.Connection = n.connection(ai.ID)
	return p
}

func strs(addrs []ma.Multiaddr) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}

// bootstrapLoop dials the bootstrap peers, then keeps the routing table
// from running dry: when it drops below lowPeers it redials the bootstrap
// peers (backing off while they stay unreachable) and refreshes the table.
func (n *Node) bootstrapLoop(ctx context.Context) {
	const lowPeers = 4
	backoff := time.Second
	for {
		if n.dht.RoutingTable().Size() < lowPeers && len(n.boot) > 0 {
			if ok := n.dialBootstrap(ctx); ok > 0 {
				backoff = time.Second
				select {
				case <-n.dht.RefreshRoutingTable():
				case <-ctx.Done():
					return
				}
			} else {
				n.log.Warn("no bootstrap peer reachable; retrying", "in", backoff)
				backoff = min(2*backoff, 5*time.Minute)
			}
		}
		wait := 10 * time.Second
		if n.dht.RoutingTable().Size() == 0 && len(n.boot) > 0 {
			wait = backoff
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// dialBootstrap dials every bootstrap peer in parallel and returns how many
// answered; failures are logged with the peer's address.
func (n *Node) dialBootstrap(ctx context.Context) int {
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for _, ai := range n.boot {
		if ai.ID == n.host.ID() {
			continue
		}
		wg.Add(1)
		go func(ai peer.AddrInfo) {
			defer wg.Done()
			dctx, cancel := context.WithTimeout(ctx, dialTimeout)
			defer cancel()
			if err := n.host.Connect(dctx, ai); err != nil {
				n.metrics.bootstrapFail.Inc()
				if ctx.Err() == nil {
					n.log.Warn("bootstrap peer unreachable", "peer", ai.ID, "addrs", ai.Addrs, "err", err)
				}
				return
			}
			mu.Lock()
			ok++
			mu.Unlock()
		}(ai)
	}
	wg.Wait()
	return ok
}
