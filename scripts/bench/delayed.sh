#!/usr/bin/env bash
# Delayed updates in sync mode (averaging.delayed_updates): `swarm demo`
# (1 bootstrap + 4 volunteer processes on 127.0.0.1, mlp-mnist in 2 shards,
# 2 holders a shard) with and without --delayed-updates, one after the
# other, and `swarm train` on the same manifest: test accuracy, wall time
# and samples/s. With root and `ip netns` (scripts/wan.sh), also the WAN
# rows at 100 Mbit/s and 50 ms RTT, sync with and without delayed updates
# (DELAYED_WAN=0 skips them). Prints one Markdown section.
set -euo pipefail
source "$(dirname "$0")/lib/guard.sh"
bench_guard "$0" "$@"
cd "$(dirname "$0")/../.."
bin=./bin/swarm
hidden=${BENCH_DELAYED_HIDDEN:-1024,1024}
steps=${BENCH_DELAYED_STEPS:-600}
dir=$(mktemp -d /tmp/swarm-delayed.XXXXXX)
trap 'rm -rf "$dir"' EXIT

# demo LABEL ARGS...: one demo run, one table row.
demo() {
  local label=$1
  shift
  local start s acc sps
  start=$(date +%s.%N)
  "$bin" demo --dir "$dir/demo" --hidden "$hidden" --steps "$steps" --interval 5s "$@" > "$dir/demo.out"
  s=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.0f", e - s }')
  acc=$(sed -n 's/.*test accuracy \([0-9.]*\)%.*/\1/p' "$dir/demo.out" | tail -1)
  sps=$(awk '/samples\/s/ { for (i = 1; i <= NF; i++) if ($i == "samples/s") print $(i-1) }' "$dir/demo.out" |
    awk '$1 > 0' | sort -n | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print 0 }')
  printf '| %s | %.2f%% | %s | %.0f |\n' "$label" "$acc" "$s" "$sps"
  echo "$acc $sps" > "$dir/$label.val"
}

rows=$(mktemp)
demo "swarm, sync" > "$rows"
demo "swarm, sync, delayed updates" --delayed-updates >> "$rows"
"$bin" train --run "$dir/demo/run.json" --json --eval-every -1 --threads 2 > "$dir/train.json" 2>/dev/null
single_sps=$(jq '.samples_per_second' "$dir/train.json")
printf '| single node (swarm train, 2 threads) | %.2f%% | %.0f | %.0f |\n' "$(jq '.test_accuracy * 100' "$dir/train.json")" "$(jq '.seconds' "$dir/train.json")" "$single_sps" >> "$rows"
read -r acc0 sps0 < "$dir/swarm, sync.val"
read -r acc1 sps1 < "$dir/swarm, sync, delayed updates.val"

echo "## Delayed updates (sync mode)"
echo
echo "\`swarm demo --hidden $hidden --steps $steps\` with and without \`--delayed-updates\`, one run each, one after the"
echo "other: 1 bootstrap + 4 volunteer processes on 127.0.0.1, mlp-mnist in 2 shards, 2 holders a shard, 1 engine thread a"
echo "node, target batch $(jq .training.target_batch "$dir/demo/run.json"); and \`swarm train\` (2 threads) on the same manifest. With"
echo "delayed updates an epoch's gradient round runs while the next epoch computes on the parameters before its step,"
echo "which lands on top when the round ends (at most one round in flight; the last epoch is not delayed). Swarm time"
echo "includes start-up, DHT discovery and the final evaluation; samples/s is the median of the global rate printed every 5 s."
echo
echo "| | test accuracy | wall time (s) | samples/s |"
echo "|---|---|---|---|"
cat "$rows"
echo
printf -- '- Delayed against plain sync: %+.2f points, samples/s ×%.2f; swarm against single node: ×%.2f plain, ×%.2f delayed.\n' \
  "$(jq -n "$acc1 - $acc0")" "$(jq -n "$sps1 / $sps0")" "$(jq -n "$sps0 / $single_sps")" "$(jq -n "$sps1 / $single_sps")"
rm -f "$rows"

if [ "${DELAYED_WAN:-1}" != 0 ] && [ "$(id -u)" = 0 ] && ip netns list >/dev/null 2>&1; then
  echo
  echo "WAN rows (scripts/wan.sh: 4 volunteers + 1 bootstrap in network namespaces, every connection through the"
  echo "user-space link emulator; mlp-mnist hidden $hidden, target batch 128, measured over ${WAN_SECONDS:-60} s after a"
  echo "${WAN_WARMUP:-30} s warm-up; see the WAN emulation section for the method):"
  echo
  echo "| link | mode | nodes | utilisation (per node) | samples/s | epoch reached |"
  echo "|---|---|---|---|---|---|"
  WAN_LINKS=${WAN_LINKS:-100mbit/100mbit/50ms} WAN_SECONDS=${WAN_SECONDS:-60} WAN_WARMUP=${WAN_WARMUP:-30} \
    WAN_MODES="sync sync+delayed" ./scripts/wan.sh | grep '^| [0-9]'
fi
