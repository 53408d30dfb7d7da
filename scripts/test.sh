#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine (run as root): installs the real
# Nix client the end-to-end tests drive, then formatting, lints and every test.
#
#   --full            the long robustness run (NIX_STORED_ROBUST_FULL=1: bigger
#                     uploads in the crash loop, the ten-minute soak, 10x the
#                     generated inputs)
#   --allow-no-mount  let the full-disk test skip when it cannot mount its tmpfs
#                     (it fails otherwise)
set -euo pipefail
cd "$(dirname "$0")/.."

export NIX_STORED_REQUIRE_MOUNT=1
for arg in "$@"; do
  case "$arg" in
    --full) export NIX_STORED_ROBUST_FULL=1 ;;
    --allow-no-mount) export NIX_STORED_REQUIRE_MOUNT=0 ;;
    *) echo "usage: $0 [--full] [--allow-no-mount]" >&2; exit 2 ;;
  esac
done

if ! command -v nix >/dev/null || [ ! -x /bin/busybox ] || ! command -v curl >/dev/null ||
  ! command -v openssl >/dev/null || ! command -v nginx >/dev/null || ! command -v caddy >/dev/null ||
  ! command -v chromium >/dev/null; then
  apt-get update
  # --no-install-recommends: the recommended nix-setup-systemd brings a daemon and
  # build users the tests do not want; as root, Nix uses /nix/store directly.
  # curl and openssl: the HTTPS tests make certificates and speak HTTP/2 with them.
  # nginx-light and caddy: tests/proxy.rs runs deploy/nginx.conf and deploy/Caddyfile
  # in front of the server (each test starts its own; the packages' services are not used).
  # chromium: tests/page.rs renders the cache's page headless and takes screenshots.
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nix-bin busybox-static \
    curl openssl nginx-light caddy chromium
fi
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done

# The second Nix client, Debian 13's Nix 2.26 in a chroot cached under
# /var/cache/nix-stored-test (about 1.5 minutes the first time, a second after):
# every real-Nix test runs with it as <test>::nix_2_26 next to the host's 2.8.
NIX_STORED_TEST_NIX_CHROOT=$(bash scripts/nix-chroot.sh)
export NIX_STORED_TEST_NIX_CHROOT

cargo fmt --check
# Supply-chain policy (deny.toml): licences by name, crates.io only, no second crypto
# stack, no avoidable duplicate versions. cargo-deny from crates.io when missing
# (about 2 minutes on 2 cores, once).
command -v cargo-deny >/dev/null || cargo install cargo-deny --locked
cargo deny check bans licenses sources
# Both builds: the default (S3 and HTTPS) and the lean directory-only HTTP server.
cargo clippy --all-targets -- -D warnings
cargo clippy --all-targets --no-default-features -- -D warnings
# The Nix tests fail instead of skipping when nix (or the chroot) is missing, the proxy
# tests when nginx or caddy is, and the large (2 GiB) round trips are part of the suite. The robustness tests
# (tests/robustness/) print their figures, "robustness: <test>: …", on stderr.
NIX_STORED_REQUIRE_NIX=1 NIX_STORED_REQUIRE_PROXIES=1 NIX_STORED_LARGE_TESTS=1 cargo test

# The same black-box tests against the S3 backend, on one Garage for the whole run
# (scripts/garage.sh installs Garage when missing); every server gets a fresh prefix
# of its bucket.
garage_dir=$(mktemp -d "${TMPDIR:-/tmp}/nix-stored-garage.XXXXXX")
# On failure, Garage's own log says whether the store was the problem.
trap 'rc=$?; [ $rc = 0 ] || grep -v -E "INFO|DEBUG" "$garage_dir/garage.log" | grep -i -E "signal|shut|panic|error|warn" | tail -n 30 >&2 || true; bash scripts/garage.sh stop "$garage_dir"' EXIT
GARAGE_LOG=${GARAGE_LOG:-info} bash scripts/garage.sh start "$garage_dir" >"$garage_dir.env"
while IFS='=' read -r name value; do
  export "$name=$value"
done <"$garage_dir.env"
rm -f "$garage_dir.env"
NIX_STORED_TEST_BACKEND=s3 NIX_STORED_REQUIRE_NIX=1 NIX_STORED_REQUIRE_PROXIES=1 NIX_STORED_LARGE_TESTS=1 \
  cargo test --test protocol --test integrity --test auth --test retention --test nix_roundtrip --test upstream

# The OpenAPI document against the live server, with schemathesis from PyPI.
bash scripts/conformance.sh target/debug/nix-stored

# The Nix packaging, as far as it can be checked without nixpkgs: every .nix file
# parses, the module's pure helpers pass their cases, and the variables the NixOS
# module sets match the settings of the binary cargo just built (its --help).
bash scripts/check-nix.sh target/debug/nix-stored

# The benchmark harness in its one-second-per-workload mode, so it never rots. It
# fails only when the harness or a server breaks, never on a missed target.
bench/run.sh --quick --out "${TMPDIR:-/tmp}/nix-stored-bench-quick.md"

# The lean build (--no-default-features: no S3, no HTTPS) through the directory
# backend's black-box tests, and its refusal of S3 and HTTPS settings (tests/config.rs).
# Last, because it replaces target/debug/nix-stored with the lean binary.
cargo test --no-default-features --test protocol --test integrity --test auth --test config
