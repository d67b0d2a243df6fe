#!/usr/bin/env bash
# make demo: a local swarm on 127.0.0.1 — one bootstrap node and four volunteer
# nodes, each its own process with its own home under demo-home/. Waits until
# every node has found the other three through the DHT, prints `swarm status`,
# then keeps the swarm up until Ctrl+C (when run from a terminal) and stops
# every process cleanly.
#
#   DEMO_NODES=8 make demo      # more volunteers
#   DEMO_WAIT=0 make demo       # exit as soon as the swarm has formed
set -euo pipefail
cd "$(dirname "$0")/.."

bin=./bin/swarm
dir=${DEMO_HOME:-demo-home}
nodes=${DEMO_NODES:-4}
wait_for_ctrl_c=${DEMO_WAIT:-$([ -t 0 ] && echo 1 || echo 0)}
[ -x "$bin" ] || { echo "demo: $bin missing; run 'make build' first" >&2; exit 1; }

rm -rf "$dir"
mkdir -p "$dir"
pids=()
stop_all() {
  trap - EXIT INT TERM
  if [ ${#pids[@]} -gt 0 ]; then
    echo "demo: stopping ${#pids[@]} processes" >&2
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

wait_file() { # file seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do [ -s "$1" ] && return 0; sleep 0.1; done
  echo "demo: $1 did not appear within $2 s; logs in $dir/*.log" >&2
  return 1
}

listen=(--listen /ip4/127.0.0.1/tcp/0 --listen /ip4/127.0.0.1/udp/0/quic-v1)
start=$(date +%s.%N)

"$bin" bootstrap --home "$dir/boot" "${listen[@]}" >"$dir/boot.out" 2>"$dir/boot.log" &
pids+=($!)
wait_file "$dir/boot/api" 20
boot_addr=$("$bin" id --home "$dir/boot" --addrs | awk '/\/tcp\// && !f { print; f = 1 }')
echo "demo: bootstrap node at $boot_addr"

for i in $(seq 1 "$nodes"); do
  "$bin" node --home "$dir/node$i" --run-name demo --bootstrap "$boot_addr" "${listen[@]}" 2>"$dir/node$i.log" &
  pids+=($!)
done
for i in $(seq 1 "$nodes"); do wait_file "$dir/node$i/api" 20; done

echo "demo: waiting for the $nodes nodes to find each other through the DHT"
deadline=$((SECONDS + 30))
while :; do
  formed=1
  for i in $(seq 1 "$nodes"); do
    n=$("$bin" peers --run --home "$dir/node$i" | grep -c . || true)
    [ "$n" -ge $((nodes - 1)) ] || { formed=0; break; }
  done
  [ $formed = 1 ] && break
  if [ $SECONDS -ge $deadline ]; then
    echo "demo: the swarm did not form within 30 s; logs in $dir/*.log" >&2
    exit 1
  fi
  sleep 0.2
done
elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
echo "demo: swarm formed in ${elapsed} s (processes started, DHT joined, run peers verified)"
echo
"$bin" status --home "$dir/node1"
echo
printf '%-8s %-54s %s\n' NODE "PEER ID" "RUN PEERS"
for i in $(seq 1 "$nodes"); do
  id=$("$bin" id --home "$dir/node$i" | awk 'NR == 1')
  n=$("$bin" peers --run --home "$dir/node$i" | grep -c . || true)
  printf '%-8s %-54s %s\n' "node$i" "$id" "$n"
done
echo
if [ "$wait_for_ctrl_c" = 1 ]; then
  echo "demo: running; try '$bin status --watch --home $dir/node2'. Ctrl+C stops everything."
  wait "${pids[0]}" || true
fi
