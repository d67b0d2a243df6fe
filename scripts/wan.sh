#!/usr/bin/env bash
# WAN emulation: how much of its time a node spends computing, and how many
# samples/s the swarm trains, in synchronous vs local-steps (DiLoCo) mode when
# the nodes are linked by slow links.
#
# Creates one network namespace per process (a bootstrap node and $WAN_NODES
# volunteers), each joined by a veth pair to a bridge in a namespace of its own;
# tc netem on every veth gives $WAN_RATE and $WAN_DELAY one way, so two nodes see
# twice the delay between them (default 100 Mbit/s, 50 ms node to node). Runs the
# same mlp-mnist run in each mode for $WAN_SECONDS, reads `swarm status --json`
# from every node, prints a Markdown table, and removes everything it created
# (also on error or Ctrl-C).
#
# Needs root, iproute2 (ip, tc with netem) and bin/swarm (make build). CI does
# not run it.
#
#   sudo scripts/wan.sh
#   WAN_DELAY=50ms WAN_RATE=20mbit WAN_SECONDS=120 sudo -E scripts/wan.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(pwd)/bin/swarm
nodes=${WAN_NODES:-4}
rate=${WAN_RATE:-100mbit}
delay=${WAN_DELAY:-25ms}
seconds=${WAN_SECONDS:-90}
hidden=${WAN_HIDDEN:-1024,1024}
local_steps=${WAN_LOCAL_STEPS:-50}
tag=sw$$ # prefix of every name this script creates
work=$(mktemp -d /tmp/swarm-wan.XXXXXX)

[ "$(id -u)" = 0 ] || { echo "wan.sh: needs root (network namespaces)" >&2; exit 1; }
command -v ip >/dev/null && command -v tc >/dev/null || { echo "wan.sh: needs iproute2 (ip, tc)" >&2; exit 1; }
[ -x "$bin" ] || { echo "wan.sh: $bin missing; run 'make build' first" >&2; exit 1; }
command -v jq >/dev/null || { echo "wan.sh: needs jq" >&2; exit 1; }

pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  for ns in $(ip netns list | awk '{print $1}' | grep "^${tag}" || true); do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Topology: namespace ${tag}br holds bridge br0; namespace ${tag}nI holds eth0
# 10.77.0.(I+1)/24, its peer end in the bridge namespace. netem on both ends.
_setup_net() {
  ip netns add "${tag}br" || return 1
  ip -n "${tag}br" link add br0 type bridge || return 1
  ip -n "${tag}br" link set br0 up || return 1
  for i in $(seq 0 "$nodes"); do
    ns="${tag}n$i"
    ip netns add "$ns" || return 1
    ip link add "${tag}a$i" type veth peer name "${tag}b$i" || return 1
    ip link set "${tag}a$i" netns "$ns" || return 1
    ip link set "${tag}b$i" netns "${tag}br" || return 1
    ip -n "$ns" link set "${tag}a$i" name eth0 || return 1
    ip -n "$ns" addr add "10.77.0.$((i + 1))/24" dev eth0 || return 1
    ip -n "$ns" link set eth0 up || return 1
    ip -n "$ns" link set lo up || return 1
    ip -n "${tag}br" link set "${tag}b$i" master br0 || return 1
    ip -n "${tag}br" link set "${tag}b$i" up || return 1
    tc -n "$ns" qdisc add dev eth0 root netem delay "$delay" rate "$rate" || return 1
    tc -n "${tag}br" qdisc add dev "${tag}b$i" root netem delay "$delay" rate "$rate" || return 1
  done
}

# run_mode MODE: start the swarm, train for $seconds, print one table row.
run_mode() {
  local mode=$1 dir="$work/$1"
  mkdir -p "$dir"
  local args=(run init --model mlp-mnist --shards 2 --hidden "$hidden" --group-size 2 --steps 100000 -o "$dir/run.json")
  [ "$mode" = local ] && args+=(--averaging local --local-steps "$local_steps")
  "$bin" "${args[@]}" >/dev/null
  ip netns exec "${tag}n0" "$bin" bootstrap --home "$dir/boot" --listen /ip4/10.77.0.1/tcp/4001 2>"$dir/boot.log" &
  pids+=($!)
  local boot=""
  for _ in $(seq 100); do
    boot=$(ip netns exec "${tag}n0" "$bin" id --home "$dir/boot" --addrs 2>/dev/null | grep /tcp/ | head -1) && [ -n "$boot" ] && break
    sleep 0.2
  done
  [ -n "$boot" ] || { echo "wan.sh: bootstrap did not start; see $dir/boot.log" >&2; exit 1; }
  for i in $(seq 1 "$nodes"); do
    ip netns exec "${tag}n$i" "$bin" node --home "$dir/node$i" --run "$dir/run.json" --bootstrap "$boot" \
      --listen "/ip4/10.77.0.$((i + 1))/tcp/4001" --threads 1 2>"$dir/node$i.log" &
    pids+=($!)
  done
  sleep "$seconds"
  local util=0 sps=0 epoch=0 n=0
  for i in $(seq 1 "$nodes"); do
    st=$(ip netns exec "${tag}n$i" "$bin" status --json --home "$dir/node$i" 2>/dev/null | jq -c '.services.training // empty') || true
    [ -n "$st" ] || continue
    util=$(jq -n --argjson a "$util" --argjson b "$(jq .utilization <<<"$st")" '$a + $b')
    sps=$(jq .samples_per_s <<<"$st")
    epoch=$(jq .epoch <<<"$st")
    n=$((n + 1))
  done
  [ "$n" -gt 0 ] || { echo "wan.sh: no node reported training; logs in $dir" >&2; exit 1; }
  printf '| %s | %s | %.0f%% | %.0f | %s |\n' "$mode" "$n" "$(jq -n "100 * $util / $n")" "$sps" "$epoch"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

setup_net() {
  modprobe sch_netem 2>/dev/null || true
  _setup_net || { echo "wan.sh: could not build the emulated network (is the kernel's sch_netem module available? 'tc qdisc add ... netem' failed)" >&2; exit 1; }
}

setup_net
echo "## WAN emulation: sync vs local steps"
echo
echo "$nodes volunteer nodes + 1 bootstrap in network namespaces, netem $rate and $delay on each side of every link"
echo "(node to node: twice the delay), mlp-mnist hidden $hidden in 2 shards, 1 engine thread a node, ${seconds} s a mode."
echo "Utilisation is a node's time computing ÷ wall time since start (joining included), averaged over nodes."
echo
echo "| mode | nodes | utilisation | samples/s | epoch reached |"
echo "|---|---|---|---|---|"
run_mode sync
run_mode local
