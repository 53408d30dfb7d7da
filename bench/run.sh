#!/usr/bin/env bash
# Side-by-side benchmark: nix-stored against nginx (and harmonia with HARMONIA_BIN) on
# one synthetic cache, on a fresh Debian machine (run as root).
#
#   bench/run.sh [--quick] [--n N] [--runs R] [--duration S] [--growth 1000,100000,1000000]
#                [--e2e-paths P] [--only main,growth,e2e] [--out FILE] [--chart FILE] [--keep]
#   bench/run.sh --gc [--quick] [--paths 100000,1000000] [--runs R] [--duration S] [--work DIR]
#
# Installs wrk and nginx (and nix-bin for the end-to-end workload) from Debian when
# missing, matplotlib from PyPI into bench/.venv for the chart, builds nix-stored in
# release mode, then runs bench/bench.py, which writes bench/RESULTS.md and
# bench/ratios.png. --quick (about a second per workload) is part of the test suite:
# it exits non-zero only when the harness or a server breaks, never on a missed target.
#
# --gc runs the retention benchmark instead (bench/retention.py: passes over 100k and
# 1M paths, peak RSS, narinfo throughput while a pass runs), which replaces only the
# Retention section of bench/RESULTS.md; its caches stay in /var/tmp/nix-stored-gcbench
# (or /dev/shm when the disk is short of room) for the next run. --quick runs it at
# 100k paths after the other workloads.
set -euo pipefail
cd "$(dirname "$0")/.."

gc=0
for a in "$@"; do [ "$a" = --gc ] && gc=1; done
if [ $gc = 1 ]; then
  args=()
  for a in "$@"; do [ "$a" = --gc ] || args+=("$a"); done
  command -v taskset >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y util-linux; }
  cargo build --release --quiet
  exec python3 bench/retention.py "${args[@]}"
fi

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx)
command -v taskset >/dev/null || need+=(util-linux)
# --no-install-recommends: the recommended nix-setup-systemd brings a daemon and build
# users that are not wanted; as root, Nix uses /nix/store directly.
command -v nix >/dev/null || need+=(nix-bin)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi

# The chart only: without matplotlib the figures are still written (RESULTS.md says so).
venv=bench/.venv
if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
  rm -rf "$venv"
  { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet matplotlib; } ||
    echo "bench/run.sh: warning: could not install matplotlib into $venv: no chart" >&2
fi

cargo build --release --quiet
if [[ " $* " != *" --quick "* ]]; then
  exec python3 bench/bench.py --chart-python "$venv/bin/python" "$@"
fi
# --quick runs the retention benchmark too, at 100k paths (about a minute, the first
# time 15 s more to write the cache), into the same report.
python3 bench/bench.py --chart-python "$venv/bin/python" "$@"
out=()
prev=
for a in "$@"; do
  [ "$prev" = --out ] && out=(--out "$a")
  case $a in --out=*) out=(--out "${a#--out=}") ;; esac
  prev=$a
done
exec python3 bench/retention.py --quick "${out[@]}"
