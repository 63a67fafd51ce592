# The platform's cache.
{ pkgs, ... }: {
  microvm = {
    mem = 1024;
    vcpu = 1;
  };

  services.redis.servers.cache = {
    enable = true;
    port = 6379;
  };

  networking.firewall.allowedTCPPorts = [ 6379 ];
}
