#!/usr/bin/env bash
# Scale simulation: one process, libp2p mocknet, N peers of one run across 10
# shards, each with the real progress gossip (GossipSub topic, validator,
# pacing) and tracker but no trainer; each node dials 8 random peers when it
# starts. Scripted: bring-up, a steady window, three epoch closes, five
# joiners, five clean departures, five kills, one matchmaking round per shard
# with the averaging matchmaker. Prints one Markdown section with 100, 300 and
# 1,000 peers side by side (BENCH_SCALE_SIZES overrides).
set -euo pipefail
source "$(dirname "$0")/lib/guard.sh"
bench_guard "$0" "$@"
cd "$(dirname "$0")/../.."
sizes=${BENCH_SCALE_SIZES:-100,300,1000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/sb" ./swarm/progress/cmd/scale-bench
budget=${BENCH_SCALE_BUDGET:-20}
limit=${BENCH_SCALE_LIMIT:-40m} # a size still running then is reported as unfinished
# Progress goes to stderr; each size prints its JSON line when it is done.
timeout "$limit" "$tmp/sb" -v -n "$sizes" -budget "$budget" -window "${BENCH_SCALE_WINDOW:-15s}" > "$tmp/out.json" || true

echo "## Scale: progress over GossipSub, ${sizes//,/ \/ } peers in one process"
echo
echo "One process, libp2p mocknet, 10 shards, each node dials 8 random peers; every record changes each 100 ms"
echo "(samples done) and is published at most every (live−8)/budget s (between 5 ms and 20 s), epoch changes at once."
echo "Budget $budget records/s here (the nodes' default is 200: 2 cores cannot carry 1,000 peers at that rate in"
echo "one process; per-node traffic and CPU scale linearly with it, the latencies below do not depend on it)."
echo "Per node: medians over the nodes in a steady window. CPU and memory are the whole process's divided by"
echo "the peers (every peer shares the process's cores: at large N the simulation is CPU-bound, and its"
echo "latencies are then the machine's, not the protocol's)."
echo
python3 - "$tmp/out.json" "$sizes" "$limit" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
if not rows:
    sys.exit("scale: no size finished")
unfinished = [int(n) for n in sys.argv[2].split(",") if int(n) not in {r["n"] for r in rows}]
def fmt(v, f): return f % v
lines = [
    ("records received/s per node (duplicates included)", "msgs_in_s", "%.0f"),
    ("distinct records accepted/s per node", "delivered_s", "%.0f"),
    ("own records published/s per node", "published_s", "%.2f"),
    ("progress bytes in/s per node", "bytes_in_s", "%.0f"),
    ("progress bytes out/s per node", "bytes_out_s", "%.0f"),
    ("connections per node (median / max)", None, None),
    ("topic peers per node", "mesh", "%.0f"),
    ("CPU per node (ms/s)", "cpu_ms_s", "%.1f"),
    ("Go heap per node (KiB)", "heap_kib", "%.0f"),
    ("share of live peers a node holds a record of", "coverage", "%.2f"),
    ("bring-up until 95% hold 95% (s)", "start_s", "%.1f"),
    ("joiner sees its shard's holders, p50 / max (s)", None, None),
    ("epoch close known to 95% of nodes (s, median of 3)", "epoch95_s", "%.2f"),
    ("clean departure known to 95% (s)", "leave95_s", "%.1f"),
    ("killed node dropped by 95% (s)", "kill95_s", "%.1f"),
    ("matchmaking per shard, p50 / p95 (s)", None, None),
    ("peers grouped / groups", None, None),
    ("router trouble: rejected / throttled / dropped RPCs", None, None),
]
print("| | " + " | ".join("%d peers" % r["n"] for r in rows) + " |")
print("|---|" + "---:|" * len(rows))
for name, key, f in lines:
    cells = []
    for r in rows:
        if key:
            cells.append(fmt(r.get(key, 0), f))
        elif name.startswith("connections"):
            cells.append("%.0f / %d" % (r["conns"], r["conns_max"]))
        elif name.startswith("joiner"):
            cells.append("%.2f / %.2f" % (r["join_p50_s"], r["join_max_s"]))
        elif name.startswith("matchmaking"):
            cells.append("%.2f / %.2f" % (r["match_p50_s"], r["match_p95_s"]))
        elif name.startswith("peers grouped"):
            cells.append("%.0f%% / %d" % (100 * r["grouped_frac"], r["groups"]))
        else:
            cells.append("%d / %d / %d" % (r["rejected"], r["throttled"], r["dropped"]))
    print("| %s | %s |" % (name, " | ".join(cells)))
fails = [(r["n"], f) for r in rows for f in r.get("failures") or []]
if len(rows) >= 2:
    a, b = rows[0], rows[-1]
    print()
    print("Growth %d → %d peers: records received %.2f×, bytes in %.2f×." % (
        a["n"], b["n"], b["msgs_in_s"] / max(a["msgs_in_s"], 1e-9), b["bytes_in_s"] / max(a["bytes_in_s"], 1e-9)))
for n, f in fails:
    print()
    print("- %d peers: %s" % (n, f))
for n in unfinished:
    print()
    print("- %d peers: not finished within %s on this machine." % (n, sys.argv[3]))
PY
