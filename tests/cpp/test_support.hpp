// Helpers shared by the C++ suites: the real Python binary, leaked-process checks, polling.
#pragma once

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>

namespace blixard::test_support {

// A shell command's stdout without its trailing newlines.
inline std::string run(const std::string& cmd) {
  std::string out;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    while (std::fgets(buf, sizeof buf, p) != nullptr) out += buf;
    ::pclose(p);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

// The real interpreter behind `python3` (a pyenv shim costs ~350 ms a start).
inline const std::string& python() {
  static const std::string p = [] {
    auto found = run("python3 -c 'import sys; print(sys.executable)' 2>/dev/null");
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
