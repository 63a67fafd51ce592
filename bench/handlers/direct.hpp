// The benchmarks' agent-less baselines: starts a handler with posix_spawn (vfork + exec, the
// fastest way to start a process) and speaks the instance protocol (docs/instance-protocol.md)
// with it directly over the fd 3/4 pipe pair, with no pool, sandbox, cgroup or store in the way.
// Also: tiny helpers the function benchmarks share (percentiles, running a command).
#pragma once

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../tests/support/process.hpp"

extern char** environ;

namespace bench {

// The p-th percentile (0..100) of `v` (sorted in place), nearest rank.
inline double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  auto rank = static_cast<std::size_t>(p / 100.0 * static_cast<double>(v.size()));
  return v[std::min(rank, v.size() - 1)];
}

using blixard::dev::run;

// The interpreter's real binary (never a pyenv shim): $BLIXARD_BENCH_PYTHON, else python3's.
inline const std::string& python() {
  static const std::string p = blixard::dev::real_python("BLIXARD_BENCH_PYTHON");
  return p;
}

// Exit status of a program run to completion with stdio on /dev/null (for `python3 -c pass`).
inline int spawn_and_wait(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw std::runtime_error("cannot start " + argv[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// One handler process driven over the instance protocol.
class DirectInstance {
 public:
  // Starts `argv` (argv[0] an absolute path) in `cwd` with fds 3/4 the protocol pipes and
  // stdio on /dev/null; `env` is the whole environment.
  DirectInstance(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                 const std::string& cwd) {
    int req[2], resp[2];
    if (::pipe2(req, O_CLOEXEC) != 0 || ::pipe2(resp, O_CLOEXEC) != 0) {
      throw std::runtime_error("pipe2 failed");
    }
    // dup2 onto 3/4 must not find a pipe end already there (dup2(3, 3) keeps O_CLOEXEC).
    for (int* fd : {&req[0], &req[1], &resp[0], &resp[1]}) {
      if (*fd <= 4) {
        const int moved = ::fcntl(*fd, F_DUPFD_CLOEXEC, 10);
        ::close(*fd);
        *fd = moved;
      }
    }
    std::vector<char*> args, envp;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, req[0], 3);
    posix_spawn_file_actions_adddup2(&fa, resp[1], 4);
    posix_spawn_file_actions_addchdir_np(&fa, cwd.c_str());
    const int rc = ::posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    ::close(req[0]);
    ::close(resp[1]);
    to_ = req[1];
    from_ = resp[0];
    if (rc != 0) {
      pid_ = -1;
      stop();
      throw std::runtime_error("cannot start " + argv[0]);
    }
  }
  ~DirectInstance() { stop(); }
  DirectInstance(const DirectInstance&) = delete;
  DirectInstance& operator=(const DirectInstance&) = delete;

  // Blocks until the handler's `ready` frame.
  void wait_ready() {
    if (read_frame().rfind('\x0a', 0) != 0) throw std::runtime_error("expected a ready frame");
  }

  // One request/response; returns the response frame's body (a serialized InstanceFrame).
  std::string call(const std::string& payload) {
    std::string request;  // InstanceRequest{request_id = "r", payload}
    request += '\x0a';
    request += '\x01';
    request += 'r';
    put_bytes(request, 2, payload);
    std::string frame;  // InstanceFrame{request = 2}
    put_bytes(frame, 2, request);
    std::string data(4, '\0');
    const auto n = static_cast<std::uint32_t>(frame.size());
    for (int i = 0; i < 4; ++i) data[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    data += frame;
    for (std::size_t done = 0; done < data.size();) {
      const ssize_t w = ::write(to_, data.data() + done, data.size() - done);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) throw std::runtime_error("request pipe closed");
      done += static_cast<std::size_t>(w);
    }
    std::string body = read_frame();
    if (body.rfind('\x1a', 0) != 0) throw std::runtime_error("expected a response frame");
    return body;
  }

  // EOF on fd 3 (the handler exits 0), then reaps it.
  void stop() {
    if (to_ >= 0) ::close(to_);
    if (from_ >= 0) ::close(from_);
    to_ = from_ = -1;
    if (pid_ > 0) {
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      pid_ = -1;
    }
  }

 private:
  static void put_bytes(std::string& out, int field, const std::string& data) {
    out += static_cast<char>(field << 3 | 2);
    for (std::uint64_t v = data.size(); true; v >>= 7) {
      if (v < 0x80) {
        out += static_cast<char>(v);
        break;
      }
      out += static_cast<char>((v & 0x7f) | 0x80);
    }
    out += data;
  }

  void read_exact(char* p, std::size_t n) {
    for (std::size_t got = 0; got < n;) {
      const ssize_t r = ::read(from_, p + got, n - got);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) throw std::runtime_error("the handler closed its response pipe");
      got += static_cast<std::size_t>(r);
    }
  }

  std::string read_frame() {
    unsigned char header[4];
    read_exact(reinterpret_cast<char*>(header), 4);
    const std::uint32_t n =
        header[0] | header[1] << 8 | header[2] << 16 | static_cast<std::uint32_t>(header[3]) << 24;
    if (n > (64u << 20)) throw std::runtime_error("oversized frame");
    std::string body(n, '\0');
    read_exact(body.data(), n);
    return body;
  }

  pid_t pid_ = -1;
  int to_ = -1;
  int from_ = -1;
};

// The environment the driver gives a handler, enough of it for the baselines.
inline std::vector<std::string> handler_env(bool python_runtime) {
  std::vector<std::string> env{"BLIXARD_PROTOCOL=1",     "BLIXARD_FUNCTION=bench",
                               "BLIXARD_MEMORY_MIB=128", "BLIXARD_INSTANCE=bench-direct",
                               "BLIXARD_CONCURRENCY=1",  "BLIXARD_REQUEST_FD=3",
                               "BLIXARD_RESPONSE_FD=4"};
  for (const char* key : {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"}) {
    if (const char* v = std::getenv(key)) env.push_back(std::string(key) + "=" + v);
  }
  // As the benchmarks' function specs set it: no __pycache__ in the source tree.
  if (python_runtime) {
    env.push_back("PYTHONUNBUFFERED=1");
    env.push_back("PYTHONDONTWRITEBYTECODE=1");
  }
  return env;
}

}  // namespace bench
