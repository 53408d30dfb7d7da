# What services.nix-stored turns into, computed with builtins only (no nixpkgs), so
# that scripts/check-nix.sh can evaluate it with a bare `nix-instantiate` and compare
# the variables it emits with the ones `nix-stored --help` lists.
#
# Input: the module's `config.services.nix-stored` (extra attributes are ignored).
# Output:
#   environment     NIX_STORED_* variables for the service (strings); password files
#                   are passed as `%d/<name>`, which systemd expands to the unit's
#                   credentials directory
#   credentials     LoadCredential= entries, `name:/absolute/path`
#   listen          `addr:port` (`[v6]:port`), for the server and for ListenStream=
#   upstream        `addr:port` a reverse proxy on this host connects to
#   stateDirectory  StateDirectory= (dataDir relative to /var/lib)
#   timeoutStopSec  the server's shutdown grace period plus 15 s for systemd
#   bindsPrivilegedPort  the process itself binds a port below 1024
#   problems        assertion messages (the module fails evaluation on any)
#   warnings        warning messages
#   owners          which typed option sets which variable (the rest go through `settings`)
{
  dataDir,
  listenAddress,
  port,
  priority,
  logLevel,
  maxUploadSize,
  memoryBudget,
  narinfoCacheSize ? "8M",
  trustedPublicKeys,
  readUser,
  writeUser,
  anonymousWrites ? false,
  trustedProxies ? [ ],
  publicUrl ? null,
  maxSize ? null,
  retention ? null,
  pinsFile ? null,
  upstreams ? [ ],
  upstreamKeys ? [ ],
  settings,
  credentialFiles,
  socketActivation,
  openFirewall,
  # The store directory of this evaluation: password files must live outside it.
  storeDir ? builtins.storeDir,
  ...
}:
let
  inherit (builtins)
    attrNames
    concatLists
    concatStringsSep
    filter
    hasAttr
    isBool
    isInt
    isString
    listToAttrs
    map
    match
    stringLength
    substring
    ;

  prefix = "NIX_STORED_";
  matches = regex: s: match regex s != null;
  hasPrefix = p: s: substring 0 (stringLength p) s == p;
  optional = cond: x: if cond then [ x ] else [ ];
  optionalAttrs = cond: attrs: if cond then attrs else { };
  render = v: if isBool v then (if v then "true" else "false") else toString v;

  # Variables owned by a typed option: setting them through `settings` is an error,
  # so that there is one place for each value.
  owners = {
    NIX_STORED_PATH = "dataDir";
    NIX_STORED_LISTEN_INTERFACE = "listenAddress and port";
    NIX_STORED_PRIORITY = "priority";
    NIX_STORED_LOG_LEVEL = "logLevel";
    NIX_STORED_MAX_UPLOAD_SIZE = "maxUploadSize";
    NIX_STORED_MEMORY_BUDGET = "memoryBudget";
    NIX_STORED_NARINFO_CACHE_SIZE = "narinfoCacheSize";
    NIX_STORED_TRUSTED_PUBLIC_KEYS = "trustedPublicKeys";
    NIX_STORED_USER_READ = "readUser.name";
    NIX_STORED_USER_READ_PASSFILE = "readUser.passwordFile";
    NIX_STORED_USER_WRITE = "writeUser.name";
    NIX_STORED_USER_WRITE_PASSFILE = "writeUser.passwordFile";
    NIX_STORED_ANONYMOUS_WRITES = "anonymousWrites";
    NIX_STORED_TRUSTED_PROXIES = "trustedProxies";
    NIX_STORED_PUBLIC_URL = "publicUrl";
    NIX_STORED_MAX_SIZE = "maxSize";
    NIX_STORED_RETENTION = "retention";
    NIX_STORED_PINS = "pinsFile";
    NIX_STORED_UPSTREAMS = "upstreams";
    NIX_STORED_UPSTREAM_KEYS = "upstreamKeys";
  };

  # Variables that would carry a secret in the unit file, hence in the world-readable
  # Nix store: never emitted. A secret goes into a file outside the store, loaded
  # with LoadCredential= (readUser/writeUser.passwordFile, credentialFiles) and named
  # by the variable's file form.
  isSecretName = name: matches ".*_(PASS|PASSWORD|SECRET|SECRET_KEY|SECRET_ACCESS_KEY|TOKEN)" name;

  # --- listen address -------------------------------------------------------------
  bare =
    if matches "\\[.*]" listenAddress then
      substring 1 (stringLength listenAddress - 2) listenAddress
    else
      listenAddress;
  isV6 = matches ".*:.*" bare;
  listen = if isV6 then "[${bare}]:${toString port}" else "${bare}:${toString port}";
  # The server takes an IP address only (no host names, no scope ids).
  isIp =
    matches "([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})" bare
    || matches "[0-9a-fA-F:]*:[0-9a-fA-F:]*(:[0-9]{1,3}(\\.[0-9]{1,3}){3})?" bare;
  # Listening on every address: a proxy on this host connects over loopback.
  upstream =
    if bare == "0.0.0.0" then
      "127.0.0.1:${toString port}"
    else if bare == "::" || bare == "0:0:0:0:0:0:0:0" then
      "[::1]:${toString port}"
    else
      listen;
  # As Rust's IpAddr::is_loopback: 127.0.0.0/8 and ::1.
  isLoopback = matches "127\\.[0-9.]+" bare || bare == "::1" || bare == "0:0:0:0:0:0:0:1";

  # --- data directory ---------------------------------------------------------------
  # DynamicUser= services can only own what systemd creates for them: dataDir must be
  # a StateDirectory=, i.e. below /var/lib (mount a disk there for a large cache).
  stateDirMatch = match "/var/lib/([A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)" dataDir;
  stateDirectory =
    if stateDirMatch == null || matches ".*/\\.\\.?(/.*)?" dataDir then
      null
    else
      builtins.head stateDirMatch;

  # --- users --------------------------------------------------------------------------
  secretFileProblems =
    what: path:
    optional (!(hasPrefix "/" path)) "${what} must be an absolute path, not ${path}"
    ++ optional (hasPrefix "${storeDir}/" path)
      "${what} is in the Nix store (${path}), which every local user can read: use a file outside it (agenix, sops-nix, systemd-creds)";

  user =
    role: option: credential: u:
    if u == null then
      {
        environment = { };
        credentials = [ ];
        problems = [ ];
      }
    else
      {
        environment = {
          "${prefix}USER_${role}" = u.name;
          "${prefix}USER_${role}_PASSFILE" = "%d/${credential}";
        };
        credentials = [ "${credential}:${u.passwordFile}" ];
        problems =
          optional (u.name == "" || matches ".*[:%\n].*" u.name)
            "services.nix-stored.${option}.name: must be non-empty, without ':' or '%'"
          ++ secretFileProblems "services.nix-stored.${option}.passwordFile" u.passwordFile;
      };
  read = user "READ" "readUser" "read-password" readUser;
  write = user "WRITE" "writeUser" "write-password" writeUser;
  reservedCredentials = [
    "read-password"
    "write-password"
  ];

  # --- extra credentials and settings -----------------------------------------------
  credentialProblems = concatLists (
    map (
      name:
      optional (!(matches "[A-Za-z0-9_.-]+" name))
        "services.nix-stored.credentialFiles.${name}: a credential name has only letters, digits, '_', '.', '-'"
      ++ optional (builtins.elem name reservedCredentials)
        "services.nix-stored.credentialFiles.${name}: reserved for readUser/writeUser.passwordFile"
      ++ secretFileProblems "services.nix-stored.credentialFiles.${name}" credentialFiles.${name}
    ) (attrNames credentialFiles)
  );

  settingProblems = concatLists (
    map (
      name:
      if !(matches "NIX_STORED_[A-Z0-9_]*[A-Z0-9]" name) then
        [
          "services.nix-stored.settings.${name}: not a NIX_STORED_* variable (other variables go in systemd.services.nix-stored.environment)"
        ]
      else if hasAttr name owners then
        [ "services.nix-stored.settings.${name}: set services.nix-stored.${owners.${name}} instead" ]
      else if isSecretName name then
        [
          "services.nix-stored.settings.${name}: a secret in settings would be in the Nix store; put it in a file, load it with services.nix-stored.credentialFiles and set the variable's file form to \"%d/<name>\""
        ]
      else
        [ ]
    ) (attrNames settings)
  );

  # The server's grace period for in-flight requests (NIX_STORED_SHUTDOWN_TIMEOUT,
  # default 30 s); systemd must not SIGKILL before it ends.
  shutdownRaw = settings.NIX_STORED_SHUTDOWN_TIMEOUT or 30;
  shutdownString = toString shutdownRaw;
  shutdownValid = isInt shutdownRaw || (isString shutdownRaw && matches "[0-9]{1,6}" shutdownRaw);
  shutdownSeconds = if isInt shutdownRaw then shutdownRaw else builtins.fromJSON shutdownString;

  problems =
    optional (!isIp)
      "services.nix-stored.listenAddress: ${listenAddress} is not an IP address (the server does not resolve host names)"
    ++ optional (stateDirectory == null)
      "services.nix-stored.dataDir: ${dataDir} must be a directory below /var/lib (the service runs as a DynamicUser and only owns its StateDirectory); mount a disk there for a large cache"
    ++ optional (!(matches "[0-9]+ ?([KkMmGgTt](iB|B)?|B)?" maxUploadSize))
      "services.nix-stored.maxUploadSize: ${maxUploadSize} is not a size like 1073741824, 512M or 32G"
    ++ optional (!(matches "0*[1-9][0-9]* ?([KkMmGgTt](iB|B)?|B)?" memoryBudget))
      "services.nix-stored.memoryBudget: ${memoryBudget} is not a size like 268435456, 256M or 1G"
    ++ optional (!(matches "[0-9]+ ?([KkMmGgTt](iB|B)?|B)?" narinfoCacheSize))
      "services.nix-stored.narinfoCacheSize: ${narinfoCacheSize} is not a size like 0, 8388608, 8M or 1G"
    ++ map (k: "services.nix-stored.trustedPublicKeys: ${k} is not a key like name:BASE64") (
      filter (k: !(matches "[^: ]+:[A-Za-z0-9+/]+={0,2}" k)) trustedPublicKeys
    )
    ++ optional (publicUrl != null && !(matches "[Hh][Tt][Tt][Pp][Ss]?://[^/?#@ ]+(/[^?# ]*)?" publicUrl))
      "services.nix-stored.publicUrl: ${toString publicUrl} is not an http:// or https:// URL without query or credentials"
    ++ optional (maxSize != null && !(matches "0*[1-9][0-9]* ?([KkMmGgTt](iB|B)?|B)?" maxSize))
      "services.nix-stored.maxSize: ${toString maxSize} is not a size like 1073741824, 500G or 2T"
    ++ optional (retention != null && !(matches "0*[1-9][0-9]*[smhdw]?" retention))
      "services.nix-stored.retention: ${toString retention} is not a duration like 30d, 12h, 90m or 3600s"
    ++ optional (pinsFile != null && !(hasPrefix "/" (toString pinsFile)))
      "services.nix-stored.pinsFile: ${toString pinsFile} is not an absolute path"
    ++ map (
      u:
      "services.nix-stored.upstreams: ${
        if matches "[^/]*//[^/]*@.*" u then "a URL with credentials" else u
      } is not an http:// or https:// URL without credentials (they would be in the Nix store: put NIX_STORED_UPSTREAMS in a file outside it, named by systemd.services.nix-stored.serviceConfig.EnvironmentFile)"
    ) (filter (u: !(matches "[Hh][Tt][Tt][Pp][Ss]?://[^/?#@ ]+(/[^?# ]*)?" u)) upstreams)
    ++ map (k: "services.nix-stored.upstreamKeys: ${k} is not a key like name:BASE64") (
      filter (k: !(matches "[^: ]+:[A-Za-z0-9+/]+={0,2}" k)) upstreamKeys
    )
    ++ optional (upstreams != [ ] && upstreamKeys == [ ])
      "services.nix-stored.upstreams needs upstreamKeys: the public keys upstream narinfos must be signed with"
    ++ optional (!shutdownValid)
      "services.nix-stored.settings.NIX_STORED_SHUTDOWN_TIMEOUT: ${shutdownString} is not a number of seconds"
    ++ read.problems
    ++ write.problems
    ++ credentialProblems
    ++ settingProblems;

  warnings =
    optional (writeUser == null && !anonymousWrites)
      "services.nix-stored: no writeUser, so the server refuses every upload; set writeUser (or anonymousWrites on a single-user machine) to accept uploads"
    ++ optional (anonymousWrites && writeUser == null && !isLoopback)
      "services.nix-stored: anonymousWrites on ${bare}, which is not a loopback address: anyone who can connect can upload"
    ++ optional (anonymousWrites && writeUser != null)
      "services.nix-stored: anonymousWrites is ignored because writeUser is set (uploads need its credentials)"
    ++ optional (openFirewall && isLoopback)
      "services.nix-stored: openFirewall opens port ${toString port}, but the server listens on loopback (${bare}) only";

  environment =
    {
      NIX_STORED_PATH = dataDir;
      # Also set with socket activation, where the server serves on the socket
      # systemd passes and ignores it.
      NIX_STORED_LISTEN_INTERFACE = listen;
      NIX_STORED_PRIORITY = toString priority;
      NIX_STORED_LOG_LEVEL = logLevel;
      NIX_STORED_MAX_UPLOAD_SIZE = maxUploadSize;
      NIX_STORED_MEMORY_BUDGET = memoryBudget;
      NIX_STORED_NARINFO_CACHE_SIZE = narinfoCacheSize;
    }
    // optionalAttrs anonymousWrites {
      NIX_STORED_ANONYMOUS_WRITES = "true";
    }
    // optionalAttrs (trustedPublicKeys != [ ]) {
      NIX_STORED_TRUSTED_PUBLIC_KEYS = concatStringsSep " " trustedPublicKeys;
    }
    // optionalAttrs (trustedProxies != [ ]) {
      NIX_STORED_TRUSTED_PROXIES = concatStringsSep " " trustedProxies;
    }
    // optionalAttrs (publicUrl != null) {
      NIX_STORED_PUBLIC_URL = publicUrl;
    }
    // optionalAttrs (maxSize != null) {
      NIX_STORED_MAX_SIZE = maxSize;
    }
    // optionalAttrs (retention != null) {
      NIX_STORED_RETENTION = retention;
    }
    // optionalAttrs (pinsFile != null) {
      NIX_STORED_PINS = toString pinsFile;
    }
    // optionalAttrs (upstreams != [ ]) {
      NIX_STORED_UPSTREAMS = concatStringsSep " " upstreams;
    }
    // optionalAttrs (upstreamKeys != [ ]) {
      NIX_STORED_UPSTREAM_KEYS = concatStringsSep " " upstreamKeys;
    }
    // read.environment
    // write.environment
    // listToAttrs (
      map (name: {
        inherit name;
        value = render settings.${name};
      }) (attrNames settings)
    );
in
{
  inherit
    environment
    listen
    upstream
    stateDirectory
    problems
    warnings
    owners
    ;
  credentials =
    read.credentials
    ++ write.credentials
    ++ map (name: "${name}:${credentialFiles.${name}}") (attrNames credentialFiles);
  timeoutStopSec = (if shutdownValid then shutdownSeconds else 30) + 15;
  bindsPrivilegedPort = !socketActivation && port < 1024;
}
