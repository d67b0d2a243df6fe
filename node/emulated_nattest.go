//go:build nattest

package node

import (
	"net"
	"os"
	"slices"

	manet "github.com/multiformats/go-multiaddr/net"
)

// In a binary built with -tags nattest, SWARM_TEST_PUBLIC_CIDR names an
// address range to count as public: the NAT suite (scripts/nat.sh) emulates
// the internet on 198.18.0.0/24, a range go-multiaddr counts as unroutable,
// and libp2p ignores unroutable addresses for relays, hole punching and
// AutoNAT. Release builds have no such switch.
func init() {
	cidr := os.Getenv("SWARM_TEST_PUBLIC_CIDR")
	if cidr == "" {
		return
	}
	_, public, err := net.ParseCIDR(cidr)
	if err != nil {
		panic("SWARM_TEST_PUBLIC_CIDR: " + err.Error())
	}
	overlaps := func(n *net.IPNet) bool { return n.Contains(public.IP) || public.Contains(n.IP) }
	manet.Unroutable4 = slices.DeleteFunc(manet.Unroutable4, overlaps)
	manet.Private4 = slices.DeleteFunc(manet.Private4, overlaps)
}
