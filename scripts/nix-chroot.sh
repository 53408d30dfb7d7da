#!/usr/bin/env bash
# A second Nix client for the end-to-end tests: Debian 13 (trixie) with its Nix 2.26
# in a chroot, next to the host's Debian 12 Nix 2.8 (run as root).
#
#   scripts/nix-chroot.sh [DIR]
#       Prepares the chroot in DIR (default /var/cache/nix-stored-test/trixie) and
#       prints DIR on stdout. Building it from scratch (debootstrap, then nix-bin,
#       about 420 MB) takes one to three minutes with a fast mirror; it is reused on later runs once complete (the
#       stamp DIR/.nix-stored-complete is written last, a DIR without it is rebuilt).
#       Mounts proc and /dev inside when not mounted yet, so calling it again is
#       harmless.
#   scripts/nix-chroot.sh umount [DIR]
#       Unmounts what the first form mounted.
#
# Inside, Nix is single-user (no build users, no sandbox, no substituters) and the
# network is the host's, so the client reaches test servers on 127.0.0.1. Run
# commands in it with
#   chroot DIR /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root bash -c '…'
set -euo pipefail

DEFAULT_DIR=/var/cache/nix-stored-test/trixie
MIRROR=http://deb.debian.org/debian
STAMP=.nix-stored-complete

# True when something is mounted on $1 or below it: a directory in that state must
# never be removed, as the /dev bind would take the host's device nodes with it.
mounted_below() {
  local dir
  dir=$(realpath -m "$1")
  awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { found = 1 } END { exit !found }' /proc/self/mounts
}

unmount_all() {
  local dir=$1 target
  for target in "$dir/dev" "$dir/proc" "$dir/sys"; do
    if mountpoint -q "$target"; then
      # rslave first: unmounting the recursive bind must not propagate to the host's /dev.
      mount --make-rslave "$target" 2>/dev/null || true
      umount -R "$target" 2>/dev/null || umount -R -l "$target"
    fi
  done
  if mounted_below "$dir"; then
    echo "nix-chroot.sh: mounts remain below $dir:" >&2
    awk -v d="$dir" 'index($2, d) == 1 { print $2 }' /proc/self/mounts >&2
    return 1
  fi
}

mount_all() {
  local dir=$1
  mkdir -p "$dir/proc" "$dir/dev"
  mountpoint -q "$dir/proc" || mount -t proc proc "$dir/proc"
  if ! mountpoint -q "$dir/dev"; then
    mount --rbind /dev "$dir/dev"
    mount --make-rslave "$dir/dev"
  fi
}

in_chroot() {
  local dir=$1
  shift
  chroot "$dir" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    DEBIAN_FRONTEND=noninteractive LC_ALL=C bash -c "$*"
}

build() {
  local dir=$1
  if ! command -v debootstrap >/dev/null; then
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap >&2
  fi
  if [ -e "$dir" ]; then
    unmount_all "$dir"
    # --one-file-system: a last guard should a mount have appeared meanwhile.
    rm -rf --one-file-system "$dir"
  fi
  mkdir -p "$(dirname "$dir")"
  echo "nix-chroot.sh: debootstrap trixie into $dir (one to three minutes, once)" >&2
  debootstrap --variant=minbase trixie "$dir" "$MIRROR" >&2
  mount_all "$dir"
  cp /etc/resolv.conf "$dir/etc/resolv.conf"
  # --no-install-recommends: nix-bin recommends nix-setup-systemd, which pulls systemd.
  in_chroot "$dir" 'apt-get update && apt-get install -y --no-install-recommends \
    nix-bin busybox-static curl ca-certificates xz-utils zstd && apt-get clean' >&2
  mkdir -p "$dir/etc/nix"
  # Single-user, like the host's Nix as root: the store belongs to root, no build
  # users, no sandbox (no namespaces needed), and nothing substituted unless a test
  # names its server.
  cat >"$dir/etc/nix/nix.conf" <<'EOF'
build-users-group =
sandbox = false
experimental-features = nix-command flakes
substituters =
EOF
  in_chroot "$dir" 'nix-store --init && nix --version' >&2
  touch "$dir/$STAMP"
}

cmd=prepare
case "${1:-}" in
  umount) cmd=umount; shift ;;
  -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
esac
dir=$(realpath -m "${1:-$DEFAULT_DIR}")
if [ "$(id -u)" != 0 ]; then
  echo "nix-chroot.sh: must run as root (debootstrap, chroot, mount)" >&2
  exit 1
fi

mkdir -p "$(dirname "$dir")"
# One preparer at a time: two test binaries may ask for the chroot together.
exec 9>"$dir.lock"
flock 9
case "$cmd" in
  umount) if [ -d "$dir" ]; then unmount_all "$dir"; fi ;;
  prepare)
    [ -f "$dir/$STAMP" ] || build "$dir"
    mount_all "$dir"
    echo "$dir"
    ;;
esac
