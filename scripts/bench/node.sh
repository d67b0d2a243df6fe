#!/usr/bin/env bash
# Node benchmarks (printed as one Markdown section for BENCHMARKS.md):
#  1. idle RSS and CPU of a `swarm node` daemon over 60 s (joined to a local
#     bootstrap node and one other peer of its run);
#  2. libp2p single-stream throughput on loopback: TCP+TLS, TCP+Noise, QUIC;
#  3. time for a joiner to discover 100 run peers on loopback (in-process hosts).
set -euo pipefail
source "$(dirname "$0")/lib/guard.sh"
bench_guard "$0" "$@"
cd "$(dirname "$0")/../.."
[ -x bin/swarm ] || go build -o bin/swarm ./cmd/swarm
idle_s=${NODE_BENCH_IDLE_S:-60}
peers=${NODE_BENCH_PEERS:-100}
tmp=$(mktemp -d)
pids=()
cleanup() { [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'echo "scripts/bench/node.sh: failed at line $LINENO" >&2' ERR

# --- 1. idle daemon ---------------------------------------------------------
listen=(--listen /ip4/127.0.0.1/tcp/0 --listen /ip4/127.0.0.1/udp/0/quic-v1)
bin/swarm bootstrap --home "$tmp/boot" "${listen[@]}" >/dev/null 2>&1 & pids+=($!)
for _ in $(seq 100); do [ -s "$tmp/boot/api" ] && break; sleep 0.1; done
boot=$(bin/swarm id --home "$tmp/boot" --addrs | awk '/\/tcp\// && !f { print; f = 1 }')
bin/swarm node --home "$tmp/a" --run-name bench --bootstrap "$boot" "${listen[@]}" 2>/dev/null & pids+=($!)
bin/swarm node --home "$tmp/b" --run-name bench --bootstrap "$boot" "${listen[@]}" 2>/dev/null & pids+=($!)
pid=${pids[2]}
for _ in $(seq 300); do
  [ -s "$tmp/b/api" ] && [ "$(bin/swarm peers --run --home "$tmp/b" 2>/dev/null | grep -c . || true)" -ge 1 ] && break
  sleep 0.1
done
sleep 5 # let start-up work (first DHT queries, identify) settle
hz=$(getconf CLK_TCK)
ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$pid/status"; }
t0=$(ticks); s0=$(date +%s.%N); rss_samples=()
for _ in $(seq "$idle_s"); do rss_samples+=("$(rss_kb)"); sleep 1; done
t1=$(ticks); s1=$(date +%s.%N)
rss_med=$(printf '%s\n' "${rss_samples[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
rss_max=$(printf '%s\n' "${rss_samples[@]}" | sort -n | tail -n1)
cpu=$(awk -v t0="$t0" -v t1="$t1" -v hz="$hz" -v s0="$s0" -v s1="$s1" 'BEGIN { printf "%.2f", 100 * (t1 - t0) / hz / (s1 - s0) }')
kill -TERM "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true; pids=()

# --- 2 and 3. Go benchmarks -------------------------------------------------
go test -run '^$' -bench 'StreamThroughput' -benchtime 2s -count 3 ./node/ > "$tmp/tp.txt"
SWARM_BENCH_PEERS=$peers go test -run '^$' -bench 'JoinRun' -benchtime 3x -timeout 20m -v ./node/ > "$tmp/join.txt" 2>&1 || { cat "$tmp/join.txt" >&2; exit 1; }

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
tp() { grep "StreamThroughput/$1-" "$tmp/tp.txt" | awk '{ for (i = 1; i <= NF; i++) if ($i == "MB/s") print $(i - 1) }' | median; }
tls=$(tp tcp-tls); noise=$(tp tcp-noise); quic=$(tp quic)
joins=$(grep -o 'found [0-9]* run peers in [0-9.]*[a-zµ]*s' "$tmp/join.txt" | awk '{ print $6 }')
join_med=$(for j in $joins; do
  case $j in *ms) echo "${j%ms}" | awk '{ print $1 / 1000 }';; *s) echo "${j%s}";; esac
done | median)
formed=$(grep -o 'run of [0-9]* peers formed in [0-9.]*[a-z]*s' "$tmp/join.txt" | head -n1 | awk '{ print $7 }')

cat <<MD
## Node: idle daemon, run discovery, libp2p throughput

What: (1) RSS and CPU of one \`swarm node\` process over ${idle_s} s of idling, joined to a
local bootstrap node and one run peer (RSS sampled every second; CPU from /proc utime+stime).
(2) Single-stream throughput between two libp2p hosts on 127.0.0.1, yamux over TCP, 1 MiB
writes, median of 3 runs of 2 s (\`BenchmarkStreamThroughput\`). (3) Time from starting a
joiner until it lists all ${peers} peers of its run, found through the DHT and confirmed by
the run handshake; the ${peers} peers and the bootstrap node are in-process hosts on
127.0.0.1, median over the joiners (\`BenchmarkJoinRun\`). The machine's 2 cores are shared, so
(3) is an upper bound.

| measure | result | target |
|---|---|---|
| idle RSS, median (max) | $((rss_med / 1024)) MB ($((rss_max / 1024)) MB) | ≤ 60 MB |
| idle CPU over ${idle_s} s | ${cpu} % of one core | < 1 % |
| throughput TCP+TLS | ${tls} MB/s | |
| throughput TCP+Noise | ${noise} MB/s | |
| throughput QUIC | ${quic} MB/s | |
| joiner finds ${peers} run peers, median | ${join_med} s | |
| forming the ${peers}-peer run (batches of 10) | ${formed} | |

Joiner times: $(echo $joins | sed 's/ /, /g').
MD
