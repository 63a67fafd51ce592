// Helpers shared by the C++ suites: the real Python binary, leaked-process checks, polling.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "../support/process.hpp"
#include "blixard/error.hpp"

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

// A /proc file of a process that may exit while it is read: what could be read, else empty
// (an ifstream throws from underflow on the ESRCH a vanished process's file gives).
inline std::string read_proc_file(const std::filesystem::path& path) {
  std::string text;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return text;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;)
    text.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return text;
}

// What a `blixard-agent --server` wrote to <data>/server.json once it serves: its address and
// admin token (each empty until then; read again on each call).
struct ServerState {
  std::string address, token;
};
inline ServerState read_server_state(const std::filesystem::path& data) {
  const std::string json = read_proc_file(data / "server.json");
  auto field = [&](const std::string& key) {
    const auto at = json.find("\"" + key + "\":\"");
    if (at == std::string::npos) return std::string();
    const auto start = at + key.size() + 4;
    return json.substr(start, json.find('"', start) - start);
  };
  return {field("address"), field("token")};
}

// The Python zygote itself (not an instance it forked: those live in PID namespaces of their own).
inline bool is_zygote(const std::filesystem::path& proc) {
  const std::string cmdline = read_proc_file(proc / "cmdline");
  if (cmdline.find(std::string("--zygote\0", 9)) == std::string::npos) return false;
  const std::string status = read_proc_file(proc / "status");
  const auto at = status.find("\nNSpid:");
  if (at == std::string::npos) return false;
  const std::string line = status.substr(at + 8, status.find('\n', at + 8) - (at + 8));
  return line.find_first_of(" \t", line.find_first_not_of(" \t")) == std::string::npos;
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
      if (read_proc_file(entry.path() / file).find(token) != std::string::npos) {
        ++count;
        break;
      }
    }
  }
  return count;
}

// Instances (and what they started) only, not a live driver's zygote.
inline int instances_with(const std::string& token) { return processes_with(token, false); }

// A connection to 127.0.0.1:port, or -1.
inline int connect_loopback(unsigned short port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Sends `text` (a request head, perhaps without the body it announces) on a fresh connection and
// returns what the server answers until it closes (or 10 s pass).
inline std::string http_head_only(unsigned short port, const std::string& text) {
  const int fd = connect_loopback(port);
  if (fd < 0) return {};
  timeval limit{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
  (void)!::write(fd, text.data(), text.size());
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

// The Error `f` throws, checked to carry `code`; a test failure when it throws none.
template <class F>
Error expect_error(F&& f, errc code) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    return e;
  }
  ADD_FAILURE() << "no error thrown";
  return {errc::internal, "no error thrown"};
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
