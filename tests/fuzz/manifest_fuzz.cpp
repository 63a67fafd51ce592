// libFuzzer target: the manifest loader (spec/loader: YAML or JSON documents to validated specs).
// Any input is either an ObjectSet or a blixard::Error naming what is wrong; never a crash, a hang
// or another exception. Configs it names are looked up relative to a directory that is empty, and
// Nix evaluation is pointed at a program that does not exist, so no input starts a process.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "blixard/error.hpp"
#include "blixard/spec.hpp"

namespace {

const std::filesystem::path& manifest_path() {
  static const std::filesystem::path path = [] {
    const auto dir = std::filesystem::temp_directory_path() /
                     ("blixard-manifest-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    // libFuzzer ends with exit(): the directory goes then.
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(std::filesystem::temp_directory_path() /
                                      ("blixard-manifest-fuzz-" + std::to_string(::getpid())),
                                  ec);
    });
    return dir / "manifest.yaml";
  }();
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  {
    std::ofstream out(manifest_path(), std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  blixard::SpecOptions options;
  options.nix_instantiate = "/nonexistent/nix-instantiate";
  try {
    const auto set = blixard::load_manifest(manifest_path(), options);
    (void)set.ByteSizeLong();
  } catch (const blixard::Error& e) {
    if (std::string(e.what()).empty()) std::abort();  // an error says what is wrong
  }
  return 0;
}
