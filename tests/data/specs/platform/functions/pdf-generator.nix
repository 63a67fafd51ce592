# An event-driven function run as an executable.
{ ... }: {
  microvm.mem = 1024;
  runtime = "exec";
  command = [ "./pdf-generator" "--stdin" ];
  code = ./src;
}
