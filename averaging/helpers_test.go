package averaging

import (
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
)

func tcpTransport() any { return tcp.NewTCPTransport }

func nullRM() network.ResourceManager { return &network.NullResourceManager{} }
