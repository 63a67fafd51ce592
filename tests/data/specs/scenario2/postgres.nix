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
  
  # Pure NixOS PostgreSQL configuration
  services.postgresql = {
    enable = true;
    package = pkgs.postgresql15;
    dataDir = "/var/lib/postgresql/15";
    settings = {
      shared_preload_libraries = [ "pg_stat_statements" ];
      max_connections = 200;
      shared_buffers = "256MB";
    };
    authentication = ''
      local all all trust
      host all all 0.0.0.0/0 md5
    '';
  };
  
  # Declarative database setup
  services.postgresql.initialScript = pkgs.writeText "init.sql" ''
    CREATE DATABASE app_db;
    CREATE USER app_user WITH PASSWORD 'secure_password';
    GRANT ALL PRIVILEGES ON DATABASE app_db TO app_user;
  '';
  
  # Ceph RBD mount for persistent data
  fileSystems."/var/lib/postgresql" = {
    device = "ceph-pool/postgres-vol";
    fsType = "ext4";
    options = [ "defaults" "noatime" ];
  };
  
  networking.firewall.allowedTCPPorts = [ 5432 ];
}
