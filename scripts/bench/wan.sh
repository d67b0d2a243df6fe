#!/usr/bin/env bash
# WAN emulation section: runs scripts/wan.sh (network namespaces, the
# user-space link emulator) when it can; otherwise prints a note saying why
# it was skipped. WAN_* settings pass through (scripts/wan.sh's header).
set -euo pipefail
source "$(dirname "$0")/lib/guard.sh"
bench_guard "$0" "$@"
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ] || ! ip netns list >/dev/null 2>&1 || ! command -v jq >/dev/null; then
  echo "## WAN emulation: sync vs local steps"
  echo
  echo "Skipped: scripts/wan.sh needs root, \`ip netns\` (iproute2) and jq; run \`sudo make bench ONLY=wan\`."
  exit 0
fi
WAN_SECONDS=${WAN_SECONDS:-60} WAN_WARMUP=${WAN_WARMUP:-30} ./scripts/wan.sh
