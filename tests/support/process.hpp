// Process helpers shared by the C++ test suites and the benchmarks.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

namespace blixard::dev {

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

// The interpreter's real binary behind `python3` (a pyenv shim costs ~350 ms a start), unless
// the environment variable `override_var` names one. Empty when there is no python3.
inline std::string real_python(const char* override_var = nullptr) {
  if (override_var != nullptr) {
    if (const char* env = std::getenv(override_var); env != nullptr && *env != '\0') return env;
  }
  return run("python3 -c 'import sys; print(sys.executable)' 2>/dev/null");
}

}  // namespace blixard::dev
