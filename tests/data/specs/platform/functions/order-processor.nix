# A queue-driven function: plain attributes name its handler beside the microvm set.
{ pkgs, ... }: {
  microvm = { mem = 256; vcpu = 1; };
  runtime = "python";
  handler = "orders:handle";
  code = ./src;
  env = { ORDERS_TABLE = "orders"; };
}
