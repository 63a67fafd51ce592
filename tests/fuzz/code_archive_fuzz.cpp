// libFuzzer target: unpacking a code archive (common/code_archive), as an agent does with what
// the server hands it. Any input unpacks within the limits or is a blixard::Error; never a crash,
// a hang, another exception, or a file written outside the directory it unpacks into. Inputs may
// be plain tar (libarchive reads it as well as tar.zst), so the fuzzer reaches the tar parser.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#include "blixard/error.hpp"
#include "common/code_archive.hpp"

namespace {

namespace fs = std::filesystem;

// <tmp>/blixard-code-fuzz-PID/{out,outside}: `outside` must stay empty whatever is unpacked.
const fs::path& work() {
  static const fs::path dir = [] {
    auto d = fs::temp_directory_path() / ("blixard-code-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(d / "outside");
    // libFuzzer ends with exit(): the directory goes then.
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(
          fs::temp_directory_path() / ("blixard-code-fuzz-" + std::to_string(::getpid())), ec);
    });
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  blixard::ArchiveLimits limits;
  limits.max_unpacked_bytes = 1 << 20;
  limits.max_entries = 256;
  const fs::path out = work() / "out";
  try {
    blixard::unpack_code(std::string_view(reinterpret_cast<const char*>(data), size), out, limits);
  } catch (const blixard::Error&) {
    // refused: the function's start fails with this error
  }
  std::error_code ec;
  fs::remove_all(out, ec);
  if (!fs::is_empty(work() / "outside")) std::abort();  // escaped the directory
  return 0;
}
