#!/usr/bin/env bash
# WAN emulation: how much of its time a node spends computing, and how many
# samples/s the swarm trains, in synchronous vs local-steps (DiLoCo) mode when
# the nodes are linked by slow links with latency.
#
# The kernel here has no tc netem, so the links are emulated in user space by
# scripts/linkem (package internal/linkem): a TCP proxy that gives every node
# an access link of $WAN_LINKS' uplink and downlink rates and a round trip to
# every other node. Each process (a bootstrap node and $WAN_NODES volunteers)
# runs in a network namespace of its own, joined by a veth pair to a hub
# namespace that does not forward packets: node i listens on 10.77.i.2 and
# announces (--announce) the proxy's address for it, 10.77.i.1 in the hub, so
# every connection between nodes passes two emulated access links (the
# proxy knows the sender by its source address). Runs the same mlp-mnist run
# in each mode and link setting, measures from `swarm status --json` of every
# node between the end of a warm-up and the end of the run (utilisation =
# difference of busy_seconds ÷ difference of wall_seconds, samples/s from the
# first shard's processed counters), prints a Markdown table, and removes
# everything it created (also on error or Ctrl-C).
#
# WAN_LINKS is a list of UP/DOWN/RTT settings (tc rate units; RTT between
# any two nodes), or "none": the same proxy without limits or delay (the
# unconstrained run to compare accuracy with); settings the host cannot
# provide (rates its proxy cannot move, a delay below its timer slack) are
# refused naming the setting. With WAN_STEPS every row trains that many
# steps (local mode: inner steps; local_steps of them a round) and waits
# for the run's end to report the test accuracy; utilisation is measured
# until the warm-up plus WAN_SECONDS or the first node done, if sooner.
#
# Needs root, iproute2 (ip netns), jq, go (to build linkem) and bin/swarm
# (make build). CI does not run it.
#
#   sudo scripts/wan.sh
#   WAN_LINKS="20mbit/100mbit/100ms" WAN_SECONDS=120 sudo -E scripts/wan.sh
#   WAN_MODES="local:2+wait local local+bf16+topk" sudo -E scripts/wan.sh   # rows: MODE[:in-flight][+bf16][+atopk][+arank][+wait][+topk][+delayed][+pace][+gbf16]
#   WAN_LINKS="none 100mbit/100mbit/50ms" WAN_STEPS=3000 WAN_MODES="local+bf16+pace" sudo -E scripts/wan.sh
#   WAN_SHARDS=1 WAN_LINKS="100mbit/100mbit/50ms none" WAN_STEPS=3000 WAN_MODES="local+pace" sudo -E scripts/wan.sh   # data parallel
#   WAN_KEEP=1 WAN_LOG_LEVEL=debug sudo -E scripts/wan.sh   # keep the nodes' logs and snapshots (path on stderr)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(pwd)/bin/swarm
nodes=${WAN_NODES:-4}
links=${WAN_LINKS:-100mbit/100mbit/50ms 20mbit/100mbit/100ms}
seconds=${WAN_SECONDS:-90}
warmup=${WAN_WARMUP:-30}
hidden=${WAN_HIDDEN:-1024,1024}
shards=${WAN_SHARDS:-2} # 1: data parallel, every node holds the whole model (no pipeline traffic)
local_steps=${WAN_LOCAL_STEPS:-50}
delta_keep=${WAN_DELTA_KEEP:-0.03} # +topk rows: fraction of each delta sent
delta_bits=${WAN_DELTA_BITS:-2}
act_keep=${WAN_ACT_KEEP:-0.1} # +atopk rows: fraction of each sample's activations sent
act_rank=${WAN_ACT_RANK:-32}  # +arank rows: values a sample crosses the cut as (a learned projection)
max_local_steps=${WAN_MAX_LOCAL_STEPS:-$((4 * local_steps))} # +pace rows: averaging.max_local_steps
target_batch=${WAN_TARGET_BATCH:-128}                         # sync rows' training.target_batch
steps=${WAN_STEPS:-}                                          # set: rows train this many steps to the end and report the test accuracy
norm_k=${WAN_NORM_K:-}                                        # set: averaging.norm_k of every row (0: off); else run init's
tag=sw$$ # prefix of every name this script creates
work=$(mktemp -d /tmp/swarm-wan.XXXXXX)
keep=${WAN_KEEP:-} # set: keep the runs' manifests, logs and status snapshots in $work
loglevel=${WAN_LOG_LEVEL:-info}
trap '[ -n "$keep" ] || rm -rf "$work"' EXIT

[ "$(id -u)" = 0 ] || { echo "wan.sh: needs root (network namespaces)" >&2; exit 1; }
command -v ip >/dev/null || { echo "wan.sh: needs iproute2 (ip)" >&2; exit 1; }
ip netns list >/dev/null 2>&1 || { echo "wan.sh: 'ip netns' does not work here" >&2; exit 1; }
[ -x "$bin" ] || { echo "wan.sh: $bin missing; run 'make build' first" >&2; exit 1; }
command -v jq >/dev/null || { echo "wan.sh: needs jq" >&2; exit 1; }
linkem=$work/linkem
go build -o "$linkem" ./scripts/linkem || { echo "wan.sh: could not build scripts/linkem" >&2; exit 1; }
# Every setting is checked against this host before anything runs.
case $shards in 1 | 2) ;; *) echo "wan.sh: WAN_SHARDS '$shards': want 1 (data parallel) or 2 (a two-stage pipeline)" >&2; exit 1 ;; esac
[ $((nodes % shards)) = 0 ] || { echo "wan.sh: WAN_NODES $nodes: want a multiple of WAN_SHARDS $shards" >&2; exit 1; }
holders=$((nodes / shards))
case $target_batch in '' | *[!0-9]*) echo "wan.sh: WAN_TARGET_BATCH '$target_batch': want a positive number of samples" >&2; exit 1 ;; esac
case $max_local_steps in '' | *[!0-9]*) echo "wan.sh: WAN_MAX_LOCAL_STEPS '$max_local_steps': want a number of inner steps" >&2; exit 1 ;; esac
case $steps in *[!0-9]* | 0) echo "wan.sh: WAN_STEPS '$steps': want a positive number of steps" >&2; exit 1 ;; esac
case $norm_k in *[!0-9.]* | *.*.*) echo "wan.sh: WAN_NORM_K '$norm_k': want 0 (off) or a number ≥ 1" >&2; exit 1 ;; esac
awk -v k="$act_keep" 'BEGIN { exit !(k ~ /^[0-9]*\.?[0-9]+$/ && k > 0 && k <= 1) }' ||
  { echo "wan.sh: WAN_ACT_KEEP '$act_keep': want a fraction in (0, 1] of each sample's activations" >&2; exit 1; }
case $act_rank in '' | *[!0-9]* | 0) echo "wan.sh: WAN_ACT_RANK '$act_rank': want a positive number of values (below the cut's width, WAN_HIDDEN's first)" >&2; exit 1 ;; esac
[ "$act_rank" -lt "${hidden%%,*}" ] || { echo "wan.sh: WAN_ACT_RANK $act_rank: want fewer values than the cut's width (${hidden%%,*}, WAN_HIDDEN's first)" >&2; exit 1; }
for l in $links; do
  IFS=/ read -r up down rtt <<<"$l"
  [ "$l" = none ] && { up=""; down=""; rtt=0ms; }
  [ -n "$rtt" ] || { echo "wan.sh: WAN_LINKS entry '$l': want UP/DOWN/RTT (e.g. 100mbit/100mbit/50ms)" >&2; exit 1; }
  host=$("$linkem" -check -nodes $((nodes + 1)) ${up:+-up "$up"} ${down:+-down "$down"} -rtt "$rtt" 2>&1) ||
    { echo "wan.sh: WAN_LINKS entry '$l': $host" >&2; exit 1; }
done

pids=()
link_pid=""
cleanup() {
  trap - EXIT INT TERM
  [ -n "$link_pid" ] && pids+=("$link_pid")
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  for ns in $(ip netns list | awk '{print $1}' | grep "^${tag}" || true); do ip netns del "$ns" 2>/dev/null || true; done
  if [ -n "$keep" ]; then echo "wan.sh: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Topology: namespace ${tag}hub holds one end of every veth pair, 10.77.I.1/24,
# and runs the proxy; namespace ${tag}nI holds the other end, eth0 10.77.I.2/24
# with the hub as its default route. The hub does not forward, so a node
# reaches another only through the proxy.
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
  ip netns add "${tag}hub" || return 1
  ip netns exec "${tag}hub" sysctl -qw net.ipv4.ip_forward=0 || return 1
  ip -n "${tag}hub" link set lo up || return 1
  for i in $(seq 0 "$nodes"); do
    ns="${tag}n$i"
    ip netns add "$ns" || return 1
    ip link add "${tag}a$i" type veth peer name "${tag}b$i" || return 1
    ip link set "${tag}a$i" netns "$ns" || return 1
    ip link set "${tag}b$i" netns "${tag}hub" || return 1
    ip -n "$ns" link set "${tag}a$i" name eth0 || return 1
    ip -n "$ns" addr add "10.77.$i.2/24" dev eth0 || return 1
    ip -n "$ns" link set eth0 up || return 1
    ip -n "$ns" link set lo up || return 1
    ip -n "$ns" route add default via "10.77.$i.1" || return 1
    ip -n "${tag}hub" addr add "10.77.$i.1/24" dev "${tag}b$i" || return 1
    ip -n "${tag}hub" link set "${tag}b$i" up || return 1
  done
}

# start_links UP DOWN RTT: the proxy in the hub, one listener a node.
start_links() {
  local args=(${1:+-up "$1"} ${2:+-down "$2"} -rtt "$3")
  for i in $(seq 0 "$nodes"); do args+=(-node "n$i,10.77.$i.1:4001,10.77.$i.2:4001"); done
  ip netns exec "${tag}hub" "$linkem" "${args[@]}" >"$work/linkem.out" 2>"$work/linkem.log" &
  link_pid=$!
  for _ in $(seq 100); do grep -q ready "$work/linkem.out" 2>/dev/null && return 0; sleep 0.1; done
  echo "wan.sh: the link emulator did not start; see $work/linkem.log" >&2
  exit 1
}

stop_links() {
  kill -TERM "$link_pid" 2>/dev/null || true
  wait "$link_pid" 2>/dev/null || true
}

# run_mode LINK MODE[:N][+bf16][+atopk][+arank][+wait][+topk][+delayed][+pace][+gbf16]: start the swarm (N
# micro-batches in flight a first-shard node, else $WAN_IN_FLIGHT or
# adaptive; +bf16: activations between shards in bf16; +atopk: topk
# activations, $act_keep of each sample's values in bf16; +arank: a learned
# projection of rank $act_rank at the cut (training.activation_rank); +wait: local mode
# without overlapping averaging and training; +topk: local mode's deltas
# compressed to $delta_keep of their values at $delta_bits bits; +delayed:
# sync mode with delayed updates, averaging.delayed_updates; +pace: local
# mode's rounds paced by the averaging, up to $max_local_steps inner steps,
# averaging.max_local_steps; +gbf16: sync mode's gradients averaged in bf16,
# averaging.compression), train for $seconds (with $steps: to the end),
# print one table row.
run_mode() {
  local link=$1 spec=${2%%+*} mode flight=${WAN_IN_FLIGHT:-} bf16="" wait="" dir="$work/${1//\//-}-${2//[:+]/-}"
  [[ $2 == *+bf16* ]] && bf16=1
  local atopk=""
  [[ $2 == *+atopk* ]] && atopk=1
  local arank=""
  [[ $2 == *+arank* ]] && arank=1
  [[ $2 == *+wait* ]] && wait=1
  local topk="" delayed="" pace="" gbf16=""
  [[ $2 == *+topk* ]] && topk=1
  [[ $2 == *+gbf16* ]] && gbf16=1
  [[ $2 == *+pace* ]] && pace=1
  [[ $2 == *+delayed* ]] && delayed=1
  mode=${spec%%:*}
  [[ $spec == *:* ]] && flight=${spec#*:}
  run_dir=$dir
  mkdir -p "$dir"
  local args=(run init --model mlp-mnist --shards "$shards" --hidden "$hidden" --group-size "$holders" --steps "${steps:-100000}" -o "$dir/run.json")
  [ "$mode" = local ] && args+=(--averaging local --local-steps "$local_steps")
  [ "$mode" = sync ] && args+=(--target-batch "$target_batch")
  [ -n "$bf16" ] && args+=(--activations bf16)
  [ -n "$atopk" ] && args+=(--activation-keep "$act_keep")
  [ -n "$arank" ] && args+=(--activation-rank "$act_rank")
  [ -n "$wait" ] && args+=(--overlap=false)
  [ -n "$topk" ] && args+=(--delta-keep "$delta_keep" --delta-bits "$delta_bits")
  [ -n "$delayed" ] && args+=(--delayed-updates)
  [ -n "$gbf16" ] && args+=(--compression bf16)
  "$bin" "${args[@]}" >/dev/null
  # No flags for these: the manifest's fields, checked when the nodes load it.
  if [ -n "$pace" ]; then
    jq --argjson n "$max_local_steps" '.averaging.max_local_steps = $n' "$dir/run.json" >"$dir/run.tmp" && mv "$dir/run.tmp" "$dir/run.json"
  fi
  if [ -n "$norm_k" ]; then
    jq --argjson k "$norm_k" '.averaging.norm_k = $k' "$dir/run.json" >"$dir/run.tmp" && mv "$dir/run.tmp" "$dir/run.json"
  fi
  ip netns exec "${tag}n0" "$bin" bootstrap --home "$dir/boot" --listen /ip4/10.77.0.2/tcp/4001 \
    --announce /ip4/10.77.0.1/tcp/4001 >"$dir/boot.out" 2>"$dir/boot.log" &
  pids+=($!)
  local id=""
  for _ in $(seq 100); do
    id=$(ip netns exec "${tag}n0" "$bin" id --home "$dir/boot" --json 2>/dev/null | jq -r .peer_id) && [ -n "$id" ] && break
    sleep 0.2
  done
  [ -n "$id" ] || { echo "wan.sh: bootstrap did not start; see $dir/boot.log" >&2; exit 1; }
  local boot=/ip4/10.77.0.1/tcp/4001/p2p/$id
  for i in $(seq 1 "$nodes"); do
    ip netns exec "${tag}n$i" "$bin" --log-level "$loglevel" node --home "$dir/node$i" --run "$dir/run.json" --bootstrap "$boot" \
      --listen "/ip4/10.77.$i.2/tcp/4001" --announce "/ip4/10.77.$i.1/tcp/4001" --threads 1 \
      ${flight:+--in-flight "$flight"} 2>"$dir/node$i.log" &
    pids+=($!)
  done
  sleep "$warmup"
  snapshot "$dir/a.json"
  local until=$((SECONDS + seconds))
  while [ "$SECONDS" -lt "$until" ]; do
    sleep 1
    [ -n "$steps" ] || continue
    snapshot "$dir/now.json"
    [ "$(jq '[.[] | select(.state == "done")] | length' "$dir/now.json")" = 0 ] || break
  done
  snapshot "$dir/b.json"
  local acc="–"
  if [ -n "$steps" ]; then # wait (bounded) for the first shard's holders to evaluate
    for _ in $(seq 900); do
      snapshot "$dir/end.json"
      acc=$(jq -r '[.[] | select(.accuracy >= 0 and .shard == 0) | .accuracy] | if length > 0 then "\(10000 * max | round / 100)%" else empty end' "$dir/end.json")
      [ -n "$acc" ] && break
      acc="not finished"
      sleep 2
    done
  fi
  # Per node: Δbusy ÷ Δwall; swarm: Σ Δprocessed on shard 0 ÷ Δt, epochs reached.
  local row
  local label="$mode"
  [ "$shards" = 2 ] && label+=", in flight ${flight:-adaptive}" # no pipeline with 1 shard
  [ "$mode" = local ] && label+=$([ -n "$wait" ] && echo ", averaging waits" || echo ", averaging overlapped")
  [ -n "$bf16" ] && label+=", bf16 activations"
  [ -n "$atopk" ] && label+=", top-k activations ($act_keep of each sample's)"
  [ -n "$arank" ] && label+=", rank-$act_rank projection at the cut"
  [ -n "$topk" ] && label+=", deltas top-k $delta_keep at $delta_bits bits"
  [ -n "$delayed" ] && label+=", delayed updates"
  [ -n "$gbf16" ] && label+=", gradients averaged in bf16"
  [ -n "$pace" ] && label+=", rounds paced (max $max_local_steps inner steps)"
  [ "$mode" = sync ] && label+=", target batch $target_batch"
  [ -n "$norm_k" ] && label+=", norm_k $norm_k"
  local linkname
  if [ "$link" = none ]; then linkname="none (proxy, no limit)"; else IFS=/ read -r up down rtt <<<"$link"; linkname="$up up, $down down, $rtt RTT"; fi
  row=$(jq -rs --arg mode "$label" --arg link "$linkname" --arg acc "$acc" '
    (.[0] | map({key: .peer_id, value: .}) | from_entries) as $a |
    [.[1][] | select($a[.peer_id]) | {shard, epoch, b: ., a: $a[.peer_id]}] as $n |
    ($n | map((.b.busy_seconds - .a.busy_seconds) / (.b.wall_seconds - .a.wall_seconds))) as $u |
    ($n | map(select(.shard == 0) | (.b.processed - .a.processed) / (.b.wall_seconds - .a.wall_seconds)) | add) as $sps |
    "| \($link) | \($mode) | \($n | length) | \(100 * ($u | add) / ($u | length) | round)% (\($u | map(100 * . | round | tostring + "%") | join(" "))) | \($sps | round) | \($n | map(.epoch) | max) | \($acc) |"
  ' "$dir/a.json" "$dir/b.json")
  [ -n "$row" ] || { echo "wan.sh: no node reported training; logs in $dir" >&2; exit 1; }
  echo "$row"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

_setup_net || { echo "wan.sh: could not build the emulated network (ip netns and veth pairs are needed)" >&2; exit 1; }
echo "## WAN emulation: sync vs local steps"
echo
echo "$nodes volunteer nodes + 1 bootstrap, each in its own network namespace; every connection between two of them passes"
echo "a user-space link emulator (\`scripts/linkem\`, this kernel has no netem) that gives each node an access link of the"
echo "row's uplink and downlink rates, shared by all its connections, with a quarter of the row's round trip each way"
echo "(node to node: the round trip; a link's queue holds at most 100 ms). Nodes listen inside their namespace and announce"
echo "the emulator's address for them (\`--announce\`); the namespaces route only to the emulator. This host: $host."
if [ "$shards" = 1 ]; then
  echo "mlp-mnist hidden $hidden in 1 shard: data parallel, all $holders nodes hold the whole model and average in one group"
  echo "(target batch $target_batch, micro-batch 64), 1 engine thread a node,"
else
  echo "mlp-mnist hidden $hidden in 2 shards ($holders holders a shard, averaging in groups of $holders, target batch $target_batch, micro-batch 64), 1 engine thread a node,"
fi
echo "all processes on this machine's $(nproc) cores. Measured over ${seconds} s after a ${warmup} s warm-up per row:"
echo "utilisation = a node's time computing (forward, backward, optimizer) ÷ wall time over that interval, mean"
echo "(and per node); samples/s = samples through the first shard's holders ÷ interval. Local steps: $local_steps inner steps per outer round."
if [ "$shards" = 2 ]; then
  echo "The split balanced by FLOPs gives shard 0 the first layer (4.8 MFLOP a sample) and shard 1 the other two (6.4 MFLOP);"
  echo "every micro-batch carries 64×1024 activations and their gradients (256 KiB each way, ~21 ms at 100 Mbit/s) between"
  echo "the shards. Micro-batches in flight a first-shard node: adaptive (2-8, its shortest recent round trip ÷ its compute"
  echo "per micro-batch) unless the row names a fixed number."
fi
echo "Busy time counts wall time during which the engine runs, so concurrent micro-batches count once."
echo
echo "| link | mode | nodes | utilisation (per node) | samples/s | epoch reached | test accuracy |"
echo "|---|---|---|---|---|---|---|"
for link in $links; do
  IFS=/ read -r up down rtt <<<"$link"
  [ "$link" = none ] && { up=""; down=""; rtt=0ms; }
  start_links "$up" "$down" "$rtt"
  for mode in ${WAN_MODES:-sync local local+bf16 local+bf16+topk}; do
    run_mode "$link" "$mode"
  done
  stop_links
done
