# What services.nix-stored-client turns into, computed with builtins only (no
# nixpkgs) so that scripts/check-nix.sh can evaluate it and check every nix.conf
# setting it emits against the settings the real Nix client knows.
#
# Input: the module's `config.services.nix-stored-client`, plus `hook` (the
# post-build-hook script, a store path string).
# Output:
#   settings   attributes for `nix.settings`
#   uploadUrl  the store URL the post-build-hook copies to
#   problems   assertion messages
#   warnings   warning messages
{
  url,
  publicKeys,
  netrcFile,
  upload,
  hook,
  storeDir ? builtins.storeDir,
  ...
}:
let
  inherit (builtins) match stringLength substring;
  matches = regex: s: match regex s != null;
  optional = cond: x: if cond then [ x ] else [ ];
  optionalAttrs = cond: attrs: if cond then attrs else { };

  # No query string: the upload adds its own parameters.
  base =
    let
      m = match "(https?://[^?#]*[^/?#])/*" url;
    in
    if m == null then url else builtins.head m;

  fileProblems =
    what: path:
    optional (path != null && !(matches "/.*" path)) "${what} must be an absolute path, not ${path}"
    ++ optional (path != null && substring 0 (stringLength storeDir + 1) path == "${storeDir}/")
      "${what} is in the Nix store (${path}), which every local user can read: use a file outside it";

  signs = upload.enable && upload.secretKeyFile != null;
in
{
  # `secret-key=` signs every path the hook uploads, including dependencies that were
  # substituted from elsewhere and so carry no signature of ours: a server with
  # trustedPublicKeys accepts the whole closure, and clients trusting this key can
  # substitute all of it. `secret-key-files` additionally signs each local build as it
  # is registered, so a manual `nix copy` carries the signature too.
  uploadUrl = "${base}?compression=${upload.compression}" + (if signs then "&secret-key=${upload.secretKeyFile}" else "");

  settings =
    {
      substituters = [ base ];
      trusted-public-keys = publicKeys;
    }
    // optionalAttrs (netrcFile != null) { netrc-file = netrcFile; }
    // optionalAttrs upload.enable { post-build-hook = hook; }
    // optionalAttrs signs { secret-key-files = [ upload.secretKeyFile ]; };

  problems =
    optional (!(matches "https?://[^?#]+" url))
      "services.nix-stored-client.url: ${url} is not an http:// or https:// URL without a query"
    ++ map (k: "services.nix-stored-client.publicKeys: ${k} is not a key like name:BASE64") (
      builtins.filter (k: !(matches "[^: ]+:[A-Za-z0-9+/]+={0,2}" k)) publicKeys
    )
    ++ fileProblems "services.nix-stored-client.netrcFile" netrcFile
    ++ fileProblems "services.nix-stored-client.upload.secretKeyFile" upload.secretKeyFile;

  warnings =
    optional (publicKeys == [ ])
      "services.nix-stored-client: no publicKeys, so Nix uses nothing from ${base} unless it is signed by a key already in nix.settings.trusted-public-keys"
    ++ optional (upload.enable && upload.secretKeyFile == null)
      "services.nix-stored-client.upload: no secretKeyFile, so uploads are unsigned: a server with trustedPublicKeys refuses them and clients ignore them";
}
