{ pkgs, ... }: {
  # Minimal microVM config for fast startup
  microvm = {
    mem = 128;  # Can be as low as needed
    vcpu = 1;
    bootTime = "50ms";  # Optimized for speed
  };
  
  # Function handler
  handler = { event, context }: 
    let
      image = pkgs.imagemagick.processImage event.imagePath;
    in {
      statusCode = 200;
      body = {
        processed = true;
        outputPath = image.path;
      };
    };
}
