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

// Processes whose environment carries `token` (handlers and anything they started).
inline int processes_with(const std::string& token) {
  namespace fs = std::filesystem;
  int count = 0;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "environ", std::ios::binary);
    std::string env((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (env.find(token) != std::string::npos) ++count;
  }
  return count;
}

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
