#!/usr/bin/env bash
# Crates compiled into the server (normal dependencies, every version counted once),
# for the default build and for the lean one (--no-default-features): the figures
# of README.md's "Dependencies" section.
set -euo pipefail
cd "$(dirname "$0")/.."

count() {
  cargo tree -e normal --prefix none --no-dedupe "$@" | sed 's/ (\*)$//' | sort -u | wc -l
}
echo "default: $(count)"
echo "no-default-features: $(count --no-default-features)"
