#!/usr/bin/env bash
# Compressed deltas in local mode: `swarm demo --averaging local` (1 bootstrap
# + 4 volunteer processes on 127.0.0.1, mlp-mnist in 2 shards, 2 holders a
# shard, 20 inner steps a round) with fp32 deltas and with delta_codec topk
# at a few keep fractions and bit widths: test accuracy, and per node the
# bytes it sent and received in a delta round averaged with its peer
# against fp32's (a member of a group of two: 4 bytes a value out and back
# for each half of the vector, 8 bytes a value), and the bytes a round over
# the whole run, outer-state rounds included. Prints one Markdown section.
set -euo pipefail
source "$(dirname "$0")/lib/guard.sh"
bench_guard "$0" "$@"
cd "$(dirname "$0")/../.."
bin=./bin/swarm
hidden=${BENCH_COMPRESS_HIDDEN:-1024,1024}
steps=${BENCH_COMPRESS_STEPS:-600}
dir=$(mktemp -d /tmp/swarm-compress.XXXXXX)
trap 'rm -rf "$dir"' EXIT

echo "## Compressed deltas (local mode)"
echo
echo "\`swarm demo --averaging local --hidden $hidden --steps $steps\`: 1 bootstrap + 4 volunteer processes on 127.0.0.1,"
echo "mlp-mnist in 2 shards (803,840 and 1,059,850 values), 2 holders a shard, 20 inner steps a round ($((steps / 20)) rounds), 1 engine"
echo "thread a node. Bytes: what a node sent and received in the all-reduce of a delta round averaged with its peer, mean"
echo "over such rounds, both shards summed over one holder each; fp32 deltas move 8 bytes a value (4 out and 4 back for"
echo "each half). Every 10th round and the last may also average the outer state (anchor and momentum), dense: they"
echo "do where the holders' fingerprints of that state differ (a round left one out), so \"over the run\" is all the bytes"
echo "of the rounds averaged with a peer, both kinds, ÷ their number. One run each."
echo
echo "| deltas | outer lr, momentum | test accuracy | delta round bytes | vs fp32 | outer-state rounds | over the run, bytes a round | vs fp32 |"
echo "|---|---|---|---|---|---|---|---|"
# row LABEL ARGS...: one demo run, one table row.
row() {
  local label=$1 lrm=$2
  shift 2
  "$bin" demo --dir "$dir/demo" --averaging local --hidden "$hidden" --steps "$steps" --interval 10s "$@" > "$dir/out"
  local acc
  acc=$(sed -n 's/.*test accuracy \([0-9.]*\)%.*/\1/p' "$dir/out" | tail -1)
  # One holder a shard: node lines name the shard; take the first of each.
  awk -v label="$label" -v lrm="$lrm" -v acc="$acc" '
    /outer traffic: shard/ {
      match($0, /shard [0-9]+/); s = substr($0, RSTART + 6, RLENGTH - 6)
      if (s in seen) next; seen[s] = 1
      match($0, /[0-9]+ values/); v += substr($0, RSTART, RLENGTH - 7)
      match($0, /[0-9]+ delta rounds/); if (substr($0, RSTART, RLENGTH - 13) + 0 == 0) alone = alone " " s
      match($0, /delta rounds, [0-9]+ bytes/); d += substr($0, RSTART + 14, RLENGTH - 20)
      match($0, /[0-9]+ outer-state rounds/); n += substr($0, RSTART, RLENGTH - 19)
      match($0, /over the run [0-9]+ bytes/); r += substr($0, RSTART + 13, RLENGTH - 19)
    }
    END {
      if (length(seen) < 2) { printf "| %s | %s | %.2f%% | (a shard reported no traffic) | | | | |\n", label, lrm, acc; exit }
      if (alone != "") { printf "| %s | %s | %.2f%% | (shard%s: no delta round averaged with its peer) | | | | |\n", label, lrm, acc, alone; exit }
      printf "| %s | %s | %.2f%% | %d | %.0f× fewer | %d | %d | %.0f× fewer |\n", label, lrm, acc, d, 8 * v / d, n, r, 8 * v / r
    }
  ' "$dir/out"
}
row "fp32" "0.7, 0.9"
row "fp32" "1, 0" --outer-lr 1 --outer-momentum 0
row "top-k 3%, 2 bits" "1, 0" --delta-keep 0.03 --delta-bits 2
row "top-k 2%, 2 bits" "1, 0" --delta-keep 0.02 --delta-bits 2
row "top-k 3%, 4 bits" "1, 0" --delta-keep 0.03 --delta-bits 4
row "top-k 1.5%, 4 bits" "1, 0" --delta-keep 0.015 --delta-bits 4
