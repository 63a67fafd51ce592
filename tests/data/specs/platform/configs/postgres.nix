# The platform's database: a NixOS module with a microvm.nix section.
{ pkgs, config, ... }: {
  microvm = {
    mem = 2048;
    vcpu = 2;
    shares = [{
      source = "/nix/store";
      mountPoint = "/nix/.ro-store";
      tag = "ro-store";
      proto = "virtiofs";
    }];
  };

  services.postgresql = {
    enable = true;
    package = pkgs.postgresql15;
  };

  networking.firewall.allowedTCPPorts = [ 5432 ];
}
