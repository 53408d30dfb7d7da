#!/usr/bin/env bash
# Checks of the Nix packaging that need no nixpkgs (run by scripts/test.sh, and in
# the build sandbox by the flake's checks.<system>.module-settings):
#
#  1. every .nix file parses (nix-instantiate --parse);
#  2. the cases of the pure helpers pass (nix/tests/environment.nix,
#     nix/tests/client-settings.nix), and each helper's inputs are options the
#     module declares;
#  3. module against server: every NIX_STORED_* variable the module can emit, or
#     that a Nix file or a Nix example in the README names, is listed by
#     `nix-stored --help`; every variable --help lists is reachable from the module
#     (typed option, `settings`, or a secret's file form); then the same comparison
#     against a doctored --help, which must fail, so this check is known to bite;
#  4. every nix.conf setting the client module emits is one the Nix client knows.
#
# Usage: scripts/check-nix.sh [SERVER-BINARY]   (default: target/debug/nix-stored,
# built by the cargo steps of scripts/test.sh)
set -euo pipefail
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
  out=$(nix_eval "$cases")
  if [ "$out" = "[]" ]; then
    echo "ok    $cases: every case passes"
  else
    fail "$cases: failing cases: $out"
  fi
done

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
  fail "$bin --help lists no [env: NIX_STORED_…] (got: $(echo $help_vars))"
fi
echo "      --help lists $(wc -l <<<"$help_vars") variables"

reachability() { nix_eval nix/tests/reachability.nix --argstr helpVariables "$1" | json_string_lines; }
report=$(reachability "$help_vars")
echo "$report"
if grep -q '^FAIL' <<<"$report"; then
  fail "module and server disagree (lines above)"
fi

# Every NIX_STORED_* name written in the Nix files (outside the helper's cases,
# which name unknown variables on purpose) and in the README's nix examples.
mapfile -t named < <({
  grep -ohE '\bNIX_STORED_[A-Z0-9_]*[A-Z0-9]' flake.nix $(printf '%s\n' "${nix_files[@]}" | grep -vxE '\./nix/tests/(environment|reachability)\.nix') || true
  if [ -f README.md ]; then
    awk '/^```nix/{on=1; next} /^```/{on=0} on' README.md | grep -oE '\bNIX_STORED_[A-Z0-9_]*[A-Z0-9]' || true
  fi
} | sort -u)
unknown_named=$(comm -23 <(printf '%s\n' "${named[@]}") <(echo "$help_vars"))
if [ -z "$unknown_named" ]; then
  echo "ok    the ${#named[@]} NIX_STORED_* names in the Nix files and the README's nix examples are all in --help"
else
  fail "named in the Nix files or the README's nix examples but not in --help: $(echo $unknown_named)"
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
  echo "ok    $(echo $client_settings) are settings of $(nix --version)"
else
  fail "nix.settings the client module emits that $(nix --version) does not know: $unknown_settings"
fi

if [ "$failures" -ne 0 ]; then
  echo "check-nix: $failures failure(s)" >&2
  exit 1
fi
echo "check-nix: all passed"
