#!/usr/bin/env bash
# Averaging benchmarks: multi-process all-reduce on 127.0.0.1 (TCP, libp2p's
# default encryption, yamux: a node's default, -bulk=false; the gloo section
# measures bulk connections), libp2p point-to-point stream throughput in the
# same run, matchmaking time for 64 peers, and peak RSS. Prints one Markdown
# section on stdout (scripts/bench.sh stamps it into BENCHMARKS.md).
set -euo pipefail
source "$(dirname "$0")/lib/guard.sh"
bench_guard "$0" "$@"
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/arb" ./averaging/cmd/allreduce-bench
arb="$tmp/arb"

field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d[sys.argv[2]])" "$1" "$2"; }

# Point-to-point: one stream, 256 MiB, three times; the median is the reference.
p2p=()
for _ in 1 2 3; do
  out=$("$arb" p2p -mib 256)
  p2p+=("$(field "$out" mibps)")
  sec=$(field "$out" security)
done
p2p_med=$(printf '%s\n' "${p2p[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')

rows=()
run() { # n mib codec rounds [aggregation [norm-k [audit-parts [audit-rate]]]]
  local out
  out=$("$arb" run -n "$1" -mib "$2" -codec "$3" -rounds "$4" -agg "${5:-mean}" -norm-k "${6:-0}" -audit "${7:-0}" -audit-rate "${8:-0}" -bulk=false)
  rows+=("$(python3 - "$out" "$p2p_med" <<'PY'
import json, sys
d, p2p = json.loads(sys.argv[1]), float(sys.argv[2])
codec = d["codec"]
if d.get("agg", "mean") != "mean":
    codec += ", " + d["agg"]
if d.get("norm_k"):
    codec += ", norm k=%g" % d["norm_k"]
if d.get("audit"):
    codec += ", audit %d" % d["audit"]
t = d["time_s"]
if d.get("audit_rate"):
    # Drawn audits: the mean round (a median would be an unaudited one).
    t = d["time_mean_s"]
    codec += " in %g of rounds (%d of %d audited; mean time)" % (d["audit_rate"], d["audited_rounds"], d["rounds"])
    d["busbw_mibps"] = d["mib"] * 2 * (d["n"] - 1) / d["n"] / t
print("| %d | %d MiB | %s | %.2f s | %.0f MiB/s | %.2f | %.2f | %.0f MiB (%.2f×) | %.2f |" % (
    d["n"], d["mib"], codec, t, d["busbw_mibps"], d["busbw_mibps"] / p2p,
    d["busbw_mibps"] / (p2p / d["n"]), d["peak_rss_mib"], d["rss_over_vector"], d["fraction_min"]))
PY
)")
}
for n in 2 4; do run "$n" 64 none 3; done
# Robust aggregation and reducer audits (issue: at most 15% over the plain
# mean): five rounds each, four measured.
run 8 64 none 5
run 8 64 none 5 centered-clip 10
run 8 64 none 5 centered-clip 10 1
run 8 64 none 13 centered-clip 10 1 0.25
run 8 64 none 3 trimmed-mean
for n in 2 4 8; do run "$n" 256 none 2; done
run 8 256 fp16 2
run 8 256 int8 2
run 8 256 bf16 2

match=$("$arb" match -n 64 -group 8 -rounds 5)

# The share of Byzantine holders each aggregation tolerates (a pure
# simulation: averaging/byzsim_test.go).
sim=$(go test ./averaging -count=1 -run 'TestByzantineShare$' -v | sed -n 's/^ *\(|.*|\)$/\1/p')

cat <<MD
## Averaging (all-reduce, matchmaking)

Butterfly all-reduce of a float32 vector among n peer **processes** on 127.0.0.1 (TCP, libp2p encryption
\`$sec\`, yamux), one group of n, equal bandwidth shares, parts of 128 Ki values. Time is the slowest
peer's all-reduce (matchmaking excluded), median over the measured rounds (the first round of each run is a
warm-up). busbw = size × 2(n−1)/n ÷ time (nccl-tests); for bf16/fp16/int8 the size is the uncompressed size.
Point-to-point reference: one libp2p stream between two processes, 256 MiB, median of 3:
**$(printf '%.0f' "$p2p_med") MiB/s** (runs: $(printf '%.0f ' "${p2p[@]}")MiB/s).

All processes share this machine's cores, so every byte is encrypted and decrypted on the same CPUs:
an all-reduce moves 2(n−1)·size bytes in total against size bytes for one stream, so with CPU-bound
crypto busbw is at most about p2p ÷ n here ("vs p2p/n" column; 1.0 = that ceiling). The issue's target,
busbw ≥ 0.8 × p2p, assumes each peer has its own machine and is not reachable on one shared host.

| peers | size | codec | time | busbw | vs p2p | vs p2p/n | peak RSS (× vector) | fraction averaged |
|---|---|---|---|---|---|---|---|---|
$(printf '%s\n' "${rows[@]}")

Robust rows: \`centered-clip\` with \`norm k=10\` (and with \`audit 1\`: reducer audits, every member re-computing
one part a round) and \`trimmed-mean\` at the reducers (every peer honest, vectors of independent N(0, 1) values),
against the plain-mean row of the same n and size above.

**Byzantine holders tolerated** (\`go test ./averaging -run 'TestByzantineShare\$' -v\`): 24 holders train a logistic
regression (20 features, 200 samples each, minibatch 32, 300 steps); f of them send an attack instead of their
gradient, declaring 4× their samples; one reducer combines each step with the real reducer code. Test accuracy
(training loss) against the share of liars; the goal, asserted by the test, is within one point of the clean run up
to 1 in 4 for the robust rules with norm k=10 (sign flip ×100, huge norm, constant, ALIE colluders with the paper's
z; "z = 1.5" is a stronger collusion, reported only). Without norm k a quarter of liars, each clipped to τ, still
pull every step the same way:

$sim

Matchmaking: 64 peers in one process (hosts connected first, as a node is through the DHT), target group
size 8, window 1 s, 5 rounds: p50 **$(printf '%.2f' "$(field "$match" p50_s)") s**, p95 **$(printf '%.2f' "$(field "$match" p95_s)") s**
(target p95 < 2 s), max $(printf '%.2f' "$(field "$match" max_s)") s; share of peers grouped $(field "$match" grouped_frac);
group sizes (size: peer-rounds) $(field "$match" group_sizes).

Peak RSS is the largest max-RSS of any peer process in that run (target ≤ 3 × the vector size at 256 MiB).
MD
