#!/usr/bin/env bash
# GPU engines: `swarm bench` samples/s of the PyTorch worker engine (torch-cpu:
# no GPU on the benchmark machine) against the native engine, for shard sizes
# of both built-in models at their default micro-batch, same threads, same run.
# The torch numbers include the pipe protocol and the node's crash-recovery
# snapshots at their default schedule; a second torch column (scripts/bench/gpu,
# torch.Options.SnapshotEvery 1) copies the worker's whole state to the node
# after every step, as the engine did before its state stayed in the worker.
# Prints one Markdown section (scripts/bench.sh).
#
# PyTorch: Debian's python3-torch under /usr/bin/python3; skipped with a note
# when absent. As in engine.sh, torch is pointed at OpenBLAS with
# LD_LIBRARY_PATH when libopenblas0-pthread is installed.
set -euo pipefail
source "$(dirname "$0")/lib/guard.sh"
bench_guard "$0" "$@"
cd "$(dirname "$0")/../.."
threads=${THREADS:-$(nproc)}
secs=${BENCH_TIME:-4s}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/swarm" ./cmd/swarm 2>/dev/null
go build -o "$tmp/gpubench" ./scripts/bench/gpu 2>/dev/null

gpu=$("$tmp/swarm" gpu --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(", ".join(x["name"] for x in d["devices"]) or "none (" + (d.get("error") or "no devices") + ")")')
blas="reference BLAS"
ob=/usr/lib/x86_64-linux-gnu/openblas-pthread
if [ -e "$ob/libblas.so.3" ]; then export LD_LIBRARY_PATH=$ob${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}; blas="OpenBLAS"; fi
load_before=$(cut -d' ' -f1 /proc/loadavg)
have_torch=1
/usr/bin/python3 -c 'import torch' 2>/dev/null || have_torch=0

run() { # engine model units
  "$tmp/swarm" --log-level error bench --engine "$1" --gpus none --cpu-threads "$threads" --model "$2" --units "$3" \
    --time "$secs" --no-cache --json > "$tmp/$1-$2.json"
}
for model in mlp-mnist:1,3 gpt-char:1,4; do
  run native "${model%%:*}" "${model##*:}"
  if [ $have_torch = 1 ]; then
    run torch "${model%%:*}" "${model##*:}"
    "$tmp/gpubench" -model "${model%%:*}" -units "${model##*:}" -threads "$threads" -time "$secs" -snapshot-every 1 > "$tmp/every-${model%%:*}.json"
  fi
done

load_after=$(cut -d' ' -f1 /proc/loadavg)
python3 - "$tmp" "$threads" "$have_torch" "$gpu" "$blas" "$load_before" "$load_after" "$secs" <<'PY'
import json, os, sys
d, threads, have_torch, gpu, blas = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4], sys.argv[5]
load = f"load average {sys.argv[6]} before, {sys.argv[7]} after"
secs = sys.argv[8]
print("## GPU engines: PyTorch worker vs native\n")
print(f"`swarm bench` on {threads} threads, at least {secs} per row: one training micro-batch (forward, backward, optimizer step) of a shard "
      f"holding the model's first *k* units, at the manifest's micro-batch size; samples/s and GFLOP/s "
      f"(run.Manifest.FLOPsPerSample). GPUs found by NVML: {gpu}, so the torch engine runs on the CPU "
      f"(torch-cpu, {blas}); CUDA numbers need a GPU machine.\n")
if not have_torch:
    print("_/usr/bin/python3 has no torch: torch rows skipped (apt-get install python3-torch)._\n")
print("| model | units | batch | native samples/s | torch-cpu samples/s | torch, state to node every step | torch/native | gain over every step | native GFLOP/s | torch GFLOP/s |")
print("|---|---|---|---|---|---|---|---|---|---|")
for model in ("mlp-mnist", "gpt-char"):
    nat = json.load(open(f"{d}/native-{model}.json"))["results"]
    tor = json.load(open(f"{d}/torch-{model}.json"))["results"] if have_torch else [None] * len(nat)
    every = json.load(open(f"{d}/every-{model}.json")) if have_torch else [None] * len(nat)
    for n, t, e in zip(nat, tor, every):
        ts = f'{t["samples_per_sec"]:.0f}' if t else "–"
        es = f'{e["samples_per_sec"]:.0f}' if e else "–"
        ratio = f'{t["samples_per_sec"] / n["samples_per_sec"]:.2f}×' if t else "–"
        gain = f'{t["samples_per_sec"] / e["samples_per_sec"]:.2f}×' if t and e else "–"
        tg = f'{t["gflop_per_sec"]:.2f}' if t else "–"
        print(f'| {model} | {n["units"]} | {n["batch"]} | {n["samples_per_sec"]:.0f} | {ts} | {es} | {ratio} | {gain} | {n["gflop_per_sec"]:.2f} | {tg} |')
print("\nThe torch engine keeps a shard's parameters, gradients and optimizer state in the worker and copies them "
      "to the node only when asked (Params/Grads/OptState) and for its crash-recovery snapshot, at most every 50 steps "
      "or 60 s (torch.Options), replaying the logged requests since after a worker restart. "
      "\"State to node every step\" is the same engine with torch.Options.SnapshotEvery 1: parameters, gradients and "
      "AdamW moments (4× the parameter bytes) cross the pipe after every step, as they did before the state stayed in "
      "the worker. Both torch columns pay the pipe for inputs, activations and gradients per micro-batch. "
      "On a GPU the saved copy is device-to-host traffic too; that path (CUDA tensors, one host-to-device copy per "
      "buffer) is covered here only by the CPU tests of the same code.")
print(f"\nMachine {load} (other work on the machine skews all rows).")
PY
