# Cases for ../environment.nix, evaluated without nixpkgs by scripts/check-nix.sh:
#   nix-instantiate --eval --strict --json nix/tests/environment.nix
# evaluates to the list of failing cases (each with what was expected and what came
# out); the script fails unless it is empty.
let
  compute = import ../environment.nix;
  storeDir = builtins.storeDir;

  defaults = import ./module-defaults.nix;
  with' = overrides: compute (defaults // overrides);

  key = "laptop-1:0rkO2+8QV3zuiYpwv3F3ShwUhAcQzZdy9TiIQkbBmnY=";
  users = {
    readUser = {
      name = "reader";
      passwordFile = "/run/agenix/read";
    };
    writeUser = {
      name = "writer";
      passwordFile = "/run/agenix/write";
    };
  };

  # One problem (or warning) whose text contains `fragment`.
  oneMatching =
    fragment: messages:
    builtins.length messages == 1
    && builtins.match ".*${fragment}.*" (builtins.head messages) != null;

  cases = {
    defaults = {
      actual = with' { };
      expected = {
        environment = {
          NIX_STORED_PATH = "/var/lib/nix-stored";
          NIX_STORED_LISTEN_INTERFACE = "127.0.0.1:8100";
          NIX_STORED_PRIORITY = "30";
          NIX_STORED_LOG_LEVEL = "info";
          NIX_STORED_MAX_UPLOAD_SIZE = "32G";
          NIX_STORED_MEMORY_BUDGET = "512M";
          NIX_STORED_NARINFO_CACHE_SIZE = "8M";
        };
        credentials = [ ];
        listen = "127.0.0.1:8100";
        upstream = "127.0.0.1:8100";
        stateDirectory = "nix-stored";
        problems = [ ];
        warnings = [
          "services.nix-stored: no writeUser, so the server refuses every upload; set writeUser (or anonymousWrites on a single-user machine) to accept uploads"
        ];
        timeoutStopSec = 45;
        bindsPrivilegedPort = false;
        owners = (with' { }).owners;
      };
    };

    behind-a-proxy = {
      actual =
        let
          r = with' {
            listenAddress = "::";
            trustedProxies = [
              "127.0.0.1"
              "::1"
            ];
            publicUrl = "https://cache.example.org";
          };
        in
        {
          inherit (r) upstream problems;
          proxies = r.environment.NIX_STORED_TRUSTED_PROXIES;
          url = r.environment.NIX_STORED_PUBLIC_URL;
        };
      expected = {
        upstream = "[::1]:8100";
        problems = [ ];
        proxies = "127.0.0.1 ::1";
        url = "https://cache.example.org";
      };
    };
    retention = {
      actual =
        let
          r = with' {
            maxSize = "500G";
            retention = "30d";
            pinsFile = "/etc/nix-stored/pins";
          };
        in
        {
          inherit (r) problems;
          size = r.environment.NIX_STORED_MAX_SIZE;
          age = r.environment.NIX_STORED_RETENTION;
          pins = r.environment.NIX_STORED_PINS;
        };
      expected = {
        problems = [ ];
        size = "500G";
        age = "30d";
        pins = "/etc/nix-stored/pins";
      };
    };
    bad-retention-settings = {
      actual = [
        (oneMatching "maxSize" (with' { maxSize = "0"; }).problems)
        (oneMatching "retention" (with' { retention = "forever"; }).problems)
        (oneMatching "pinsFile" (with' { pinsFile = "pins"; }).problems)
      ];
      expected = [
        true
        true
        true
      ];
    };
    upstreams = {
      actual =
        let
          r = with' {
            upstreams = [
              "https://cache.nixos.org"
              "http://10.0.0.2:8100/sub"
            ];
            upstreamKeys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
          };
        in
        {
          inherit (r) problems;
          urls = r.environment.NIX_STORED_UPSTREAMS;
          keys = r.environment.NIX_STORED_UPSTREAM_KEYS;
        };
      expected = {
        problems = [ ];
        urls = "https://cache.nixos.org http://10.0.0.2:8100/sub";
        keys = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
      };
    };
    upstreams-need-keys-and-no-credentials = {
      actual =
        let
          problems =
            (with' {
              upstreams = [ "https://user:secret@cache.example.org" ];
            }).problems;
        in
        {
          count = builtins.length problems;
          keys = builtins.any (p: builtins.match ".*needs upstreamKeys.*" p != null) problems;
          credentials = builtins.any (p: builtins.match ".*a URL with credentials.*" p != null) problems;
          leaked = builtins.any (p: builtins.match ".*secret@.*" p != null) problems;
        };
      expected = {
        count = 2;
        keys = true;
        credentials = true;
        leaked = false;
      };
    };
    bad-public-url = {
      actual = oneMatching "publicUrl" (with' { publicUrl = "cache.example.org"; }).problems;
      expected = true;
    };

    ipv6-any = {
      actual = (with' { listenAddress = "::"; }).listen;
      expected = "[::]:8100";
    };
    ipv6-bracketed-loopback-anonymous = {
      actual =
        let
          r = with' {
            listenAddress = "[::1]";
            anonymousWrites = true;
          };
        in
        [
          r.environment.NIX_STORED_LISTEN_INTERFACE
          r.environment.NIX_STORED_ANONYMOUS_WRITES
          r.warnings
          r.problems
        ];
      expected = [
        "[::1]:8100"
        "true"
        [ ]
        [ ]
      ];
    };
    anonymous-on-public-address-warns = {
      actual = oneMatching "anyone who can connect" (with' {
        listenAddress = "0.0.0.0";
        anonymousWrites = true;
      }).warnings;
      expected = true;
    };
    anonymous-ignored-with-writer-warns = {
      actual = oneMatching "ignored" (with' ({ anonymousWrites = true; } // users)).warnings;
      expected = true;
    };
    host-name-refused = {
      actual = oneMatching "not an IP address" (with' { listenAddress = "cache.example.org"; }).problems;
      expected = true;
    };
    public-address-without-writer-warns = {
      actual = oneMatching "refuses every upload" (with' { listenAddress = "0.0.0.0"; }).warnings;
      expected = true;
    };
    public-address-with-writer = {
      actual = (with' ({ listenAddress = "0.0.0.0"; } // users)).warnings;
      expected = [ ];
    };
    firewall-on-loopback-warns = {
      actual = oneMatching "openFirewall" (with' ({ openFirewall = true; } // users)).warnings;
      expected = true;
    };

    users-by-credential = {
      actual =
        let
          r = with' users;
        in
        {
          inherit (r) credentials problems;
          users = {
            inherit (r.environment)
              NIX_STORED_USER_READ
              NIX_STORED_USER_READ_PASSFILE
              NIX_STORED_USER_WRITE
              NIX_STORED_USER_WRITE_PASSFILE
              ;
          };
          # The password file paths are only in LoadCredential=, never in the
          # environment; the passwords themselves are nowhere.
          passVariables = builtins.filter (n: builtins.match ".*_PASS" n != null) (
            builtins.attrNames r.environment
          );
        };
      expected = {
        credentials = [
          "read-password:/run/agenix/read"
          "write-password:/run/agenix/write"
        ];
        problems = [ ];
        users = {
          NIX_STORED_USER_READ = "reader";
          NIX_STORED_USER_READ_PASSFILE = "%d/read-password";
          NIX_STORED_USER_WRITE = "writer";
          NIX_STORED_USER_WRITE_PASSFILE = "%d/write-password";
        };
        passVariables = [ ];
      };
    };
    password-file-in-store-refused = {
      actual = oneMatching "in the Nix store" (with' {
        writeUser = {
          name = "writer";
          passwordFile = "${storeDir}/0000000000000000000000000000000-pw";
        };
      }).problems;
      expected = true;
    };
    password-file-relative-refused = {
      actual = oneMatching "absolute path" (with' {
        readUser = {
          name = "reader";
          passwordFile = "secrets/read";
        };
      }).problems;
      expected = true;
    };
    user-name-with-colon-refused = {
      actual = oneMatching "readUser.name" (with' {
        readUser = {
          name = "a:b";
          passwordFile = "/run/agenix/read";
        };
      }).problems;
      expected = true;
    };

    settings-passed-through = {
      actual =
        let
          r = with' {
            settings = {
              NIX_STORED_BODY_TIMEOUT = 120;
              NIX_STORED_STORE_DIR = "/gnu/store";
              NIX_STORED_SOME_FUTURE_SWITCH = true;
              NIX_STORED_TLS_KEY_FILE = "%d/tls-key";
            };
            credentialFiles.tls-key = "/run/agenix/tls-key";
          };
        in
        {
          inherit (r) problems credentials;
          inherit (r.environment)
            NIX_STORED_BODY_TIMEOUT
            NIX_STORED_STORE_DIR
            NIX_STORED_SOME_FUTURE_SWITCH
            NIX_STORED_TLS_KEY_FILE
            ;
        };
      expected = {
        problems = [ ];
        credentials = [ "tls-key:/run/agenix/tls-key" ];
        NIX_STORED_BODY_TIMEOUT = "120";
        NIX_STORED_STORE_DIR = "/gnu/store";
        NIX_STORED_SOME_FUTURE_SWITCH = "true";
        NIX_STORED_TLS_KEY_FILE = "%d/tls-key";
      };
    };
    setting-owned-by-typed-option-refused = {
      actual = oneMatching "services.nix-stored.priority instead" (with' {
        settings.NIX_STORED_PRIORITY = 10;
      }).problems;
      expected = true;
    };
    password-in-settings-refused = {
      actual = map (name: oneMatching "a secret in settings" (with' { settings.${name} = "hunter2"; }).problems) [
        "NIX_STORED_USER_WRITE_PASS"
        "NIX_STORED_USER_READ_PASS"
        "NIX_STORED_S3_SECRET_ACCESS_KEY"
        "NIX_STORED_API_TOKEN"
      ];
      expected = [
        true
        true
        true
        true
      ];
    };
    non-server-variable-refused = {
      actual = map (name: oneMatching "not a NIX_STORED_" (with' { settings.${name} = "x"; }).problems) [
        "RUST_LOG"
        "NIX_STORED_"
        "nix_stored_priority"
      ];
      expected = [
        true
        true
        true
      ];
    };
    credential-name-reserved = {
      actual = oneMatching "reserved" (with' { credentialFiles.write-password = "/run/agenix/x"; }).problems;
      expected = true;
    };
    credential-in-store-refused = {
      actual = oneMatching "in the Nix store" (with' { credentialFiles.k = "${storeDir}/x"; }).problems;
      expected = true;
    };

    shutdown-timeout-bounds-systemd = {
      actual = map (v: (with' { settings.NIX_STORED_SHUTDOWN_TIMEOUT = v; }).timeoutStopSec) [
        100
        "5"
      ];
      expected = [
        115
        20
      ];
    };
    shutdown-timeout-not-a-number = {
      actual = oneMatching "not a number of seconds" (with' {
        settings.NIX_STORED_SHUTDOWN_TIMEOUT = "1m";
      }).problems;
      expected = true;
    };

    data-dir-below-var-lib = {
      actual = (with' { dataDir = "/var/lib/caches/nix"; }).stateDirectory;
      expected = "caches/nix";
    };
    data-dir-elsewhere-refused = {
      actual = map (d: oneMatching "below /var/lib" (with' { dataDir = d; }).problems) [
        "/srv/cache"
        "/var/lib/"
        "/var/lib/../etc"
      ];
      expected = [
        true
        true
        true
      ];
    };

    narinfo-cache-size-checked = {
      actual = map (s: (with' { narinfoCacheSize = s; }).problems == [ ]) [
        "8M"
        "0"
        "lots"
      ];
      expected = [
        true
        true
        false
      ];
    };

    memory-budget-checked = {
      actual = map (s: (with' { memoryBudget = s; }).problems == [ ]) [
        "268435456"
        "64K"
        "1GiB"
        "0"
        "lots"
      ];
      expected = [
        true
        true
        true
        false
        false
      ];
    };

    upload-size-checked = {
      actual = map (s: (with' { maxUploadSize = s; }).problems == [ ]) [
        "1073741824"
        "512M"
        "4GiB"
        "lots"
        "-1"
      ];
      expected = [
        true
        true
        true
        false
        false
      ];
    };

    trusted-keys-joined = {
      actual =
        (with' {
          trustedPublicKeys = [
            key
            "other-1:AAAA"
          ];
        }).environment.NIX_STORED_TRUSTED_PUBLIC_KEYS;
      expected = "${key} other-1:AAAA";
    };
    trusted-key-malformed = {
      actual = oneMatching "not a key" (with' { trustedPublicKeys = [ "no-colon" ]; }).problems;
      expected = true;
    };

    privileged-port = {
      actual = [
        (with' { port = 80; }).bindsPrivilegedPort
        (with' {
          port = 80;
          socketActivation = true;
        }).bindsPrivilegedPort
        (with' { port = 1024; }).bindsPrivilegedPort
      ];
      expected = [
        true
        false
        false
      ];
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
