#!/usr/bin/env bash
# A throw-away single-node Garage (S3-compatible object store) for the tests and the
# benchmark of the S3 backend.
#
#   scripts/garage.sh start DIR [WATCH_PID]
#       Installs Garage 2.5.0 into ~/.cargo/bin when missing, starts a node whose
#       data, metadata and config live in DIR (created; ports on 127.0.0.1 picked
#       free), applies a one-node layout, creates a key and a bucket, and prints
#       shell assignments for the tests on stdout:
#         NIX_STORED_TEST_S3_ENDPOINT=http://127.0.0.1:PORT
#         NIX_STORED_TEST_S3_REGION=garage
#         NIX_STORED_TEST_S3_BUCKET=nix-stored-test
#         NIX_STORED_TEST_S3_KEY_ID=GK…
#         NIX_STORED_TEST_S3_SECRET=…
#         NIX_STORED_TEST_GARAGE_DIR=DIR
#       With WATCH_PID, Garage is stopped (and DIR removed) once that process ends,
#       so a test binary that started it leaves nothing behind.
#   scripts/garage.sh stop DIR
#       Stops the node started in DIR and removes DIR.
set -euo pipefail

GARAGE_VERSION=2.5.0
BUCKET=nix-stored-test
REGION=garage

garage_bin() {
  local bin="$HOME/.cargo/bin/garage"
  if ! "$bin" --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
    echo "garage.sh: installing Garage $GARAGE_VERSION (cargo install, once)" >&2
    cargo install garage --locked --version "$GARAGE_VERSION" >&2
  fi
  echo "$bin"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop() {
  local dir=$1
  if [ -f "$dir/garage.pid" ]; then
    local pid
    pid=$(cat "$dir/garage.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    # Only a Garage that is still there: its pid may already be another process's.
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  fi
  if [ -f "$dir/watcher.pid" ]; then
    kill "$(cat "$dir/watcher.pid")" 2>/dev/null || true
  fi
  rm -rf "$dir"
}

start() {
  local dir=$1 watch_pid=${2:-}
  local bin
  bin=$(garage_bin)
  mkdir -p "$dir/meta" "$dir/data"
  dir=$(cd "$dir" && pwd)
  local rpc_port s3_port admin_port
  rpc_port=$(free_port)
  s3_port=$(free_port)
  admin_port=$(free_port)
  cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(openssl rand -hex 32)"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$s3_port"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
EOF
  chmod 600 "$dir/garage.toml"
  local g=("$bin" -c "$dir/garage.toml")
  RUST_LOG=${GARAGE_LOG:-warn} setsid "${g[@]}" server >"$dir/garage.log" 2>&1 </dev/null &
  echo $! >"$dir/garage.pid"
  local node=""
  for _ in $(seq 100); do
    # `node id` reads the key on disk; `status` proves the daemon answers RPC.
    if "${g[@]}" status >/dev/null 2>&1 && node=$("${g[@]}" node id -q 2>/dev/null); then
      break
    fi
    node=
    if ! kill -0 "$(cat "$dir/garage.pid")" 2>/dev/null; then
      echo "garage.sh: Garage exited; its log:" >&2
      cat "$dir/garage.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  if [ -z "$node" ]; then
    echo "garage.sh: Garage did not answer; its log:" >&2
    cat "$dir/garage.log" >&2
    stop "$dir"
    exit 1
  fi
  "${g[@]}" layout assign -z dc1 -c 1G "${node%%@*}" >/dev/null
  "${g[@]}" layout apply --version 1 >/dev/null
  local key
  key=$("${g[@]}" key create nix-stored-test)
  local key_id secret
  key_id=$(awk '/Key ID:/ {print $3}' <<<"$key")
  secret=$(awk '/Secret key:/ {print $3}' <<<"$key")
  # The bucket needs the layout to be live; retry briefly while it settles.
  for _ in $(seq 50); do
    "${g[@]}" bucket create "$BUCKET" >/dev/null 2>&1 && break
    sleep 0.1
  done
  "${g[@]}" bucket allow --read --write --owner "$BUCKET" --key "$key_id" >/dev/null
  if [ -n "$watch_pid" ]; then
    # Stops Garage once the process that asked for it is gone.
    (
      while kill -0 "$watch_pid" 2>/dev/null; do sleep 1; done
      rm -f "$dir/watcher.pid"
      stop "$dir"
    ) >/dev/null 2>&1 </dev/null &
    echo $! >"$dir/watcher.pid"
  fi
  cat <<EOF
NIX_STORED_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port
NIX_STORED_TEST_S3_REGION=$REGION
NIX_STORED_TEST_S3_BUCKET=$BUCKET
NIX_STORED_TEST_S3_KEY_ID=$key_id
NIX_STORED_TEST_S3_SECRET=$secret
NIX_STORED_TEST_GARAGE_DIR=$dir
EOF
}

case "${1:-}" in
  start) start "${2:?directory}" "${3:-}" ;;
  stop) stop "${2:?directory}" ;;
  *)
    echo "usage: $0 start DIR [WATCH_PID] | stop DIR" >&2
    exit 2
    ;;
esac
