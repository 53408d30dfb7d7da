#!/usr/bin/env bash
# Runs schemathesis (from PyPI) against a live server with the server's own OpenAPI
# document: every operation, every check except `positive_data_acceptance` (a
# schema-valid narinfo or NAR is not a verified one: a narinfo must point at a stored
# NAR and a NAR must hash to its name, which JSON Schema cannot express, so the server
# rightly answers 400). Twice: anonymous uploads on loopback, and with read and write users.
#
#   scripts/conformance.sh [path/to/nix-stored]   (default: target/debug/nix-stored)
#   CONFORMANCE_EXAMPLES=500 scripts/conformance.sh   for a longer run
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/debug/nix-stored}
EXAMPLES=${CONFORMANCE_EXAMPLES:-40}
VENV=${CONFORMANCE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/nix-stored/schemathesis-venv}
SCHEMATHESIS_VERSION=4.32.5

if [ ! -x "$VENV/bin/st" ] || ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  command -v python3 >/dev/null || { apt-get update && apt-get install -y python3 python3-venv; }
  python3 -m venv "$VENV" 2>/dev/null || { apt-get update && apt-get install -y python3-venv && python3 -m venv "$VENV"; }
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# Starts the server with extra environment ($@), sets $pid and $url. The page is on:
# the OpenAPI document describes its API too.
start() {
  rm -rf "$work/cache" && mkdir -p "$work/cache"
  env -i PATH="$PATH" NIX_STORED_PATH="$work/cache" NIX_STORED_LISTEN_INTERFACE=127.0.0.1:0 \
    NIX_STORED_LOG_LEVEL=warning NIX_STORED_PAGE=true "$@" "$BIN" 2>"$work/server.log" &
  pid=$!
  url=
  for _ in $(seq 100); do
    url=$(ss -ltnpH 2>/dev/null | awk -v p="pid=$pid," 'index($0, p) {print $4; exit}')
    [ -n "$url" ] && break
    sleep 0.1
  done
  [ -n "$url" ] || { cat "$work/server.log"; echo "conformance: the server did not start" >&2; exit 1; }
  url="http://$url"
}

stop() {
  kill "$pid" && wait "$pid" || true
  pid=
  # The checks send hostile input: the server must not have panicked or failed.
  if grep -E "panicked|ERROR" "$work/server.log"; then
    echo "conformance: the server logged errors (above)" >&2
    exit 1
  fi
}

run() {
  local name=$1
  shift
  echo "conformance: $name"
  "$VENV/bin/st" --no-color run "$url/openapi.json" --checks all --exclude-checks positive_data_acceptance \
    --max-examples "$EXAMPLES" --workers 1 --seed 1 "$@" 2>&1 | tee "$work/st.log" | tail -25
  local status=${PIPESTATUS[0]}
  [ "$status" -eq 0 ] || { echo "conformance: $name: schemathesis found violations" >&2; exit 1; }
}

start NIX_STORED_ANONYMOUS_WRITES=true
run "anonymous on loopback"
stop

start NIX_STORED_USER_READ=reader NIX_STORED_USER_READ_PASS=read-secret \
  NIX_STORED_USER_WRITE=writer NIX_STORED_USER_WRITE_PASS=write-secret
run "read and write users" --auth writer:write-secret
stop
echo "conformance: 2 runs, 0 violations"
