#!/usr/bin/env bash
# Checks of the Nix packaging that need no nixpkgs (run by scripts/test.sh, and in
# the build sandbox by the flake's checks.<system>.module-settings):
#
#  1. every .nix file parses (nix-instantiate --parse);
#  2. the cases of the pure helpers pass (nix/tests/environment.nix,
#     nix/tests/client-settings.nix), the VM test's Python script compiles, and
#     each helper's inputs are options the module declares;
#  3. module against server: every NIX_STORED_* variable the module can emit, or
#     that a Nix file or a Nix example in the README names, is listed by
#     `nix-stored --help`; every variable --help lists is reachable from the module
#     (typed option, `settings`, or a secret's file form); then the same comparison
#     against a doctored --help, which must fail, so this check is known to bite;
#  4. every nix.conf setting the client module emits is one the Nix client knows;
#  5. the client's post-build-hook (nix/upload-hook.sh, with the upload URL the client
#     helper computes) run by the real Nix client after a real build: it signs and
#     uploads the build to the real server (which checks the signature), and a
#     build still succeeds when the server is down. Needs a usable Nix store
#     (root on Debian with nix-bin, as scripts/test.sh runs it); --no-store skips
#     it, for the flake's build sandbox, which has none.
#
# Usage: scripts/check-nix.sh [--no-store] [SERVER-BINARY]
#   (default binary: target/debug/nix-stored, built by the cargo steps of scripts/test.sh)
set -euo pipefail
with_store=1
if [ "${1:-}" = --no-store ]; then
  with_store=0
  shift
fi
bin=$(realpath "${1:-$(dirname "$0")/../target/debug/nix-stored}")
cd "$(dirname "$0")/.."
if [ ! -x "$bin" ]; then
  echo "check-nix: no server binary at $bin (cargo build first, or pass its path)" >&2
  exit 1
fi
# Debian's nix-bin warns about a missing nixbld group on every call; nothing here
# builds anything.
export NIX_CONFIG="build-users-group =
${NIX_CONFIG:-}"

failures=0
fail() {
  echo "FAIL  $*" >&2
  failures=$((failures + 1))
}
# Pure evaluation: no store is opened, nothing is built or fetched.
nix_eval() { nix-instantiate --store dummy:// --eval --strict --json "$@"; }
# A JSON string of plain text (no quotes, backslashes only from \n) to its lines.
json_string_lines() { sed -e 's/^"//' -e 's/"$//' -e 's/\\n/\n/g'; }
# A JSON list of plain strings to one per line.
json_list_lines() { tr -d '[]"' | tr ',' '\n' | sed '/^$/d'; }
# Lines joined by spaces, for messages.
oneline() { tr '\n' ' ' <<<"$1" | sed 's/ *$//'; }

echo "== 1. every .nix file parses"
mapfile -t nix_files < <(find . -name '*.nix' -not -path './target/*' -not -path './.git/*' | sort)
[ "${#nix_files[@]}" -ge 8 ] || fail "only ${#nix_files[@]} .nix files found: ${nix_files[*]}"
for f in "${nix_files[@]}"; do
  if nix-instantiate --store dummy:// --parse "$f" >/dev/null; then
    echo "ok    $f"
  else
    fail "$f does not parse"
  fi
done

echo "== 2. pure helpers"
for cases in nix/tests/environment.nix nix/tests/client-settings.nix; do
  out=$(nix_eval "$cases") || out="(evaluation failed, error above)"
  if [ "$out" = "[]" ]; then
    echo "ok    $cases: every case passes"
  else
    fail "$cases: failing cases: $out"
  fi
done

# The VM test's Python script, as the test driver gets it (store paths replaced by
# placeholders: only nixpkgs could make them), must at least compile.
# shellcheck disable=SC2016 # Nix interpolation, not the shell's
vm_script=$(nix_eval -E '(import ./nix/tests/vm.nix {
    self = { };
    pkgs.writeText = name: text: "${builtins.storeDir}/00000000000000000000000000000000-${name}";
  }).testScript')
if python3 -c 'import json, sys; compile(json.loads(sys.stdin.read()), "testScript", "exec")' <<<"$vm_script"; then
  echo "ok    nix/tests/vm.nix: the test script compiles"
else
  fail "nix/tests/vm.nix: the test script is not valid Python"
fi

# The options a module declares directly below its options.<path> (nixfmt layout:
# four spaces, `name = mkOption`, `mkEnableOption` or the module's userOption).
declared_options() {
  grep -oE '^    [A-Za-z]+ = (mkOption|mkEnableOption|userOption)' "$1" | awk '{print $1}' | sort -u
  # Nested groups (`upload = {`) count by their name.
  grep -oE '^    [A-Za-z]+ = \{$' "$1" | awk '{print $1}'
}
# The inputs a helper requires (its arguments without a default).
helper_inputs() {
  nix_eval -E "builtins.attrNames (builtins.removeAttrs (builtins.functionArgs (import ./$1)) (builtins.filter (n: (builtins.functionArgs (import ./$1)).\${n}) (builtins.attrNames (builtins.functionArgs (import ./$1)))))" |
    json_list_lines
}
check_inputs() { # helper module [inputs supplied by the module itself]
  local helper=$1 module=$2
  shift 2
  local missing
  missing=$(comm -23 <(helper_inputs "$helper" | sort) <({
    declared_options "$module"
    printf '%s\n' "$@"
  } | sort -u))
  if [ -z "$missing" ]; then
    echo "ok    every input of $helper is an option of $module"
  else
    fail "$helper reads inputs $module does not declare: $missing"
  fi
}
check_inputs nix/environment.nix nix/module.nix
check_inputs nix/client-settings.nix nix/client.nix hook
defaults_vs_options=$(diff <(nix_eval -E 'builtins.attrNames (import ./nix/tests/module-defaults.nix)' | json_list_lines | sort) \
  <(declared_options nix/module.nix | grep -vxE 'enable|package' | sort) || true)
if [ -z "$defaults_vs_options" ]; then
  echo "ok    nix/tests/module-defaults.nix has exactly the options of nix/module.nix"
else
  fail "nix/tests/module-defaults.nix and nix/module.nix's options differ: $defaults_vs_options"
fi

echo "== 3. services.nix-stored against $bin --help"
help_vars=$({ "$bin" --help || true; } | { grep -oE '\[env: NIX_STORED_[A-Z0-9_]+' || true; } | sed 's/^\[env: //' | sort -u)
# A changed --help format must fail here, not compare against nothing.
if ! grep -qx NIX_STORED_PATH <<<"$help_vars" || ! grep -qx NIX_STORED_LISTEN_INTERFACE <<<"$help_vars"; then
  fail "$bin --help lists no [env: NIX_STORED_…] (got: $(oneline "$help_vars"))"
fi
echo "      --help lists $(wc -l <<<"$help_vars") variables"

reachability() { nix_eval nix/tests/reachability.nix --argstr helpVariables "$1" | json_string_lines; }
report=$(reachability "$help_vars") || report="FAIL  nix/tests/reachability.nix: evaluation failed (error above)"
echo "$report"
if grep -q '^FAIL' <<<"$report"; then
  fail "module and server disagree (lines above)"
fi

# Every NIX_STORED_* name written in the Nix files (outside the helper's cases,
# which name unknown variables on purpose) and in the README's nix examples.
mapfile -t scanned < <(printf '%s\n' "${nix_files[@]}" | grep -vxE '\./nix/tests/(environment|reachability)\.nix')
mapfile -t named < <({
  grep -ohE '\bNIX_STORED_[A-Z0-9_]*[A-Z0-9]' "${scanned[@]}" || true
  if [ -f README.md ]; then
    awk '/^```nix/{on=1; next} /^```/{on=0} on' README.md | grep -oE '\bNIX_STORED_[A-Z0-9_]*[A-Z0-9]' || true
  fi
} | sort -u)
unknown_named=$(comm -23 <(printf '%s\n' "${named[@]}") <(echo "$help_vars"))
if [ -z "$unknown_named" ]; then
  echo "ok    the ${#named[@]} NIX_STORED_* names in the Nix files and the README's nix examples are all in --help"
else
  fail "named in the Nix files or the README's nix examples but not in --help: $(oneline "$unknown_named")"
fi

# The check above must bite: a server that renamed NIX_STORED_PRIORITY, and one that
# added a secret without a file form, are both reported; a new ordinary setting
# is reachable through `settings` without touching the module.
doctored=$(grep -vx NIX_STORED_PRIORITY <<<"$help_vars"; echo NIX_STORED_SELFTEST_API_TOKEN; echo NIX_STORED_SELFTEST_NEW_SETTING)
doctored_report=$(reachability "$doctored")
if grep -q '^FAIL  NIX_STORED_PRIORITY: emitted by services.nix-stored but not in' <<<"$doctored_report" &&
  grep -q '^FAIL  NIX_STORED_SELFTEST_API_TOKEN: named like a secret' <<<"$doctored_report" &&
  grep -q '^ok    NIX_STORED_SELFTEST_NEW_SETTING: services.nix-stored.settings' <<<"$doctored_report"; then
  echo "ok    a doctored --help (renamed setting, secret without a file form, new setting) is judged as it should be"
else
  fail "the drift check does not catch a doctored --help:"$'\n'"$doctored_report"
fi

echo "== 4. services.nix-stored-client against the Nix client's settings"
nix_settings=$(mktemp)
trap 'rm -f "$nix_settings"' EXIT
nix --extra-experimental-features nix-command config show --json >"$nix_settings" 2>/dev/null ||
  nix --extra-experimental-features nix-command show-config --json >"$nix_settings"
known_settings=$(nix_eval --argstr file "$nix_settings" -E '{ file }: builtins.attrNames (builtins.fromJSON (builtins.readFile file))' | json_list_lines | sort)
grep -qx substituters <<<"$known_settings" || fail "could not read the Nix client's settings"
client_settings=$(nix_eval -E 'builtins.attrNames (import ./nix/client-settings.nix {
    url = "http://cache.example.org:8100";
    publicKeys = [ "laptop-1:0rkO2+8QV3zuiYpwv3F3ShwUhAcQzZdy9TiIQkbBmnY=" ];
    netrcFile = "/run/agenix/netrc";
    upload = { enable = true; secretKeyFile = "/run/agenix/key"; compression = "zstd"; };
    hook = "/nix/store/00000000000000000000000000000000-hook";
  }).settings' | json_list_lines | sort)
[ "$(wc -l <<<"$client_settings")" -ge 5 ] || fail "the client helper emitted only: $client_settings"
unknown_settings=$(comm -23 <(echo "$client_settings") <(echo "$known_settings"))
if [ -z "$unknown_settings" ]; then
  echo "ok    $(oneline "$client_settings") are settings of $(nix --version)"
else
  fail "nix.settings the client module emits that $(nix --version) does not know: $unknown_settings"
fi

echo "== 5. the client's post-build-hook, run by the real Nix client, against the real server"
if [ "$with_store" = 0 ]; then
  echo "      skipped (--no-store)"
else
  work=$(mktemp -d)
  server_pid=
  cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work" "$nix_settings"
  }
  trap cleanup EXIT
  start_server() {
    NIX_STORED_PATH=$work/cache NIX_STORED_LISTEN_INTERFACE=127.0.0.1:0 \
      NIX_STORED_USER_WRITE=writer NIX_STORED_USER_WRITE_PASSFILE=$work/write-password \
      NIX_STORED_TRUSTED_PUBLIC_KEYS="$(cat "$work/signing-key.pub")" \
      "$bin" 2>>"$work/server.log" &
    server_pid=$!
    for _ in $(seq 100); do
      addr=$(grep -oE 'listening on http://[0-9.]+:[0-9]+' "$work/server.log" | tail -1 | sed 's|.*http://||' || true)
      [ -n "$addr" ] && return 0
      sleep 0.1
    done
    fail "the server did not start: $(cat "$work/server.log")"
    return 1
  }
  # Nix as in the cargo tests: its own configuration and client-side cache, no
  # sandbox (the builder is the static busybox), root using /nix/store directly.
  mkdir -p "$work/conf" "$work/cache"
  nix-store --generate-binary-cache-key check-nix-1 "$work/signing-key" "$work/signing-key.pub"
  head -c 18 /dev/urandom | base64 >"$work/write-password"
  if start_server; then
    echo "machine 127.0.0.1 login writer password $(cat "$work/write-password")" >"$work/netrc"
    upload_url=$(nix_eval -E "(import ./nix/client-settings.nix {
        url = \"http://$addr\";
        publicKeys = [ ];
        netrcFile = \"$work/netrc\";
        upload = { enable = true; secretKeyFile = \"$work/signing-key\"; compression = \"zstd\"; };
        hook = null;
      }).uploadUrl" | json_string_lines)
    # What nix/client.nix's wrapper does, with this machine's nix.
    printf '#!/bin/sh\nexec bash %q %q %q\n' "$PWD/nix/upload-hook.sh" "$(dirname "$(command -v nix)")" "$upload_url" >"$work/hook"
    chmod +x "$work/hook"
    cat >"$work/conf/nix.conf" <<CONF
build-users-group =
sandbox = false
substituters =
post-build-hook = $work/hook
secret-key-files = $work/signing-key
netrc-file = $work/netrc
CONF
    cat >"$work/build.nix" <<'NIX'
{ tag }:
derivation {
  name = "nix-stored-check-nix-${tag}";
  system = builtins.currentSystem;
  builder = "/bin/busybox";
  args = [ "sh" "-c" "echo built for check-nix ${tag} > $out" ];
}
NIX
    build() {
      NIX_CONF_DIR=$work/conf XDG_CACHE_HOME=$work/xdg \
        nix-build --no-out-link "$work/build.nix" --argstr tag "$1" 2>"$work/build-$1.log"
    }
    tag="t$$x$(date +%s%N)"
    if out=$(build "$tag"); then
      narinfo="$work/cache/$(basename "$out" | cut -c1-32).narinfo"
      if [ -f "$narinfo" ] && grep -qx "StorePath: $out" "$narinfo" && grep -q '^Sig: check-nix-1:' "$narinfo"; then
        echo "ok    a build is signed and uploaded by the hook, and the server (trusting only that key) took it"
      else
        fail "the hook did not upload $out: $(cat "$work/build-$tag.log" "$work/server.log")"
      fi
      nix-store --delete "$out" >/dev/null 2>&1 || true
    else
      fail "the build with the hook failed: $(cat "$work/build-$tag.log")"
    fi
    kill "$server_pid"
    wait "$server_pid" || true
    server_pid=
    if out=$(build "${tag}down"); then
      if grep -q "nix-stored: uploading $out to http://$addr failed" "$work/build-${tag}down.log"; then
        echo "ok    with the server down the build succeeds and the hook logs the failed upload"
      else
        fail "no upload failure logged with the server down: $(cat "$work/build-${tag}down.log")"
      fi
      nix-store --delete "$out" >/dev/null 2>&1 || true
    else
      fail "a build failed because the server was down: $(cat "$work/build-${tag}down.log")"
    fi
  fi
fi

if [ "$failures" -ne 0 ]; then
  echo "check-nix: $failures failure(s)" >&2
  exit 1
fi
echo "check-nix: all passed"
