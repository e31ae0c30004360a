#!/usr/bin/env bash
# Runs every benchmark under scripts/bench/*.sh (each compares acpo with a peer measured in the
# same run on the same machine) and reports which ones failed.
# Usage: scripts/bench.sh [NAME...]   e.g. scripts/bench.sh engine data
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -gt 0 ]; then
  scripts=()
  for n in "$@"; do scripts+=("scripts/bench/$n.sh"); done
else
  scripts=(scripts/bench/*.sh)
fi
failed=()
for s in "${scripts[@]}"; do
  echo "=== $s ($(date -u +%H:%M:%S))"
  if ! bash "$s"; then
    failed+=("$s")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
