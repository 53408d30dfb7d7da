# Cases for ../client-settings.nix, evaluated without nixpkgs by scripts/check-nix.sh;
# evaluates to the list of failing cases (empty when all pass).
let
  compute = import ../client-settings.nix;
  defaults = {
    url = "http://cache.example.org:8100";
    publicKeys = [ "laptop-1:0rkO2+8QV3zuiYpwv3F3ShwUhAcQzZdy9TiIQkbBmnY=" ];
    netrcFile = null;
    upload = {
      enable = false;
      secretKeyFile = null;
      compression = "zstd";
    };
    hook = "/nix/store/00000000000000000000000000000000-nix-stored-upload";
  };
  with' = overrides: compute (defaults // overrides);
  uploading = {
    netrcFile = "/run/agenix/netrc";
    upload = defaults.upload // {
      enable = true;
      secretKeyFile = "/run/agenix/signing-key";
    };
  };
  oneMatching =
    fragment: messages:
    builtins.length messages == 1
    && builtins.match ".*${fragment}.*" (builtins.head messages) != null;

  cases = {
    substitute-only = {
      actual = with' { };
      expected = {
        settings = {
          substituters = [ "http://cache.example.org:8100" ];
          trusted-public-keys = defaults.publicKeys;
        };
        uploadUrl = "http://cache.example.org:8100?compression=zstd";
        problems = [ ];
        warnings = [ ];
      };
    };
    upload-every-build = {
      actual = with' uploading;
      expected = {
        settings = {
          substituters = [ "http://cache.example.org:8100" ];
          trusted-public-keys = defaults.publicKeys;
          netrc-file = "/run/agenix/netrc";
          post-build-hook = defaults.hook;
          secret-key-files = [ "/run/agenix/signing-key" ];
        };
        uploadUrl = "http://cache.example.org:8100?compression=zstd&secret-key=/run/agenix/signing-key";
        problems = [ ];
        warnings = [ ];
      };
    };
    trailing-slash-dropped = {
      actual = (with' { url = "https://cache.example.org/"; }).uploadUrl;
      expected = "https://cache.example.org?compression=zstd";
    };
    query-refused = {
      actual = oneMatching "without a query" (with' { url = "http://cache:8100?priority=10"; }).problems;
      expected = true;
    };
    not-http-refused = {
      actual = oneMatching "not an http" (with' { url = "s3://bucket"; }).problems;
      expected = true;
    };
    secrets-outside-the-store = {
      actual = map (p: oneMatching "in the Nix store" p) [
        (with' { netrcFile = "${builtins.storeDir}/x-netrc"; }).problems
        (with' {
          upload = uploading.upload // {
            secretKeyFile = "${builtins.storeDir}/x-key";
          };
        }).problems
      ];
      expected = [
        true
        true
      ];
    };
    unsigned-upload-warns = {
      actual = oneMatching "uploads are unsigned" (with' {
        upload = defaults.upload // {
          enable = true;
        };
      }).warnings;
      expected = true;
    };
    no-keys-warns = {
      actual = oneMatching "no publicKeys" (with' { publicKeys = [ ]; }).warnings;
      expected = true;
    };
  };
in
builtins.filter (failure: failure != null) (
  map (
    name:
    let
      c = cases.${name};
    in
    if c.actual == c.expected then
      null
    else
      {
        inherit name;
        inherit (c) expected actual;
      }
  ) (builtins.attrNames cases)
)
