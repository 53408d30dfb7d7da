# Drift between services.nix-stored and the server, for scripts/check-nix.sh:
#   nix-instantiate --eval --strict --json nix/tests/reachability.nix \
#     --argstr helpVariables "$(the NIX_STORED_* names `nix-stored --help` lists)"
# evaluates to a report, one line per finding; lines starting with FAIL are errors:
#   - a variable the module can emit (every typed option set) that the server does
#     not list, or one emitted without an entry in the helper's `owners` table;
#   - a variable the server lists that the module cannot set: each must be owned by
#     a typed option, pass through `settings`, or, when named like a secret (which
#     `settings` refuses), have a file form (…FILE / …_FILE) the server lists, to be
#     pointed at a LoadCredential= file.
{ helpVariables }:
let
  inherit (builtins)
    any
    attrNames
    concatStringsSep
    elem
    filter
    head
    isString
    map
    match
    split
    ;
  compute = import ../environment.nix;
  defaults = import ./module-defaults.nix;

  known = filter (s: isString s && s != "") (split "[ \n]+" helpVariables);
  isKnown = name: elem name known;

  # Every typed option set, so that every variable they can produce is produced.
  everything = compute (
    defaults
    // {
      trustedPublicKeys = [ "laptop-1:0rkO2+8QV3zuiYpwv3F3ShwUhAcQzZdy9TiIQkbBmnY=" ];
      readUser = {
        name = "reader";
        passwordFile = "/run/agenix/read";
      };
      writeUser = {
        name = "writer";
        passwordFile = "/run/agenix/write";
      };
    }
  );
  emitted = attrNames everything.environment;
  inherit (everything) owners;

  throughSettings =
    name:
    let
      r = compute (defaults // { settings.${name} = "1"; });
    in
    r.problems == [ ] && (r.environment.${name} or null) == "1";
  refusedAsSecret =
    name:
    any (p: match ".*a secret in settings.*" p != null)
      (compute (defaults // { settings.${name} = "x"; })).problems;
  fileForms =
    name:
    filter isKnown [
      "${name}FILE"
      "${name}_FILE"
    ];

  classify =
    name:
    if owners ? ${name} then
      "ok    ${name}: typed option services.nix-stored.${owners.${name}}"
    else if refusedAsSecret name then
      if fileForms name != [ ] then
        "ok    ${name}: secret, refused in settings; its file form ${head (fileForms name)} points at a LoadCredential= file"
      else
        "FAIL  ${name}: named like a secret, so settings refuses it, and the server has no ${name}_FILE form to load it from a file"
    else if throughSettings name then
      "ok    ${name}: services.nix-stored.settings.${name}"
    else
      "FAIL  ${name}: not reachable from services.nix-stored";
in
concatStringsSep "\n" (
  map (name: "FAIL  ${name}: emitted by services.nix-stored but not in nix-stored --help") (
    filter (name: !isKnown name) (emitted ++ attrNames owners)
  )
  ++ map (name: "FAIL  ${name}: emitted by a typed option missing from the owners table") (
    filter (name: !(owners ? ${name})) emitted
  )
  ++ map classify known
)
