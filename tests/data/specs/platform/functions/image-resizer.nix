# An HTTP function; the manifest sets its memory and timeout.
{
  microvm = { mem = 512; vcpu = 2; };
  handler = "resize:handler";
  code = ./src;
  scaling = { maxInstances = 20; keepWarm = "2m"; };
}
