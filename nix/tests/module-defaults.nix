# The defaults of services.nix-stored's options, as ../environment.nix receives them
# (shared by the pure checks; scripts/check-nix.sh compares these names with the
# options nix/module.nix declares).
{
  dataDir = "/var/lib/nix-stored";
  listenAddress = "127.0.0.1";
  port = 8100;
  priority = 30;
  logLevel = "info";
  maxUploadSize = "32G";
  memoryBudget = "512M";
  narinfoCacheSize = "8M";
  trustedPublicKeys = [ ];
  readUser = null;
  writeUser = null;
  anonymousWrites = false;
  trustedProxies = [ ];
  publicUrl = null;
  maxSize = null;
  retention = null;
  pinsFile = null;
  upstreams = [ ];
  upstreamKeys = [ ];
  nginx = {
    enable = false;
    virtualHost = "cache.example.org";
    enableACME = true;
  };
  settings = { };
  credentialFiles = { };
  socketActivation = false;
  openFirewall = false;
}
