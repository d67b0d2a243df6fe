#!/usr/bin/env bash
# Runs the benchmark scripts in scripts/bench/*.sh and writes their results into
# BENCHMARKS.md. Each script prints one Markdown section on stdout; this script
# stamps it with the commit, the machine and the command, and replaces that
# script's section in BENCHMARKS.md (sections not re-run are kept as they were).
# Every section script sources scripts/bench/lib/guard.sh, whose load guard
# records the load before and after the section and marks a section measured
# under load in its header (BENCH_RERUNS=n reruns it, BENCH_STRICT=1 fails it).
#
#   make bench                 # every section
#   make bench ONLY=engine     # just scripts/bench/engine.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=BENCHMARKS.md
only=${ONLY:-}
[ -f "$out" ] || printf '# Benchmarks\n\nWritten by `make bench` (scripts/bench.sh); each section names the commit, the machine and the command that produced it. Medians and ratios are from one run on one machine.\n' > "$out"

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
machine="$cpu, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(go version | awk '{print $3}')"

for script in scripts/bench/*.sh; do
  name=$(basename "$script" .sh)
  [ -n "$only" ] && [ "$only" != "$name" ] && continue
  echo ">> bench $name" >&2
  body=$(mktemp)
  if ! bash "$script" > "$body"; then
    echo "bench $name failed" >&2
    rm -f "$body"; exit 1
  fi
  section=$(mktemp)
  {
    echo "<!-- bench:$name -->"
    cat "$body"
    echo
    echo "_Commit $commit; machine: $machine; command: \`make bench ONLY=$name\`; $(date -u +%Y-%m-%d)._"
    echo "<!-- /bench:$name -->"
  } > "$section"
  python3 - "$out" "$name" "$section" <<'PY'
import re, sys
path, name, section = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
text = open(path).read()
pat = re.compile(r"<!-- bench:%s -->.*?<!-- /bench:%s -->\n?" % (re.escape(name), re.escape(name)), re.S)
if pat.search(text):
    text = pat.sub(lambda m: section, text)
else:
    text = text.rstrip("\n") + "\n\n" + section
open(path, "w").write(text)
PY
  rm -f "$body" "$section"
done
echo "wrote $out" >&2
