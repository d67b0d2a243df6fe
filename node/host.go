package node

import (
	"context"
	"fmt"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p"
	coreconnmgr "github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/host/autorelay"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"github.com/prometheus/client_golang/prometheus"
)

// UserAgent is announced through identify; peers see it in their peerstore.
const UserAgent = "swarm"

// resourceLimits returns explicit resource-manager limits scaled to the
// configured memory and file-descriptor budget, with a small fixed budget
// for the run handshake so a flood of hellos cannot starve other protocols.
//
// Connection and stream counts follow the connection manager's high water
// mark rather than memory: every peer of a run keeps a connection to every
// other, so a run of a few hundred peers must fit (the memory-scaled
// defaults stop inbound connections at about 90).
func resourceLimits(cfg *Config) rcmgr.ConcreteLimitConfig {
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	high := cfg.ConnsHigh
	limits.SystemBaseLimit.ConnsInbound = high
	limits.SystemBaseLimit.ConnsOutbound = high
	limits.SystemBaseLimit.Conns = high + high/2
	limits.SystemBaseLimit.StreamsInbound = 16 * high
	limits.SystemBaseLimit.StreamsOutbound = 16 * high
	limits.SystemBaseLimit.Streams = 32 * high
	limits.SystemLimitIncrease.ConnsInbound = 0
	limits.SystemLimitIncrease.ConnsOutbound = 0
	limits.SystemLimitIncrease.Conns = 0
	limits.SystemLimitIncrease.StreamsInbound = 0
	limits.SystemLimitIncrease.StreamsOutbound = 0
	limits.SystemLimitIncrease.Streams = 0
	limits.AddProtocolLimit(HelloProtocol,
		rcmgr.BaseLimit{StreamsInbound: 64, StreamsOutbound: 64, Streams: 128, Memory: 4 << 20},
		rcmgr.BaseLimitIncrease{})
	limits.AddProtocolPeerLimit(HelloProtocol,
		rcmgr.BaseLimit{StreamsInbound: 2, StreamsOutbound: 2, Streams: 4, Memory: 64 << 10},
		rcmgr.BaseLimitIncrease{})
	return limits.Scale(int64(cfg.MaxMemoryMB)<<20, cfg.MaxFDs)
}

// newHost builds the libp2p host: TCP and QUIC, TLS and Noise, yamux, a
// resource manager with explicit limits, a connection manager, AutoNAT,
// hole punching and a relay v2 client (relay service on bootstrap nodes).
// relaySource feeds the relay client with candidate relays.
// gater refuses banned peers; psk, when set, makes the swarm private (TCP only).
// quicBoot are the bootstrap nodes dialled QUIC first (dialRanker).
func newHost(cfg *Config, sk crypto.PrivKey, reg prometheus.Registerer, relaySource autorelay.PeerSource,
	gater coreconnmgr.ConnectionGater, psk pnet.PSK, quicBoot []peer.AddrInfo) (host.Host, error) {
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(resourceLimits(cfg)))
	if err != nil {
		return nil, fmt.Errorf("resource manager: %w", err)
	}
	cm, err := connmgr.NewConnManager(cfg.ConnsLow, cfg.ConnsHigh, connmgr.WithGracePeriod(time.Minute))
	if err != nil {
		rm.Close()
		return nil, fmt.Errorf("connection manager: %w", err)
	}
	opts := []libp2p.Option{
		libp2p.Identity(sk),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.ResourceManager(rm),
		libp2p.ConnectionManager(cm),
		libp2p.UserAgent(UserAgent),
		libp2p.PrometheusRegisterer(reg),
		libp2p.EnableRelay(),
		libp2p.EnableHolePunching(),
		libp2p.SwarmOpts(swarm.WithDialRanker(dialRanker(quicBoot))),
	}
	listen := cfg.Listen
	if psk != nil {
		opts = append(opts, libp2p.PrivateNetwork(psk))
		listen = tcpOnly(cfg.Listen)
	} else {
		opts = append(opts, libp2p.Transport(quic.NewTransport))
	}
	opts = append(opts, libp2p.ListenAddrStrings(listen...))
	if gater != nil {
		opts = append(opts, libp2p.ConnectionGater(gater))
	}
	if cfg.PortMapping {
		opts = append(opts, libp2p.NATPortMap())
	}
	switch cfg.ReachabilitySetting() {
	case ReachabilityPublic:
		opts = append(opts, libp2p.ForceReachabilityPublic())
	case ReachabilityPrivate:
		opts = append(opts, libp2p.ForceReachabilityPrivate())
	}
	self, err := peer.IDFromPrivateKey(sk)
	if err != nil {
		rm.Close()
		return nil, err
	}
	announce, err := cfg.AnnounceAddrs(self)
	if err != nil {
		rm.Close()
		return nil, err
	}
	var routes []ma.Multiaddr
	if boot, _ := cfg.BootstrapPeers(); cfg.Role == RoleNode && !localSwarm(boot) {
		routes = relayedAddrsVia(boot, self, "")
	}
	if len(announce) > 0 || len(routes) > 0 {
		opts = append(opts, libp2p.AddrsFactory(advertisedAddrs(announce, routes)))
	}
	if cfg.Role == RoleBootstrap || cfg.RelayService {
		opts = append(opts, libp2p.EnableRelayService(relayv2.WithResources(relayResources())))
		if cfg.ReachabilitySetting() != ReachabilityPrivate {
			// A node set private serves no AutoNAT (libp2p would build the
			// dial-back swarm and never close it).
			opts = append(opts, libp2p.EnableNATService())
		}
	}
	if cfg.Role != RoleBootstrap && relaySource != nil {
		// One candidate is enough to reserve: a swarm may have a single
		// bootstrap node, and waiting for four would wait forever.
		opts = append(opts, libp2p.EnableAutoRelayWithPeerSource(relaySource,
			autorelay.WithMinCandidates(1), autorelay.WithMinInterval(10*time.Second), autorelay.WithBootDelay(5*time.Second)))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("libp2p host: %w", err)
	}
	return h, nil
}

// Relay service limits. A relayed connection carries the run hello (three
// messages of at most 1.4 KiB each), identify, the DCUtR exchange that
// replaces it with a direct connection (a few KiB), and progress records
// (progress.MaxRecordSize, 8 KiB at most, pushed on change: a few a second)
// until that direct connection exists; training traffic never uses it
// (RunHost waits for a direct connection). relayData covers two minutes of
// records at 4 a second of the largest size in each direction, with room
// for the rest; a circuit past it is closed by the relay and reopened by
// the client.
const (
	relayDuration        = 2 * time.Minute
	relayData            = 4 << 20
	relayMaxReservations = 256 // whole relay
	relayMaxPerIP        = 8   // reservations from one IP address
	relayMaxPerASN       = 32  // from one autonomous system
	relayMaxCircuits     = 16  // open circuits to or from one peer
)

// relayResources are the relay service's limits; one reservation per
// peer (circuit v2 keeps one, renewals replace it).
func relayResources() relayv2.Resources {
	res := relayv2.DefaultResources()
	res.MaxReservations = relayMaxReservations
	res.MaxReservationsPerPeer = 1
	res.MaxReservationsPerIP = relayMaxPerIP
	res.MaxReservationsPerASN = relayMaxPerASN
	res.MaxCircuits = relayMaxCircuits
	res.Limit = &relayv2.RelayLimit{Duration: relayDuration, Data: relayData}
	return res
}

// advertisedAddrs makes the host advertise the announced direct addresses
// in place of its own (keeping its relay addresses), and, while it has no
// public address at all (behind NAT, before AutoNAT's verdict and a relay
// reservation), routes through the bootstrap nodes' relays: the relay
// client reserves there at once (startRelaySearch), and a provider record
// without any address would be dropped by the DHT.
func advertisedAddrs(announce, routes []ma.Multiaddr) func([]ma.Multiaddr) []ma.Multiaddr {
	return func(addrs []ma.Multiaddr) []ma.Multiaddr {
		if len(announce) > 0 {
			out := append([]ma.Multiaddr{}, announce...)
			for _, a := range addrs {
				if isRelayAddr(a) {
					out = append(out, a)
				}
			}
			addrs = out
		}
		if len(routes) == 0 || slices.ContainsFunc(addrs, manet.IsPublicAddr) {
			return addrs
		}
		return append(addrs, routes...)
	}
}

// relayCandidates offers connected peers that speak the relay v2 hop
// protocol (bootstrap nodes run it) as relays for the relay client.
func relayCandidates(get func() host.Host, boot []peer.AddrInfo) autorelay.PeerSource {
	const hop protocol.ID = "/libp2p/circuit/relay/0.2.0/hop"
	return func(ctx context.Context, num int) <-chan peer.AddrInfo {
		out := make(chan peer.AddrInfo, num)
		defer close(out)
		h := get()
		if h == nil {
			return out
		}
		seen := map[peer.ID]bool{}
		for _, ai := range boot {
			if len(out) == num {
				return out
			}
			seen[ai.ID] = true
			out <- ai
		}
		for _, p := range h.Network().Peers() {
			if len(out) == num {
				break
			}
			if seen[p] || h.Network().Connectedness(p) != network.Connected {
				continue
			}
			if ok, _ := h.Peerstore().SupportsProtocols(p, hop); len(ok) > 0 {
				out <- h.Peerstore().PeerInfo(p)
			}
		}
		return out
	}
}
