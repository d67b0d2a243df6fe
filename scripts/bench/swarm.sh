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

# demo_run NAME ARGS...: one demo; sets the NAME_s, NAME_acc and NAME_sps
# variables (wall seconds, test accuracy, median global samples/s).
demo_run() {
  local name=$1
  shift
  local start out=$dir/$name.out
  start=$(date +%s.%N)
  "$bin" demo --dir "$dir/$name" --hidden "$hidden" --steps "$steps" --interval 5s "$@" > "$out"
  printf -v "${name}_s" '%s' "$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.0f", e - s }')"
  printf -v "${name}_acc" '%s' "$(sed -n 's/.*test accuracy \([0-9.]*\)%.*/\1/p' "$out" | tail -1)"
  # Median of the per-interval global samples/s once training runs.
  printf -v "${name}_sps" '%s' "$(awk '/samples\/s/ { for (i = 1; i <= NF; i++) if ($i == "samples/s") print $(i-1) }' "$out" |
    awk '$1 > 0' | sort -n | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print 0 }')"
}

demo_run swarm
# The same with the gradient averaged in bf16 (averaging.compression), as a
# run on slow links would: half the bytes each round encrypts and moves.
demo_run bf16 --compression bf16
# The same with topk activations keeping every non-zero value: at this
# model's ReLU cut about a quarter of the values, in bf16, and the gradient
# back at those places: 6.6x fewer pipeline bytes for libp2p to encrypt.
demo_run topk --activation-keep 1
samples=$(jq '.training.target_batch * .training.steps' "$dir/swarm/run.json")

"$bin" train --run "$dir/swarm/run.json" --json --eval-every -1 --threads 2 > "$dir/train.json" 2>/dev/null
single_acc=$(jq '.test_accuracy * 100' "$dir/train.json")
single_s=$(jq '.seconds' "$dir/train.json")
single_sps=$(jq '.samples_per_second' "$dir/train.json")

echo "## Swarm training on one machine"
echo
echo "\`swarm demo --hidden $hidden --steps $steps\`: 1 bootstrap + 4 volunteer processes on 127.0.0.1,"
echo "mlp-mnist in 2 shards, 2 holders a shard, 1 engine thread a node, synchronous collaborative epochs"
echo "(target batch $(jq .training.target_batch "$dir/swarm/run.json")), against \`swarm train\` (2 threads) on the same manifest"
echo "and the same number of samples ($samples); then the demo again with \`--compression bf16\` (the gradient averaged"
echo "in bf16), and with \`--activation-keep 1\` (topk activations: the non-zero values between the shards, in bf16, and the"
echo "gradient at those places). Swarm time includes start-up, DHT discovery and the final evaluation; its samples/s is the"
echo "median of the global rate printed every 5 s. The runs go one after the other: demo, bf16 demo, topk demo, single node."
echo
echo "| | test accuracy | wall time (s) | samples/s |"
echo "|---|---|---|---|"
printf '| swarm (4 nodes, 2 shards) | %.2f%% | %s | %.0f |\n' "$swarm_acc" "$swarm_s" "$swarm_sps"
printf '| swarm, gradients averaged in bf16 | %.2f%% | %s | %.0f |\n' "$bf16_acc" "$bf16_s" "$bf16_sps"
printf '| swarm, topk activations (keep 1) | %.2f%% | %s | %.0f |\n' "$topk_acc" "$topk_s" "$topk_sps"
printf '| single node (swarm train) | %.2f%% | %.0f | %.0f |\n' "$single_acc" "$single_s" "$single_sps"
printf '| swarm − single | %+.2f points | ×%.1f | ×%.2f |\n' "$(jq -n "$swarm_acc - $single_acc")" "$(jq -n "$swarm_s / $single_s")" "$(jq -n "$swarm_sps / $single_sps")"
printf '| swarm bf16 − single | %+.2f points | ×%.1f | ×%.2f |\n' "$(jq -n "$bf16_acc - $single_acc")" "$(jq -n "$bf16_s / $single_s")" "$(jq -n "$bf16_sps / $single_sps")"
printf '| swarm topk − single | %+.2f points | ×%.1f | ×%.2f |\n' "$(jq -n "$topk_acc - $single_acc")" "$(jq -n "$topk_s / $single_s")" "$(jq -n "$topk_sps / $single_sps")"
