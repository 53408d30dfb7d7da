# The server, built from Cargo.lock with nixpkgs' Rust tooling.
{
  lib,
  rustPlatform,
}:
let
  manifest = (lib.importTOML ../Cargo.toml).package;
in
rustPlatform.buildRustPackage {
  pname = manifest.name;
  inherit (manifest) version;

  # Only what cargo reads: editing the README, tests/, bench/ or the Nix files does
  # not rebuild the package.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # The unit tests next to the code. The black-box tests in tests/ need a real Nix
  # client and a writable /nix/store, which the build sandbox has neither of;
  # scripts/test.sh runs them.
  cargoTestFlags = [
    "--lib"
    "--bins"
  ];

  meta = {
    inherit (manifest) description;
    license = lib.licenses.mit;
    mainProgram = "nix-stored";
    # O_PATH, preadv2 and inotify: Linux only.
    platforms = lib.platforms.linux;
  };
}
