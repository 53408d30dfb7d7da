# services.nix-stored: the server as a hardened systemd service.
#
# Every environment variable the service gets is computed by ./environment.nix (plain
# builtins, evaluated on its own by scripts/check-nix.sh against `nix-stored --help`).
# Typed options cover the common settings; any other server setting (present or
# future) is reachable through `settings`, keyed by its NIX_STORED_* variable.
{ config, lib, ... }:
let
  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkOption
    optional
    types
    ;

  cfg = config.services.nix-stored;
  computed = import ./environment.nix cfg;

  userOption =
    role: what:
    mkOption {
      type = types.nullOr (
        types.submodule {
          options = {
            name = mkOption {
              type = types.str;
              example = role;
              description = "User name of the ${role} user (no `:`).";
            };
            passwordFile = mkOption {
              # A string, not a path: a path literal would be copied into the
              # world-readable Nix store.
              type = types.str;
              example = "/run/agenix/nix-stored-${role}";
              description = ''
                File holding the ${role} user's password (one trailing newline is
                ignored), outside the Nix store, e.g. an agenix or sops-nix secret.
                It is read by systemd (`LoadCredential=`) and handed to the server
                as `''${CREDENTIALS_DIRECTORY}/${role}-password`; the password never
                appears in the unit or the environment.
              '';
            };
          };
        }
      );
      default = null;
      example = literalExpression ''
        {
          name = "${role}";
          passwordFile = config.age.secrets.nix-stored-${role}.path;
        }
      '';
      description = what;
    };
in
{
  options.services.nix-stored = {
    enable = mkEnableOption "nix-stored, a Nix binary cache server that takes uploads from `nix copy --to http://…`";

    package = mkOption {
      type = types.package;
      defaultText = literalExpression "nix-stored.packages.\${pkgs.stdenv.hostPlatform.system}.default";
      description = "The nix-stored package (the flake's `nixosModules.default` sets it).";
    };

    listenAddress = mkOption {
      type = types.str;
      default = "127.0.0.1";
      example = "::";
      description = ''
        IP address to listen on (IPv4 or IPv6, no host names; `::` is every IPv6 and
        IPv4 address). With `socketActivation`, systemd listens on it instead.
      '';
    };

    port = mkOption {
      type = types.port;
      default = 8100;
      description = "TCP port to listen on.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `port` in the firewall.";
    };

    dataDir = mkOption {
      type = types.str;
      default = "/var/lib/nix-stored";
      description = ''
        The cache directory (`NIX_STORED_PATH`). It must be below /var/lib: the
        service runs with `DynamicUser=` and only owns its `StateDirectory=`. Mount a
        larger disk at this path if needed.
      '';
    };

    priority = mkOption {
      type = types.int;
      default = 30;
      description = "Priority advertised in nix-cache-info (lower is preferred; cache.nixos.org is 40).";
    };

    logLevel = mkOption {
      type = types.enum [
        "debug"
        "info"
        "warning"
        "error"
      ];
      default = "info";
      description = "Log level; `info` logs one line per request.";
    };

    maxUploadSize = mkOption {
      type = types.str;
      default = "32G";
      example = "4G";
      description = "Largest accepted upload, in bytes or with a K, M, G or T suffix (powers of 1024).";
    };

    memoryBudget = mkOption {
      type = types.str;
      default = "512M";
      example = "1G";
      description = ''
        Memory for client data the server holds whole (narinfo, realisation and
        debuginfo bodies being validated, write blocks of uploads), in bytes or
        with a K, M, G or T suffix. An upload that would go beyond it is refused
        with 503 and Retry-After.
      '';
    };

    narinfoCacheSize = mkOption {
      type = types.str;
      default = "8M";
      example = "64M";
      description = ''
        Memory for narinfos held to answer GET and HEAD without asking storage
        (about 1 KiB each; the often-asked ones stay), in bytes or with a K, M, G
        or T suffix; "0" turns it off. Changes in the directory drop entries as
        soon as its watch reports them.
      '';
    };

    trustedPublicKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "laptop-1:BASE64…" ];
      description = ''
        Public keys (`name:base64`, as in nix.conf). When non-empty, a narinfo upload
        must carry a valid signature by one of them, so a leaked write password alone
        cannot put an unsigned path in the cache.
      '';
    };

    readUser = userOption "read" ''
      The user allowed to read. `null`: reads are public.
    '';

    writeUser = userOption "write" ''
      The user allowed to upload (and read). `null`: uploads are refused, unless
      `anonymousWrites` is set.
    '';

    anonymousWrites = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Accept uploads without credentials when no `writeUser` is set
        (`NIX_STORED_ANONYMOUS_WRITES`). Whoever can reach the server can then write
        to the cache: on loopback that is every local user, a reverse proxy on the
        same host and any web page a local browser opens (DNS rebinding). Meant for
        a single-user machine.
      '';
    };

    credentialFiles = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        tls-key = "/run/agenix/nix-stored-tls-key";
      };
      description = ''
        More secret files for the server, loaded with `LoadCredential=NAME:PATH`
        (paths outside the Nix store). Point a setting at one with
        `settings.NIX_STORED_…_FILE = "%d/NAME"` (systemd expands `%d` to the
        credentials directory).
      '';
    };

    settings = mkOption {
      type = types.attrsOf (
        types.oneOf [
          types.str
          types.int
          types.bool
        ]
      );
      default = { };
      example = {
        NIX_STORED_BODY_TIMEOUT = 120;
        NIX_STORED_SHUTDOWN_TIMEOUT = 60;
      };
      description = ''
        Any other server setting, by its environment variable (see
        `nix-stored --help`): passed to the service as is (booleans as
        `true`/`false`). Variables covered by a typed option above, and variables
        named like secrets (`…_PASS`, `…_PASSWORD`, `…_SECRET`, `…_TOKEN`), are
        refused: a value here ends up in the world-readable Nix store. Values go
        through systemd's specifier expansion (`%d` is the credentials directory;
        write `%%` for a literal `%`).
      '';
    };

    maxSize = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "500G";
      description = ''
        Quota on the bytes the cache holds, in bytes or with a K, M, G or T suffix
        (`NIX_STORED_MAX_SIZE`). Retention passes remove the least recently used
        paths, never breaking a closure, until the cache is 10 % under it. Null: no
        quota.
      '';
    };

    retention = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "30d";
      description = ''
        Remove paths not used for longer than this (`30d`, `12h`, `90m`;
        `NIX_STORED_RETENTION`). Null: no age limit.
      '';
    };

    pinsFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/etc/nix-stored/pins";
      description = ''
        File of store paths or hash parts, one per line, whose closures retention
        never removes (`NIX_STORED_PINS`); re-read when it changes. Must be readable
        by the service, e.g. under /etc.
      '';
    };

    upstreams = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "https://cache.nixos.org" ];
      description = ''
        Binary caches asked, in this order, for a path this cache lacks; a verified
        hit is stored here and served (`NIX_STORED_UPSTREAMS`). No credentials here:
        they would be in the world-readable Nix store. An upstream that needs them
        goes into a root-only file (`NIX_STORED_UPSTREAMS=https://user:pass@host`)
        named by `systemd.services.nix-stored.serviceConfig.EnvironmentFile`, with
        this option left empty.
      '';
    };

    upstreamKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
      description = ''
        Public keys an upstream narinfo must carry a valid signature by; one that
        does not is never stored or served (`NIX_STORED_UPSTREAM_KEYS`). Required
        with `upstreams`.
      '';
    };

    trustedProxies = mkOption {
      type = types.listOf types.str;
      default = lib.optionals cfg.nginx.enable [
        "127.0.0.1"
        "::1"
      ];
      defaultText = literalExpression ''lib.optionals config.services.nix-stored.nginx.enable [ "127.0.0.1" "::1" ]'';
      example = [ "10.0.0.0/8" ];
      description = ''
        Reverse proxies (addresses or CIDR blocks) whose `X-Forwarded-For` /
        `Forwarded` headers name the client, for the access log and the
        wrong-password throttle; never for authorisation
        (`NIX_STORED_TRUSTED_PROXIES`).
      '';
    };

    publicUrl = mkOption {
      type = types.nullOr types.str;
      default = if cfg.nginx.enable then "https://${cfg.nginx.virtualHost}" else null;
      defaultText = literalExpression ''if config.services.nix-stored.nginx.enable then "https://''${config.services.nix-stored.nginx.virtualHost}" else null'';
      example = "https://cache.example.org";
      description = "The URL clients reach the cache at from outside, behind a reverse proxy (`NIX_STORED_PUBLIC_URL`).";
    };

    nginx = {
      enable = mkEnableOption ''
        an nginx virtual host in front of the server, with the settings of the
        README's "Behind a reverse proxy" (deploy/nginx.conf): TLS, HTTP/2,
        uploads streamed unbuffered and without a size limit of nginx's own,
        timeouts for multi-GiB NARs, and a cache of NARs (narinfos and misses are
        never stored)'';
      virtualHost = mkOption {
        type = types.str;
        example = "cache.example.org";
        description = "The virtual host's name (the cache's public host name).";
      };
      enableACME = mkOption {
        type = types.bool;
        default = true;
        description = "Get the certificate from Let's Encrypt (`security.acme` must be configured).";
      };
    };

    socketActivation = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Let systemd listen (`nix-stored.socket`, `ListenStream=` on
        `listenAddress`:`port`) and start the server on the first connection. The
        socket stays open across restarts of the service, so connections queue
        instead of being refused, and a port below 1024 needs no capability.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = map (message: {
      assertion = false;
      inherit message;
    }) computed.problems;
    inherit (computed) warnings;

    # The same settings as deploy/nginx.conf (tests/proxy.rs checks the lines).
    services.nginx = mkIf cfg.nginx.enable {
      enable = true;
      appendHttpConfig = ''
        proxy_cache_path /var/cache/nginx/nix-stored levels=1:2 keys_zone=nix_stored:10m max_size=50g inactive=30d use_temp_path=off;
      '';
      upstreams.nix_stored = {
        servers.${computed.upstream} = { };
        extraConfig = ''
          keepalive 16;
        '';
      };
      virtualHosts.${cfg.nginx.virtualHost} = {
        forceSSL = true;
        inherit (cfg.nginx) enableACME;
        http2 = true;
        extraConfig = ''
          client_max_body_size 0;
          client_body_timeout 300s;
          send_timeout 300s;
        '';
        locations."/" = {
          proxyPass = "http://nix_stored";
          recommendedProxySettings = false;
          extraConfig = ''
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_request_buffering off;
            proxy_connect_timeout 10s;
            proxy_send_timeout 300s;
            proxy_read_timeout 300s;

            proxy_cache nix_stored;
            proxy_cache_revalidate on;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 300s;
            add_header X-Cache-Status $upstream_cache_status always;
          '';
        };
      };
    };

    networking.firewall.allowedTCPPorts = optional cfg.openFirewall cfg.port;

    systemd.sockets.nix-stored = mkIf cfg.socketActivation {
      description = "nix-stored Nix binary cache server socket";
      wantedBy = [ "sockets.target" ];
      listenStreams = [ computed.listen ];
    };

    systemd.services.nix-stored = {
      description = "nix-stored Nix binary cache server";
      wantedBy = optional (!cfg.socketActivation) "multi-user.target";
      requires = optional cfg.socketActivation "nix-stored.socket";
      after = [ "network.target" ] ++ optional cfg.socketActivation "nix-stored.socket";

      inherit (computed) environment;

      serviceConfig = {
        # The server sends READY=1 once it listens and STOPPING=1 on SIGTERM.
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${cfg.package}/bin/nix-stored";
        Restart = "on-failure";
        RestartSec = "2s";
        # The server's own grace period for in-flight requests, plus a margin.
        TimeoutStopSec = computed.timeoutStopSec;
        LoadCredential = computed.credentials;

        DynamicUser = true;
        StateDirectory = mkIf (computed.stateDirectory != null) computed.stateDirectory;
        StateDirectoryMode = "0700";
        UMask = "0077";

        # Binding a port below 1024 itself is the only privilege it may need.
        CapabilityBoundingSet = if computed.bindsPrivilegedPort then [ "CAP_NET_BIND_SERVICE" ] else "";
        AmbientCapabilities = mkIf computed.bindsPrivilegedPort [ "CAP_NET_BIND_SERVICE" ];
        NoNewPrivileges = true;

        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        PrivateMounts = true;
        DevicePolicy = "closed";
        ProtectHostname = true;
        ProtectClock = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectProc = "invisible";
        ProcSubset = "pid";
        # AF_UNIX for sd_notify; the S3 backend needs outgoing AF_INET/AF_INET6 too.
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
          "~@resources"
        ];
        SystemCallErrorNumber = "EPERM";
      };
    };
  };
}
