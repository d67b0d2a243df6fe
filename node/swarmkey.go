package node

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	"github.com/libp2p/go-libp2p/core/pnet"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/swarm-train/swarm/internal/atomicfile"
)

// swarmKeyHeader is the first two lines of the key file format that libp2p
// daemons share for private networks; 64 hex digits follow.
const swarmKeyHeader = "/key/swarm/psk/1.0.0/\n/base16/\n"

// GenerateSwarmKey writes a new random 32-byte swarm key to path (mode
// 0600; it refuses to overwrite a file) and returns the key.
func GenerateSwarmKey(path string) ([]byte, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteNew(path, []byte(swarmKeyHeader+hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("swarm key: %w", err)
	}
	return key, nil
}

// LoadSwarmKey reads a swarm key file. A file that others may read, or
// that is not in the key file format, is refused with the reason.
func LoadSwarmKey(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("swarm key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("swarm key %s: mode %04o lets others read it; chmod 600 it", path, st.Mode().Perm())
	}
	if st.Size() > 4096 {
		return nil, fmt.Errorf("swarm key %s: %d bytes is not a key file", path, st.Size())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("swarm key: %w", err)
	}
	key, err := pnet.DecodeV1PSK(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("swarm key %s: want %q then 64 hex digits: %w",
			path, strings.ReplaceAll(swarmKeyHeader, "\n", `\n`), err)
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("swarm key %s: %d bytes, want 32", path, len(key))
	}
	return key, nil
}

// tcpOnly keeps the listen addresses that do not use QUIC or WebTransport.
func tcpOnly(listen []string) []string {
	var out []string
	for _, s := range listen {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			out = append(out, s) // the host reports the bad address
			continue
		}
		if _, err := a.ValueForProtocol(ma.P_UDP); err == nil {
			continue
		}
		out = append(out, s)
	}
	return out
}
