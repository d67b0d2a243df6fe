#!/usr/bin/env bash
# WAN emulation: how much of its time a node spends computing, and how many
# samples/s the swarm trains, in synchronous vs local-steps (DiLoCo) mode when
# the nodes are linked by slow links.
#
# Creates one network namespace per process (a bootstrap node and $WAN_NODES
# volunteers), each joined by a veth pair to a bridge in a hub namespace of
# its own. A token bucket (tc tbf) on both ends of every veth limits each
# node's link to $WAN_RATE each way. Latency ($WAN_DELAY one way per side)
# needs tc netem; where the kernel lacks it (tbf's latency is only a queue
# bound, and fq with BPF-set departure times needs a BPF toolchain), the
# links are bandwidth-limited only and the output says so. Runs the same
# mlp-mnist run in each mode, measures from `swarm status --json` of every
# node between the end of a warm-up and the end of the run (utilisation =
# difference of busy_seconds ÷ difference of wall_seconds, samples/s from
# the first shard's processed counters), prints a Markdown table, and
# removes everything it created (also on error or Ctrl-C).
#
# Needs root, iproute2 (ip netns, tc), jq and bin/swarm (make build). CI does
# not run it.
#
#   sudo scripts/wan.sh
#   WAN_RATE=20mbit WAN_SECONDS=120 sudo -E scripts/wan.sh
#   WAN_MODES="local:2+wait local local+bf16" sudo -E scripts/wan.sh   # rows: MODE[:in-flight][+bf16][+wait]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(pwd)/bin/swarm
nodes=${WAN_NODES:-4}
rate=${WAN_RATE:-100mbit}
delay=${WAN_DELAY:-25ms}
seconds=${WAN_SECONDS:-90}
warmup=${WAN_WARMUP:-30}
hidden=${WAN_HIDDEN:-1024,1024}
local_steps=${WAN_LOCAL_STEPS:-50}
tag=sw$$ # prefix of every name this script creates
work=$(mktemp -d /tmp/swarm-wan.XXXXXX)

[ "$(id -u)" = 0 ] || { echo "wan.sh: needs root (network namespaces)" >&2; exit 1; }
command -v ip >/dev/null && command -v tc >/dev/null || { echo "wan.sh: needs iproute2 (ip, tc)" >&2; exit 1; }
ip netns list >/dev/null 2>&1 || { echo "wan.sh: 'ip netns' does not work here" >&2; exit 1; }
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
# 10.77.0.(I+1)/24, its peer end in the bridge namespace. Shaping on both ends.
shaping=""
# snapshot FILE: every node's training status (with its peer ID) as a JSON array.
snapshot() {
  local out="[" sep=""
  for i in $(seq 1 "$nodes"); do
    st=$(ip netns exec "${tag}n$i" "$bin" status --json --home "$run_dir/node$i" 2>/dev/null |
      jq -c '(.services.training // empty) + {peer_id: .peer_id}') || true
    [ -n "$st" ] && { out+="$sep$st"; sep=","; }
  done
  echo "$out]" > "$1"
}

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
    shape "$ns" eth0 || return 1
    shape "${tag}br" "${tag}b$i" || return 1
  done
}

# shape NS DEV: rate limit, plus delay when netem exists (netem then does both).
shape() {
  if [ "$shaping" != tbf ] && tc -n "$1" qdisc add dev "$2" root netem delay "$delay" rate "$rate" 2>/dev/null; then
    shaping=netem
    return 0
  fi
  [ "$shaping" = netem ] && return 1
  shaping=tbf
  tc -n "$1" qdisc add dev "$2" root tbf rate "$rate" burst 64kb latency 100ms
}

# run_mode MODE[:N][+bf16][+wait]: start the swarm (N micro-batches in flight a
# first-shard node, else $WAN_IN_FLIGHT or adaptive; +bf16: activations between
# shards in bf16; +wait: local mode without overlapping averaging and
# training), train for $seconds, print one table row.
run_mode() {
  local spec=${1%%+*} mode flight=${WAN_IN_FLIGHT:-} bf16="" wait="" dir="$work/${1//[:+]/-}"
  [[ $1 == *+bf16* ]] && bf16=1
  [[ $1 == *+wait* ]] && wait=1
  mode=${spec%%:*}
  [[ $spec == *:* ]] && flight=${spec#*:}
  run_dir=$dir
  mkdir -p "$dir"
  local args=(run init --model mlp-mnist --shards 2 --hidden "$hidden" --group-size 2 --steps 100000 -o "$dir/run.json")
  [ "$mode" = local ] && args+=(--averaging local --local-steps "$local_steps")
  [ -n "$bf16" ] && args+=(--activations bf16)
  [ -n "$wait" ] && args+=(--overlap=false)
  "$bin" "${args[@]}" >/dev/null
  ip netns exec "${tag}n0" "$bin" bootstrap --home "$dir/boot" --listen /ip4/10.77.0.1/tcp/4001 >"$dir/boot.out" 2>"$dir/boot.log" &
  pids+=($!)
  local boot=""
  for _ in $(seq 100); do
    boot=$(ip netns exec "${tag}n0" "$bin" id --home "$dir/boot" --addrs 2>/dev/null | grep /tcp/ | head -1) && [ -n "$boot" ] && break
    sleep 0.2
  done
  [ -n "$boot" ] || { echo "wan.sh: bootstrap did not start; see $dir/boot.log" >&2; exit 1; }
  for i in $(seq 1 "$nodes"); do
    ip netns exec "${tag}n$i" "$bin" node --home "$dir/node$i" --run "$dir/run.json" --bootstrap "$boot" \
      --listen "/ip4/10.77.0.$((i + 1))/tcp/4001" --threads 1 ${flight:+--in-flight "$flight"} 2>"$dir/node$i.log" &
    pids+=($!)
  done
  sleep "$warmup"
  snapshot "$dir/a.json"
  sleep "$seconds"
  snapshot "$dir/b.json"
  # Per node: Δbusy ÷ Δwall; swarm: Σ Δprocessed on shard 0 ÷ Δt, epochs reached.
  local row
  local label="$mode, in flight ${flight:-adaptive}"
  [ "$mode" = local ] && label+=$([ -n "$wait" ] && echo ", averaging waits" || echo ", averaging overlapped")
  [ -n "$bf16" ] && label+=", bf16 activations"
  row=$(jq -rs --arg mode "$label" '
    (.[0] | map({key: .peer_id, value: .}) | from_entries) as $a |
    [.[1][] | select($a[.peer_id]) | {shard, epoch, b: ., a: $a[.peer_id]}] as $n |
    ($n | map((.b.busy_seconds - .a.busy_seconds) / (.b.wall_seconds - .a.wall_seconds))) as $u |
    ($n | map(select(.shard == 0) | (.b.processed - .a.processed) / (.b.wall_seconds - .a.wall_seconds)) | add) as $sps |
    "| \($mode) | \($n | length) | \(100 * ($u | add) / ($u | length) | round)% (\($u | map(100 * . | round | tostring + "%") | join(" "))) | \($sps | round) | \($n | map(.epoch) | max) |"
  ' "$dir/a.json" "$dir/b.json")
  [ -n "$row" ] || { echo "wan.sh: no node reported training; logs in $dir" >&2; exit 1; }
  echo "$row"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

setup_net() {
  modprobe sch_netem 2>/dev/null || true
  _setup_net || { echo "wan.sh: could not build the emulated network (ip netns, veth, bridge and tc tbf are needed)" >&2; exit 1; }
}

setup_net
echo "## WAN emulation: sync vs local steps"
echo
if [ "$shaping" = netem ]; then
  echo "$nodes volunteer nodes + 1 bootstrap, each in its own network namespace, linked through a bridge namespace by veth pairs;"
  echo "tc netem gives every veth end $rate and $delay (node to node: $rate, twice $delay each way)."
else
  echo "$nodes volunteer nodes + 1 bootstrap, each in its own network namespace, linked through a bridge namespace by veth pairs;"
  echo "tc tbf limits both ends of every node's link to **$rate** each way. **No latency is added**: this kernel has no"
  echo "netem (\`tc qdisc add ... netem\` → \"Specified qdisc kind is unknown\"), no fq qdisc (for BPF-set departure times)"
  echo "and there is no BPF toolchain, so the links are bandwidth-limited only; the 50 ms of a real WAN are not emulated."
fi
echo "mlp-mnist hidden $hidden in 2 shards (2 holders a shard, target batch 128, micro-batch 64), 1 engine thread a node,"
echo "all processes on this machine's $(nproc) cores. Measured over ${seconds} s after a ${warmup} s warm-up per mode:"
echo "utilisation = a node's time computing (forward, backward, optimizer) ÷ wall time over that interval, mean"
echo "(and per node); samples/s = samples through the first shard's holders ÷ interval. Local steps: $local_steps inner steps per outer round."
echo "The split balanced by FLOPs gives shard 0 the first layer (4.8 MFLOP a sample) and shard 1 the other two (6.4 MFLOP);"
echo "every micro-batch carries 64×1024 activations and their gradients (256 KiB each way, ~21 ms at 100 Mbit/s) between"
echo "the shards. Micro-batches in flight a first-shard node: adaptive (2-8, its shortest recent round trip ÷ its compute"
echo "per micro-batch) unless the row names a fixed number. Busy time counts wall time during which the engine runs, so"
echo "concurrent micro-batches count once."
echo
echo "| mode | nodes | utilisation (per node) | samples/s | epoch reached |"
echo "|---|---|---|---|---|"
for mode in ${WAN_MODES:-sync local:2+wait local+wait local local+bf16}; do
  run_mode "$mode"
done
