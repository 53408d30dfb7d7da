{
  description = "nix-stored: a Nix binary cache server that takes uploads from plain `nix copy`";

  # No flake.lock is committed (it could not be generated where this was written, see
  # README): `nix flake lock` pins this branch.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      # Linux only: the server uses O_PATH, preadv2 and inotify (see README).
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      packageFor = pkgs: self.packages.${pkgs.stdenv.hostPlatform.system}.default;
    in
    {
      overlays.default = final: _prev: {
        nix-stored = final.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (pkgs: rec {
        nix-stored = pkgs.callPackage ./nix/package.nix { };
        default = nix-stored;
      });

      # `nix run github:OWNER/nix-stored` (flags after `--`, see nix-stored --help).
      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = lib.getExe (
            pkgs.writeShellScriptBin "nix-stored" ''
              # Tried out by a normal user: the cache goes to the user's data directory
              # instead of /var/lib/nixStored, unless NIX_STORED_PATH or --path says otherwise.
              export NIX_STORED_PATH="''${NIX_STORED_PATH:-''${XDG_DATA_HOME:-$HOME/.local/share}/nix-stored}"
              exec ${lib.getExe (packageFor pkgs)} "$@"
            ''
          );
          meta.description = "Run the nix-stored server on 127.0.0.1:8100";
        };
      });

      nixosModules = {
        # The server module, with this flake's package as the default package.
        default =
          { lib, pkgs, ... }:
          {
            imports = [ ./nix/module.nix ];
            services.nix-stored.package = lib.mkDefault (packageFor pkgs);
          };
        nix-stored = self.nixosModules.default;
        client = ./nix/client.nix;
      };

      checks = forAllSystems (pkgs: {
        # Builds the server and runs its unit tests (checkPhase).
        package = packageFor pkgs;

        # scripts/check-nix.sh against the built binary: every .nix file parses, the
        # helpers' cases pass, every variable the module can emit is one the server
        # knows and every server setting is reachable from the module.
        module-settings =
          pkgs.runCommand "nix-stored-check-nix"
            {
              nativeBuildInputs = [
                pkgs.nix
                pkgs.python3
              ];
              src = lib.fileset.toSource {
                root = ./.;
                fileset = lib.fileset.unions [
                  ./flake.nix
                  ./nix
                  ./scripts/check-nix.sh
                  # Its nix examples are checked too.
                  ./README.md
                ];
              };
            }
            ''
              export HOME=$TMPDIR
              cd $src
              bash scripts/check-nix.sh --no-store ${lib.getExe (packageFor pkgs)}
              touch $out
            '';

        vm = pkgs.testers.runNixOSTest (import ./nix/tests/vm.nix { inherit self pkgs; });
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ (packageFor pkgs) ];
          packages = [
            pkgs.clippy
            pkgs.rustfmt
          ];
        };
      });
    };
}
