#!/usr/bin/env bash
# Side-by-side benchmark: nix-stored against nginx on one synthetic cache.
# Usage: bench/run.sh [--quick] [--paths N] [--runs R] [--duration SECONDS] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk nginx
fi
cargo build --release --quiet
exec python3 bench/bench.py "$@"
