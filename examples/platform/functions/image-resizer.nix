{ pkgs, ... }: {
  microvm = {
    mem = 512;
    vcpu = 1;
    bootTime = "50ms";
  };
  runtime = "python";
  handler = "resize:handler";
  code = "./image-resizer";
}
