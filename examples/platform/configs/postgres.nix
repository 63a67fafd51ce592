{ pkgs, config, modulesPath, ... }: {
  imports = [ (modulesPath + "/profiles/qemu-guest.nix") ];

  microvm = {
    mem = 2048;
    vcpu = 4;
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
    dataDir = "/var/lib/postgresql/15";
  };

  networking.firewall.allowedTCPPorts = [ 5432 ];
}
