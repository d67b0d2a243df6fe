# Load guard shared by every section script in scripts/bench/ (sourced, not run;
# it lives in lib/ so scripts/bench.sh does not take it for a section).
#
#   source "$(dirname "$0")/lib/guard.sh"
#   bench_guard "$0" "$@"     # before the section's own work
#
# bench_guard runs the section script again as a child (BENCH_GUARD_INSIDE=1
# makes that second bench_guard return at once), with a sample of the machine
# taken before and after: the 1-minute load average, the processes then busy,
# and the CPU that processes other than the section used while it ran (busy
# time in /proc/stat minus the section's own, from this shell's cutime and
# cstime). The section counts as loaded when the load average before is above
# the core count, or when other processes took more than BENCH_OTHER_MAX
# cores (0.5) on average during it. The load average after is reported, not
# judged: it still counts the section's own processes (a 1-minute average
# decays for minutes), so a busy section would always look loaded by it. A
# loaded section gets "measured under load" in its "## " header and a warning
# under it; every section ends with one "Load guard:" line saying what was
# seen.
#
#   BENCH_RERUNS=n   rerun a loaded section up to n times (default 0); the
#                    least loaded run is printed, whole: every ratio in a
#                    section comes from one run
#   BENCH_STRICT=1   fail instead of printing a loaded section

# guard_sample prints one line: load1 busy_ticks own_ticks monotonic_s procs.
# busy_ticks is the machine's non-idle CPU time, own_ticks the CPU time of this
# shell's finished children, both in clock ticks; procs lists the processes
# that used at least 10% of a core over the sample's window of $1 seconds.
guard_sample() {
  python3 - "$1" "$$" <<'PY'
import os, sys, time
window, shell = float(sys.argv[1]), sys.argv[2]
def proc_ticks():
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == str(os.getpid()):
            continue
        try:
            raw = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        f = raw[raw.rindex(")") + 2:].split()
        out[pid] = (comm, int(f[11]) + int(f[12]))  # utime + stime
    return out
def busy_ticks():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(f[:8]) - f[3] - f[4]  # user..steal without idle and iowait
def own_ticks():
    raw = open(f"/proc/{shell}/stat").read()
    f = raw[raw.rindex(")") + 2:].split()
    return int(f[13]) + int(f[14])  # cutime + cstime
hz = os.sysconf("SC_CLK_TCK")
# Counters first, so the window below is not charged to the section.
line = [open("/proc/loadavg").read().split()[0], str(busy_ticks()), str(own_ticks()), "%.3f" % time.monotonic()]
a = proc_ticks()
time.sleep(window)
b = proc_ticks()
# A process born during the window is charged all its ticks.
busy = sorted(((b[p][1] - a.get(p, (None, 0))[1]) / hz / window, b[p][0], p) for p in b)
procs = ["%s[%s] %.0f%%" % (c, p, 100 * u) for u, c, p in reversed(busy) if u >= 0.1][:5]
print(" ".join(line), ", ".join(procs) or "none")
PY
}

bench_guard() {
  [ -n "${BENCH_GUARD_INSIDE:-}" ] && return 0
  local script cores name reruns attempt=0 rc
  script=$(readlink -f "$1"); shift
  name=$(basename "$script" .sh)
  cores=$(nproc)
  reruns=${BENCH_RERUNS:-0}
  local dir; dir=$(mktemp -d)
  local best="" best_other="" best_note="" best_loaded=""
  while :; do
    local before after
    before=$(guard_sample 1)
    rc=0
    BENCH_GUARD_INSIDE=1 bash "$script" "$@" > "$dir/body.$attempt" || rc=$?
    after=$(guard_sample 1)
    if [ "$rc" != 0 ]; then
      rm -rf "$dir"; exit "$rc"
    fi
    # verdict: "loaded|idle other_cores note"
    local verdict
    verdict=$(python3 - "$before" "$after" "$cores" "${BENCH_OTHER_MAX:-0.5}" <<'PY'
import os, sys
b, a = (s.split(" ", 4) for s in sys.argv[1:3])
cores, other_max = int(sys.argv[3]), float(sys.argv[4])
hz = os.sysconf("SC_CLK_TCK")
secs = float(a[3]) - float(b[3])
other = max(0.0, (int(a[1]) - int(b[1]) - (int(a[2]) - int(b[2]))) / hz / secs)
lb, la = float(b[0]), float(a[0])
why = []
if lb > cores: why.append(f"load average {lb:.2f} before")
if other > other_max: why.append(f"other processes took {other:.2f} cores")
note = (f"1-min load average {lb:.2f} before and {la:.2f} after, on {cores} cores; "
        f"other processes used {other:.2f} cores on average during the {secs:.0f} s run; "
        f"busy before: {b[4]}; busy after: {a[4]}.")
verdict = "loaded" if why else "idle"
if why:
    note += f" Verdict: **loaded** ({', '.join(why)}; the limits are {cores} for the load average and {other_max:g} cores of other work)."
else:
    note += " Verdict: idle."
print(verdict, f"{other:.3f}", note)
PY
)
    local loaded=${verdict%% *} rest=${verdict#* }
    local other=${rest%% *} note=${rest#* }
    echo "bench $name: load guard: $note" >&2
    if [ -z "$best" ] || python3 -c 'import sys; sys.exit(not float(sys.argv[1]) < float(sys.argv[2]))' "$other" "$best_other"; then
      best=$dir/body.$attempt best_other=$other best_note=$note best_loaded=$loaded
    fi
    [ "$loaded" = idle ] && { best=$dir/body.$attempt best_note=$note best_loaded=$loaded; break; }
    [ "$attempt" -ge "$reruns" ] && break
    attempt=$((attempt + 1))
    echo "bench $name: measured under load; rerun $attempt of $reruns" >&2
  done
  if [ "$best_loaded" = loaded ] && [ -n "${BENCH_STRICT:-}" ]; then
    echo "bench $name: measured under load and BENCH_STRICT is set; not printing it. $best_note" >&2
    rm -rf "$dir"; exit 1
  fi
  python3 - "$best" "$best_loaded" "$best_note" <<'PY'
import sys
body, loaded, note = open(sys.argv[1]).read().rstrip("\n").split("\n"), sys.argv[2] == "loaded", sys.argv[3]
out, marked = [], False
for line in body:
    if loaded and not marked and line.startswith("## "):
        out += [line + " — measured under load", "",
                "> **Measured under load**: other work shared the CPUs, so every number below is lower than an idle "
                "machine's and not to be quoted; rerun with the machine idle (the load guard's line at the end says what ran)."]
        marked = True
        continue
    out.append(line)
if loaded and not marked:
    out = ["> **Measured under load**: other work shared the CPUs; the numbers below are not to be quoted.", ""] + out
out += ["", "Load guard: " + note]
print("\n".join(out))
PY
  rm -rf "$dir"
  exit 0
}
