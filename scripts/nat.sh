#!/usr/bin/env bash
# NAT suite topology: an emulated internet in network namespaces (needs root,
# iproute2 and iptables).
#
#   PREFIXinet   the internet: bridge PREFIXbr, 198.18.0.0/24
#   PREFIXboot   a bootstrap node            198.18.0.10
#   PREFIXpub    a public volunteer          198.18.0.20
#   PREFIXr1     home router 1: WAN 198.18.0.101, LAN 10.1.0.1/24 (KIND1)
#   PREFIXv1     volunteer behind router 1   10.1.0.2
#   PREFIXr2     home router 2: WAN 198.18.0.102, LAN 10.2.0.1/24 (KIND2)
#   PREFIXv2     volunteer behind router 2   10.2.0.2
#
# Router kinds (every router masquerades its LAN and lets in only replies to
# flows its LAN opened, like a home router):
#   drop       port-preserving, unsolicited packets dropped silently
#   rst        port-preserving, unsolicited TCP answered with a reset, UDP
#              with ICMP port unreachable
#   symmetric  ports randomised per flow (MASQUERADE --random-fully), drop
#
# go-multiaddr counts 198.18.0.0/15 as unroutable: binaries built with
# -tags nattest count it public when SWARM_TEST_PUBLIC_CIDR=198.18.0.0/24.
#
# Usage:
#   scripts/nat.sh up PREFIX KIND1 KIND2   build it (torn down again if a step fails)
#   scripts/nat.sh down PREFIX             remove it (namespaces, veths, bridge, rules)
#   scripts/nat.sh run KIND1 KIND2 -- CMD  build it under a fresh prefix, run CMD with
#                                          NAT_PREFIX set, remove it on exit
# Processes are run in a namespace with: ip netns exec PREFIXv1 CMD.
# PREFIX: at most 6 letters and digits (interface names are 15 characters).
set -Eeuo pipefail

die() { echo "nat.sh: $*" >&2; exit 2; }

need() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces, iptables)"
  command -v ip >/dev/null || die "needs iproute2 (ip)"
  command -v iptables >/dev/null || die "needs iptables"
}

check_prefix() {
  [[ "$1" =~ ^[a-z][a-z0-9]{0,5}$ ]] || die "prefix $1: want 1-6 lowercase letters and digits, starting with a letter"
}

ns() { ip netns exec "$P$1" "${@:2}"; }

down() {
  local p=$1
  # Deleting a namespace removes its interfaces (the veth pairs with them)
  # and its iptables rules; processes still in one keep it alive, so kill
  # them first.
  for n in v1 v2 r1 r2 boot pub inet; do
    if ip netns list | grep -qw "$p$n"; then
      for pid in $(ip netns pids "$p$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$p$n" 2>/dev/null || true
    fi
  done
}

# link NS ADDR: a host on the internet bridge.
link() {
  local n=$1 addr=$2
  ip link add "$P$n-w" type veth peer name "$P$n-b"
  ip link set "$P$n-w" netns "$P$n"
  ip link set "$P$n-b" netns "${P}inet"
  ns inet ip link set "$P$n-b" master "${P}br" up
  ns "$n" ip link set "$P$n-w" name wan
  ns "$n" ip addr add "$addr/24" dev wan
  ns "$n" ip link set wan up
  ns "$n" ip link set lo up
}

# router I KIND: router I between the internet and its LAN 10.I.0.0/24,
# and the volunteer behind it.
router() {
  local i=$1 kind=$2 r="r$1" v="v$1"
  link "$r" "198.18.0.10$i"
  ip link add "$P$r-l" type veth peer name "$P$v-w"
  ip link set "$P$r-l" netns "$P$r"
  ip link set "$P$v-w" netns "$P$v"
  ns "$r" ip link set "$P$r-l" name lan
  ns "$r" ip addr add "10.$i.0.1/24" dev lan
  ns "$r" ip link set lan up
  ns "$v" ip link set "$P$v-w" name eth0
  ns "$v" ip addr add "10.$i.0.2/24" dev eth0
  ns "$v" ip link set eth0 up
  ns "$v" ip link set lo up
  ns "$v" ip route add default via "10.$i.0.1"
  ns "$r" sysctl -qw net.ipv4.ip_forward=1
  local masq=(-t nat -A POSTROUTING -o wan -j MASQUERADE)
  [ "$kind" = symmetric ] && masq+=(--random-fully)
  ns "$r" iptables "${masq[@]}"
  ns "$r" iptables -A FORWARD -i lan -o wan -j ACCEPT
  for chain in FORWARD INPUT; do
    ns "$r" iptables -A "$chain" -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    case "$kind" in
      drop|symmetric) ns "$r" iptables -A "$chain" -i wan -j DROP ;;
      rst)
        ns "$r" iptables -A "$chain" -i wan -p tcp -j REJECT --reject-with tcp-reset
        ns "$r" iptables -A "$chain" -i wan -p udp -j REJECT --reject-with icmp-port-unreachable
        ns "$r" iptables -A "$chain" -i wan -j DROP ;;
      *) die "router kind $kind: want drop, rst or symmetric" ;;
    esac
  done
}

up() {
  P=$1
  local k1=$2 k2=$3
  for k in "$k1" "$k2"; do
    case "$k" in drop|rst|symmetric) ;; *) die "router kind $k: want drop, rst or symmetric" ;; esac
  done
  if ip netns list | grep -qw "${P}inet"; then die "prefix $P is in use (scripts/nat.sh down $P)"; fi
  trap 'down "$P"' ERR
  for n in inet boot pub r1 v1 r2 v2; do ip netns add "$P$n"; done
  ns inet ip link add "${P}br" type bridge
  ns inet ip link set "${P}br" up
  ns inet ip link set lo up
  link boot 198.18.0.10
  link pub 198.18.0.20
  router 1 "$k1"
  router 2 "$k2"
  trap - ERR
}

cmd=${1:-}
case "$cmd" in
  up)
    [ $# = 4 ] || die "usage: nat.sh up PREFIX KIND1 KIND2"
    need; check_prefix "$2"; up "$2" "$3" "$4" ;;
  down)
    [ $# = 2 ] || die "usage: nat.sh down PREFIX"
    need; check_prefix "$2"; down "$2" ;;
  run)
    [ $# -ge 5 ] && [ "$4" = -- ] || die "usage: nat.sh run KIND1 KIND2 -- CMD..."
    need
    prefix="n$(printf '%04x' $((RANDOM % 65536)))"
    up "$prefix" "$2" "$3"
    trap 'down "$prefix"' EXIT INT TERM
    NAT_PREFIX=$prefix "${@:5}" ;;
  *) die "usage: nat.sh up PREFIX KIND1 KIND2 | down PREFIX | run KIND1 KIND2 -- CMD" ;;
esac
