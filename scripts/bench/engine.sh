#!/usr/bin/env bash
# Native engine benchmark: training-step samples/s and GFLOP/s for mlp-mnist
# (batch 64, 128) and gpt-char (batch 32, 80 characters), GEMM GFLOP/s of the
# shapes they use (native kernels vs gonum), the measured FMA peak, and PyTorch
# on the CPU on the same models, batches and thread count in the same run.
# Prints one Markdown section (scripts/bench.sh puts it into BENCHMARKS.md).
#
# PyTorch: Debian's python3-torch under /usr/bin/python3 (apt-get install -y
# python3-torch); skipped with a note when absent. The baseline is PyTorch with
# OpenBLAS: Debian's torch calls whatever libblas.so.3 it finds, and the
# reference BLAS is 6-11× slower, which would change what the ratio column
# means. So this script requires libopenblas0-pthread (installing it with
# apt-get when run as root, unless BENCH_NO_INSTALL=1), points torch at it with
# LD_LIBRARY_PATH (the system default is left alone), and the Go side refuses
# to print a ratio unless torch_bench.py reports that it really loaded it.
# OPENBLAS_CORETYPE overrides the core type OpenBLAS detects; torch's own
# conv/elementwise kernels are unaffected by the BLAS.
#
# The load guard (lib/guard.sh) records the load before and after and marks
# the section when other work shared the CPUs.
set -euo pipefail
source "$(dirname "$0")/lib/guard.sh"
bench_guard "$0" "$@"
cd "$(dirname "$0")/../.."
threads=${THREADS:-$(nproc)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/enginebench" ./scripts/bench/engine

torch_args=()
py=/usr/bin/python3
ob=/usr/lib/x86_64-linux-gnu/openblas-pthread
if [ -x "$py" ] && "$py" -c 'import torch' 2>/dev/null; then
  if [ ! -e "$ob/libblas.so.3" ] && [ "$(id -u)" = 0 ] && [ -z "${BENCH_NO_INSTALL:-}" ] && command -v apt-get >/dev/null; then
    echo "engine: installing libopenblas0-pthread, the BLAS the PyTorch baseline is defined with" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libopenblas0-pthread >&2 ||
      { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libopenblas0-pthread >&2; } || true
  fi
  if [ ! -e "$ob/libblas.so.3" ]; then
    echo "engine: the PyTorch baseline is PyTorch with OpenBLAS, and $ob/libblas.so.3 is missing: apt-get install -y libopenblas0-pthread (Debian's torch would otherwise use the reference BLAS, 6-11× slower, and every native / PyTorch ratio would mean something else)" >&2
    exit 1
  fi
  core=$(LD_LIBRARY_PATH=$ob OPENBLAS_VERBOSE=2 "$py" -c 'import torch; torch.ones(2,2)@torch.ones(2,2)' 2>&1 | sed -n 's/^Core: //p' | head -1)
  ver=$("$py" -c 'import torch; print(torch.__version__)')
  tlist=$threads
  [ "$threads" -gt 1 ] && tlist="$threads 1"
  # OMP_WAIT_POLICY=PASSIVE: with the default spin-waiting, torch's OpenMP
  # threads collapse (10× slower) whenever the cores are shared.
  LD_LIBRARY_PATH=$ob OMP_WAIT_POLICY=PASSIVE "$py" scripts/bench/engine/torch_bench.py 80 $tlist > "$tmp/torch.jsonl"
  torch_args=(-torch "$tmp/torch.jsonl" -baseline "PyTorch + OpenBLAS" -baseline-blas "$ob/libblas.so.3"
    -blas-note "Baseline: PyTorch $ver (Debian python3-torch) with its GEMMs through OpenBLAS ($ob, detected core ${core:-unknown}${OPENBLAS_CORETYPE:+, OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE}; torch_bench.py checks the libblas.so.3 it loaded), OMP_WAIT_POLICY=PASSIVE (with spin-waiting OpenMP threads it was ~10× slower on this shared machine).")
else
  torch_args=(-torch-note "PyTorch columns skipped: /usr/bin/python3 cannot import torch (apt-get install -y python3-torch libopenblas0-pthread).")
fi
"$tmp/enginebench" -threads "$threads" "${torch_args[@]}"
