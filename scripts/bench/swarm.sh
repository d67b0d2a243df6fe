#!/usr/bin/env bash
# Swarm training on one machine: `swarm demo` (1 bootstrap + 4 volunteer
# processes on 127.0.0.1, mlp-mnist in 2 shards, 2 holders a shard) against
# `swarm train` (every shard in one process) on the same manifest: test
# accuracy, wall time and samples/s. Prints one Markdown section.
set -euo pipefail
source "$(dirname "$0")/lib/guard.sh"
bench_guard "$0" "$@"
cd "$(dirname "$0")/../.."
bin=./bin/swarm
hidden=${BENCH_SWARM_HIDDEN:-1024,1024}
steps=${BENCH_SWARM_STEPS:-600}
dir=$(mktemp -d /tmp/swarm-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT

start=$(date +%s.%N)
"$bin" demo --dir "$dir/demo" --hidden "$hidden" --steps "$steps" --interval 5s > "$dir/demo.out"
swarm_s=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.0f", e - s }')
swarm_acc=$(sed -n 's/.*test accuracy \([0-9.]*\)%.*/\1/p' "$dir/demo.out" | tail -1)
# Median of the per-interval global samples/s once training runs.
swarm_sps=$(awk '/samples\/s/ { for (i = 1; i <= NF; i++) if ($i == "samples/s") print $(i-1) }' "$dir/demo.out" |
  awk '$1 > 0' | sort -n | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print 0 }')
samples=$(jq '.training.target_batch * .training.steps' "$dir/demo/run.json")

"$bin" train --run "$dir/demo/run.json" --json --eval-every -1 --threads 2 > "$dir/train.json" 2>/dev/null
single_acc=$(jq '.test_accuracy * 100' "$dir/train.json")
single_s=$(jq '.seconds' "$dir/train.json")
single_sps=$(jq '.samples_per_second' "$dir/train.json")

echo "## Swarm training on one machine"
echo
echo "\`swarm demo --hidden $hidden --steps $steps\`: 1 bootstrap + 4 volunteer processes on 127.0.0.1,"
echo "mlp-mnist in 2 shards, 2 holders a shard, 1 engine thread a node, synchronous collaborative epochs"
echo "(target batch $(jq .training.target_batch "$dir/demo/run.json")), against \`swarm train\` (2 threads) on the same manifest"
echo "and the same number of samples ($samples). Swarm time includes start-up, DHT discovery and the final evaluation;"
echo "its samples/s is the median of the global rate printed every 5 s."
echo
echo "| | test accuracy | wall time (s) | samples/s |"
echo "|---|---|---|---|"
printf '| swarm (4 nodes, 2 shards) | %.2f%% | %s | %.0f |\n' "$swarm_acc" "$swarm_s" "$swarm_sps"
printf '| single node (swarm train) | %.2f%% | %.0f | %.0f |\n' "$single_acc" "$single_s" "$single_sps"
printf '| swarm − single | %+.2f points | ×%.1f | ×%.2f |\n' "$(jq -n "$swarm_acc - $single_acc")" "$(jq -n "$swarm_s / $single_s")" "$(jq -n "$swarm_sps / $single_sps")"
