# services.nix-stored-client: a machine that substitutes from a nix-stored cache and,
# optionally, uploads every local build to it (the multi-device set-up: each machine
# builds once, the others download).
#
# nix.settings entries are computed by ./client-settings.nix (plain builtins,
# checked by scripts/check-nix.sh against the settings `nix show-config` knows).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkEnableOption
    mkIf
    mkOption
    types
    ;

  cfg = config.services.nix-stored-client;
  computed = import ./client-settings.nix (cfg // { hook = "${uploadHook}"; });

  # The hook's logic is a plain script (./upload-hook.sh), so that scripts/check-nix.sh
  # can run it with the real Nix client against the real server.
  uploadHook = pkgs.writeShellScript "nix-stored-upload" ''
    exec ${pkgs.bash}/bin/bash ${./upload-hook.sh} ${config.nix.package}/bin ${lib.escapeShellArg computed.uploadUrl}
  '';
in
{
  options.services.nix-stored-client = {
    enable = mkEnableOption "substituting from a nix-stored binary cache";

    url = mkOption {
      type = types.str;
      example = "http://cache.example.org:8100";
      description = "URL of the cache (added to `nix.settings.substituters`).";
    };

    publicKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "laptop-1:BASE64…" ];
      description = ''
        Public keys of the machines that sign what they upload (added to
        `nix.settings.trusted-public-keys`). Get one from a secret key with
        `nix key convert-secret-to-public < secret-key`.
      '';
    };

    netrcFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/agenix/nix-stored-netrc";
      description = ''
        netrc file with the cache's credentials
        (`machine cache.example.org login writer password …`; curl matches the host
        name, not the port), outside the Nix store, e.g. an agenix or sops-nix
        secret. Becomes `nix.settings.netrc-file`, which the Nix daemon uses for
        every download, substitution and the upload hook.
      '';
    };

    upload = {
      enable = mkEnableOption "uploading every local build to the cache with a post-build-hook (the netrc entry must then be the write user's)";

      secretKeyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/agenix/nix-signing-key";
        description = ''
          Secret signing key (`nix key generate-secret --key-name NAME`), outside the
          Nix store. Becomes `nix.settings.secret-key-files` (every local build is
          signed as it is registered) and signs every path the hook uploads.
        '';
      };

      compression = mkOption {
        type = types.enum [
          "zstd"
          "xz"
          "bzip2"
          "br"
          "lz4"
          "none"
        ];
        default = "zstd";
        description = "Compression of the uploaded NARs.";
      };
    };
  };

  config = mkIf cfg.enable {
    assertions = map (message: {
      assertion = false;
      inherit message;
    }) computed.problems;
    inherit (computed) warnings;

    nix.settings = computed.settings;
  };
}
