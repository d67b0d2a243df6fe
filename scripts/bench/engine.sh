#!/usr/bin/env bash
# Native engine benchmark: training-step samples/s and GFLOP/s for mlp-mnist
# (batch 64, 128) and gpt-char (batch 32, 80 characters), GEMM GFLOP/s of the
# shapes they use (native kernels vs gonum), the measured FMA peak, and PyTorch
# on the CPU on the same models, batches and thread count in the same run.
# Prints one Markdown section (scripts/bench.sh puts it into BENCHMARKS.md).
#
# PyTorch: Debian's python3-torch under /usr/bin/python3 (apt-get install -y
# python3-torch); skipped with a note when absent. Debian's torch calls
# whatever libblas.so.3 the alternatives system points at; the reference BLAS
# is ~10× slower than OpenBLAS, so when libopenblas0-pthread is installed this
# script points torch at it with LD_LIBRARY_PATH (the system default is left
# alone) and reports the core type OpenBLAS detected (OPENBLAS_CORETYPE
# overrides it; torch's own conv/elementwise kernels are unaffected).
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${THREADS:-$(nproc)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/enginebench" ./scripts/bench/engine

load_before=$(cut -d' ' -f1 /proc/loadavg)
torch_args=()
py=/usr/bin/python3
if [ -x "$py" ] && "$py" -c 'import torch' 2>/dev/null; then
  ob=/usr/lib/x86_64-linux-gnu/openblas-pthread
  blas="reference BLAS (netlib; install libopenblas0-pthread for OpenBLAS)"
  envs=()
  if [ -e "$ob/libblas.so.3" ]; then
    core=$(LD_LIBRARY_PATH=$ob OPENBLAS_VERBOSE=2 "$py" -c 'import torch; torch.ones(2,2)@torch.ones(2,2)' 2>&1 | sed -n 's/^Core: //p' | head -1)
    blas="OpenBLAS ($ob, detected core ${core:-unknown}${OPENBLAS_CORETYPE:+, OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE})"
    envs=(LD_LIBRARY_PATH=$ob)
  fi
  ver=$("$py" -c 'import torch; print(torch.__version__)')
  tlist=$threads
  [ "$threads" -gt 1 ] && tlist="$threads 1"
  # OMP_WAIT_POLICY=PASSIVE: with the default spin-waiting, torch's OpenMP
  # threads collapse (10× slower) whenever the cores are shared.
  env "${envs[@]}" OMP_WAIT_POLICY=PASSIVE "$py" scripts/bench/engine/torch_bench.py 80 $tlist > "$tmp/torch.jsonl"
  torch_args=(-torch "$tmp/torch.jsonl" -blas-note "PyTorch $ver (Debian python3-torch), GEMMs through $blas, OMP_WAIT_POLICY=PASSIVE (with spin-waiting OpenMP threads it was ~10× slower on this shared machine).")
else
  torch_args=(-torch-note "PyTorch columns skipped: /usr/bin/python3 cannot import torch (apt-get install -y python3-torch).")
fi
"$tmp/enginebench" -threads "$threads" "${torch_args[@]}"
echo
echo "Load average (1 min) before the run: $load_before, after: $(cut -d' ' -f1 /proc/loadavg) on $(nproc) cores; other work on the machine lowers every number here, native and PyTorch alike."
