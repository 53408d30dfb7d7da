#!/usr/bin/env bash
# Focused upload benchmark: times `curl -T` PUTs of one ~256 MiB NAR (a dump of
# files from /usr/lib, so it compresses like real store paths), uncompressed, as
# xz -6 and as zstd -3, against each given nix-stored binary on loopback, each PUT
# on a fresh cache directory. Prints one line per PUT; runs the binaries in turn,
# REPS times each, so that load from elsewhere spreads over all of them.
#
#   bench/nar_put.sh [-r REPS] LABEL=BINARY...
#   e.g. bench/nar_put.sh -r 3 before=/tmp/nix-stored-main after=target/release/nix-stored
set -euo pipefail
reps=3
if [ "${1:-}" = "-r" ]; then reps=$2; shift 2; fi
[ $# -ge 1 ] || { echo "usage: $0 [-r REPS] LABEL=BINARY..." >&2; exit 2; }
work=${NAR_PUT_WORK:-/tmp/nix-stored-nar-put}
mkdir -p "$work"
cd "$work"
if [ ! -f tree.nar ]; then
  python3 - <<'PY'
import os, shutil
src, dst, total = '/usr/lib/x86_64-linux-gnu', 'tree', 0
for root, dirs, files in sorted(os.walk(src)):
    dirs.sort()
    for f in sorted(files):
        p = os.path.join(root, f)
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        if total + os.path.getsize(p) > 256 << 20:
            continue
        rel = os.path.relpath(p, src)
        os.makedirs(os.path.join(dst, os.path.dirname(rel)), exist_ok=True)
        shutil.copyfile(p, os.path.join(dst, rel))
        total += os.path.getsize(p)
PY
  nix-store --dump tree >tree.nar.tmp && mv tree.nar.tmp tree.nar
fi
[ -f tree.nar.xz ] || xz -6 -T2 -k tree.nar
[ -f tree.nar.zst ] || zstd -3 -q tree.nar -o tree.nar.zst
nar_size=$(stat -c %s tree.nar)
port=$((20000 + RANDOM % 10000))
for f in tree.nar tree.nar.xz tree.nar.zst; do
  ext=${f#tree.nar}
  fh=$(nix-hash --type sha256 --flat --base32 "$f")
  size=$(stat -c %s "$f")
  for r in $(seq "$reps"); do
    for arg in "$@"; do
      label=${arg%%=*}; bin=${arg#*=}
      dir=$(mktemp -d "$work/store.XXXX")
      "$bin" --path "$dir" --listen-interface "127.0.0.1:$port" --log-level warn >/dev/null 2>&1 &
      pid=$!
      for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/nix-cache-info" >/dev/null && break; sleep 0.1; done
      out=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' -T "$f" "http://127.0.0.1:$port/nar/$fh.nar$ext")
      t=${out#* }
      echo "$label $f rep$r status=${out% *} time=${t}s file=$((size >> 20))MiB" \
        "file_MBps=$(python3 -c "print(round($size/1e6/$t))")" \
        "nar_MBps=$(python3 -c "print(round($nar_size/1e6/$t))")"
      kill "$pid"; wait "$pid" 2>/dev/null || true
      rm -rf "$dir"
    done
  done
done
