// Helpers shared by the C++ suites: the real Python binary, leaked-process checks, polling.
#pragma once

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>

#include "../support/process.hpp"

namespace blixard::test_support {

using dev::run;

// The real interpreter behind `python3`, or "python3" when it cannot be asked.
inline const std::string& python() {
  static const std::string p = [] {
    auto found = dev::real_python();
    return found.empty() ? std::string("python3") : found;
  }();
  return p;
}

// The Python zygote itself (not an instance it forked: those live in PID namespaces of their own).
inline bool is_zygote(const std::filesystem::path& proc) {
  std::ifstream cmd(proc / "cmdline", std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
  if (text.find(std::string("--zygote\0", 9)) == std::string::npos) return false;
  std::ifstream status(proc / "status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("NSpid:", 0) == 0) return line.find_first_of(" \t", 7) == std::string::npos;
  }
  return false;
}

// Processes whose environment, command line or cgroup mentions `token`: handlers and what they
// started (exec'd ones carry the function's environment, ones forked from the Python zygote keep
// the zygote's but sit in the instance's cgroup), and the zygote (its runtime path).
inline int processes_with(const std::string& token, bool count_zygotes = true) {
  namespace fs = std::filesystem;
  int count = 0;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    if (!count_zygotes && is_zygote(entry.path())) continue;
    for (const char* file : {"environ", "cmdline", "cgroup"}) {
      std::ifstream in(entry.path() / file, std::ios::binary);
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (text.find(token) != std::string::npos) {
        ++count;
        break;
      }
    }
  }
  return count;
}

// Instances (and what they started) only, not a live driver's zygote.
inline int instances_with(const std::string& token) { return processes_with(token, false); }

// Polls `condition` until it holds or `limit` passes; returns its last value.
template <class F>
bool eventually(F&& condition, std::chrono::milliseconds limit = std::chrono::seconds(15)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return condition();
}

}  // namespace blixard::test_support
