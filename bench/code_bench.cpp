// Code travel (DESIGN §5): packing a code directory into its archive, as the SDK does on create,
// and unpacking it, as a node does on its first cold start of a digest, beside the real `tar`
// binary doing the same (tar --zstd, a fork and exec per run: what a user would script), and the
// fingerprint walk that lets the SDK skip packing an unchanged tree.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/code_archive.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;

// The trees: a small Python handler, a native handler (one 0.5 MB static binary), and a source
// tree of about a hundred files (this project's src/).
fs::path tree(int which) {
  switch (which) {
    case 0:
      return fs::path(BLIXARD_SOURCE_DIR) / "bench/handlers/python";
    case 1:
      return fs::path(BLIXARD_BENCH_ECHO).parent_path();
    default:
      return fs::path(BLIXARD_SOURCE_DIR) / "src";
  }
}
const char* tree_name(int which) {
  return which == 0 ? "python_handler" : which == 1 ? "native_handler" : "source_tree";
}

int run(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), environ) != 0) return -1;
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

fs::path scratch() {
  static const fs::path dir = [] {
    auto d = fs::temp_directory_path() / ("blixard-code-bench-" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

void label(benchmark::State& state, const blixard::CodeArchive& a) {
  state.SetLabel(std::string(tree_name(static_cast<int>(state.range(0)))) + ", " +
                 std::to_string(a.files) + " files, " + std::to_string(a.unpacked_bytes >> 10) +
                 " KiB -> " + std::to_string(a.bytes.size() >> 10) + " KiB");
}

void BM_Pack(benchmark::State& state) {
  const fs::path dir = tree(static_cast<int>(state.range(0)));
  blixard::CodeArchive a;
  for (auto _ : state) {
    a = blixard::pack_code(dir);
    benchmark::DoNotOptimize(a.digest);
  }
  label(state, a);
}
BENCHMARK(BM_Pack)->DenseRange(0, 2)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_Pack_TarBinary(benchmark::State& state) {
  const fs::path dir = tree(static_cast<int>(state.range(0)));
  const std::string out = (scratch() / "tar.tar.zst").string();
  for (auto _ : state) {
    if (run({"tar", "--zstd", "-cf", out, "-C", dir.string(), "."}) != 0) {
      state.SkipWithError("tar failed");
      break;
    }
  }
  state.SetLabel(tree_name(static_cast<int>(state.range(0))));
}
BENCHMARK(BM_Pack_TarBinary)->DenseRange(0, 2)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_Unpack(benchmark::State& state) {
  const auto a = blixard::pack_code(tree(static_cast<int>(state.range(0))));
  const fs::path into = scratch() / "unpacked";
  for (auto _ : state) {
    blixard::unpack_code(a.bytes, into);
    state.PauseTiming();
    fs::remove_all(into);
    state.ResumeTiming();
  }
  label(state, a);
}
BENCHMARK(BM_Unpack)->DenseRange(0, 2)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_Unpack_TarBinary(benchmark::State& state) {
  const auto a = blixard::pack_code(tree(static_cast<int>(state.range(0))));
  const fs::path file = scratch() / "archive.tar.zst";
  {
    const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 ||
        ::write(fd, a.bytes.data(), a.bytes.size()) != static_cast<ssize_t>(a.bytes.size())) {
      throw std::runtime_error("cannot write " + file.string());
    }
    ::close(fd);
  }
  const fs::path into = scratch() / "untarred";
  for (auto _ : state) {
    fs::create_directories(into);
    if (run({"tar", "--zstd", "-xf", file.string(), "-C", into.string()}) != 0) {
      state.SkipWithError("tar failed");
      break;
    }
    state.PauseTiming();
    fs::remove_all(into);
    state.ResumeTiming();
  }
  label(state, a);
}
BENCHMARK(BM_Unpack_TarBinary)->DenseRange(0, 2)->Unit(benchmark::kMicrosecond)->UseRealTime();

// What the SDK pays to apply an unchanged tree again: a walk and an lstat per entry.
void BM_Fingerprint(benchmark::State& state) {
  const fs::path dir = tree(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    benchmark::DoNotOptimize(blixard::code_fingerprint(dir, {}, std::chrono::seconds(0)));
  }
  state.SetLabel(tree_name(static_cast<int>(state.range(0))));
}
BENCHMARK(BM_Fingerprint)->DenseRange(0, 2)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  std::error_code ec;
  fs::remove_all(scratch(), ec);
  return 0;
}
