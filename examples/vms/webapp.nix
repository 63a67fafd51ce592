{ pkgs, modulesPath, ... }: {
  imports = [ (modulesPath + "/profiles/qemu-guest.nix") ];
  
  microvm = {
    mem = 512;
    vcpu = 2;
    balloonMem = 256;
    shares = [{
      source = "/nix/store";
      mountPoint = "/nix/.ro-store";
      tag = "ro-store";
      proto = "virtiofs";
    }];
  };
  
  # Pure NixOS service configuration
  services.nginx = {
    enable = true;
    virtualHosts.default = {
      root = "/var/www";
      locations."/".index = "index.html";
    };
  };
  
  networking.firewall.allowedTCPPorts = [ 80 ];
  
  # Declarative user management
  users.users.webapp = {
    isNormalUser = true;
    home = "/var/www";
  };
}
