#!/usr/bin/env bash
# The side-by-side load harness: Mosquitto, HAProxy (TLS, TCP mode) and moat
# on loopback, measured with the same load; results written into
# docs/benchmarks.md and docs/bench-raw.json. About 9 minutes on 2 cores.
# Installs mosquitto and haproxy (Debian packages) when missing.
#   bash scripts/bench.sh            full run
#   bash scripts/bench.sh -smoke     seconds, writes nothing
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/sbin"
need=()
command -v mosquitto >/dev/null || need+=(mosquitto)
command -v haproxy >/dev/null || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
if [ "${1:-}" = "-smoke" ]; then
  exec go run ./bench "$@"
fi
exec go run ./bench -reps 3 -goal-reps 5 -out docs/benchmarks.md -raw docs/bench-raw.json "$@"
