#!/usr/bin/env bash
# The post-build-hook of services.nix-stored-client (nix/client.nix):
#   upload-hook.sh NIX-BIN-DIR STORE-URL
# Nix runs it, as the user doing the build (root for the daemon), after every
# successful build, with the built store paths in OUT_PATHS (space-separated), the
# derivation in DRV_PATH and its own settings in NIX_CONFIG (so `nix copy` uses the
# same netrc-file). Nix waits for it and fails the build when it fails: an
# unreachable cache must only cost a log line, so this never fails.
set -u
bin=$1
url=$2
paths=()
if [ -n "${OUT_PATHS:-}" ]; then
  read -r -a paths <<<"$OUT_PATHS"
elif [ -n "${DRV_PATH:-}" ]; then
  # Some Nix releases pass an empty OUT_PATHS (2.8.0, NixOS/nix#6446; 2.30-2.31 on
  # rebuilds, NixOS/nix#14287): the derivation's outputs are what was built.
  mapfile -t paths < <("$bin/nix-store" --query --outputs "$DRV_PATH")
fi
if [ "${#paths[@]}" -eq 0 ]; then
  exit 0
fi
if ! "$bin/nix" --extra-experimental-features nix-command copy \
  --option connect-timeout 15 --to "$url" "${paths[@]}"; then
  echo "nix-stored: uploading ${paths[*]} to ${url%%\?*} failed; the build result is kept locally" >&2
fi
exit 0
