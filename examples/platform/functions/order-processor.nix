# A function's Nix config: the microvm set plus plain attributes naming the handler.
{ pkgs, ... }: {
  microvm = {
    mem = 256;
    vcpu = 1;
  };
  runtime = "python";
  handler = "orders:handler";
  code = "./order-processor";
}
