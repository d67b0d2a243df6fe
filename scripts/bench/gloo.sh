#!/usr/bin/env bash
# All-reduce against PyTorch's gloo, in the same run: swarm's encrypted
# butterfly all-reduce (averaging/cmd/allreduce-bench run: n peer processes
# on 127.0.0.1) on bulk connections (internal/bulk: TCP, AES-128-GCM
# records) and on libp2p streams (TCP, libp2p's default security, yamux),
# and gloo's
# all_reduce (scripts/gloo_allreduce.py: n processes on 127.0.0.1, TCP, no
# encryption) at n = 2, 4, 8 and 64 MiB of float32, interleaved. busbw =
# size × 2(n−1)/n ÷ time (nccl-tests) for both. Needs a python3 with torch
# (Debian python3-torch; GLOO_PYTHON names it, default /usr/bin/python3).
# Prints one Markdown section.
set -euo pipefail
source "$(dirname "$0")/lib/guard.sh"
bench_guard "$0" "$@"
cd "$(dirname "$0")/../.."
py=${GLOO_PYTHON:-/usr/bin/python3}
mib=${GLOO_MIB:-64}
rounds=${GLOO_ROUNDS:-5}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "## All-reduce: swarm vs gloo"
echo
if ! "$py" -c 'import torch.distributed as d; assert d.is_gloo_available()' 2>/dev/null; then
  echo "Skipped: $py has no torch with gloo (Debian: python3-torch; GLOO_PYTHON names another interpreter)."
  exit 0
fi
go build -o "$tmp/arb" ./averaging/cmd/allreduce-bench
rows=()
for n in 2 4 8; do
  s=$("$tmp/arb" run -n "$n" -mib "$mib" -codec none -rounds "$rounds" -bulk=true)
  l=$("$tmp/arb" run -n "$n" -mib "$mib" -codec none -rounds "$rounds" -bulk=false)
  g=$("$py" scripts/gloo_allreduce.py -n "$n" -mib "$mib" -rounds "$rounds")
  rows+=("$(python3 - "$s" "$l" "$g" <<'PY'
import json, sys
s, l, g = (json.loads(a) for a in sys.argv[1:4])
if s["transfers_bulk"] == 0 or s["transfers_libp2p"] != 0:
    sys.exit("gloo.sh: the bulk run did not use bulk connections: %r" % s)
print("| %d | %d MiB | %.2f s | %.0f MiB/s | %.2f s | %.0f MiB/s | %.2f s | %.0f MiB/s | **%.2f×** | %.2f× |" % (
    s["n"], s["mib"], s["time_s"], s["busbw_mibps"], l["time_s"], l["busbw_mibps"], g["time_s"], g["busbw_mibps"],
    s["busbw_mibps"] / g["busbw_mibps"], l["busbw_mibps"] / g["busbw_mibps"]))
PY
)")
done
echo "n processes on 127.0.0.1, all on this machine's $(nproc) cores, $mib MiB of float32, one group of n; time is the"
echo "slowest peer's all-reduce, median over $((rounds - 1)) (swarm) or $rounds (gloo) measured rounds after a warm-up; busbw ="
echo "size × 2(n−1)/n ÷ time. Swarm: \`allreduce-bench run -n N -mib $mib -codec none -rounds $rounds -bulk=true|false\` (butterfly,"
echo "parts of 128 Ki values, every byte encrypted: on bulk connections, TCP with AES-128-GCM records of 512 KiB keyed"
echo "through libp2p (internal/bulk); on libp2p streams, libp2p's default security over TCP, yamux). Gloo: \`scripts/gloo_allreduce.py\`"
echo "(torch $("$py" -c 'import torch; print(torch.__version__)'), \`torch.distributed.all_reduce\`, TCP, unencrypted, 1 torch thread a process)."
echo "The three alternate per n, in one run."
echo
echo "| peers | size | swarm bulk time | busbw | swarm libp2p time | busbw | gloo time | busbw | bulk ÷ gloo | libp2p ÷ gloo |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
