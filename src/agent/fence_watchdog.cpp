// The fence watchdog (see fence_watchdog.hpp).
#include "agent/fence_watchdog.hpp"

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <iostream>
#include <map>
#include <vector>

#include "blixard/error.hpp"

extern char** environ;

namespace blixard::agent {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr milliseconds k_beat_every{100};

int pidfd_open(int pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

void say(const std::string& what) {
  std::cerr << "blixard-agent fence-watchdog: " << what << std::endl;
}

}  // namespace

std::unique_ptr<FenceWatchdog> FenceWatchdog::start(const fs::path& agent_binary,
                                                    milliseconds after) {
  std::array<int, 2> fds{};
  if (::pipe2(fds.data(), O_CLOEXEC) != 0) {
    throw Error(errc::unavailable,
                std::string("cannot make the fence watchdog's pipe: ") + std::strerror(errno));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[0], 0);  // (dup2 clears close-on-exec)
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // A session of its own: a signal to the agent's process group does not pause it too.
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
  const std::string binary = agent_binary.string();
  const std::string ms = std::to_string(after.count());
  std::vector<char*> argv{const_cast<char*>(binary.c_str()), const_cast<char*>("--fence-watchdog"),
                          const_cast<char*>(ms.c_str()), nullptr};
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, binary.c_str(), &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(fds[0]);
  if (rc != 0) {
    ::close(fds[1]);
    throw Error(errc::unavailable,
                "cannot start the fence watchdog (" + binary + "): " + std::strerror(rc));
  }
  // Beats must never block the agent: one the pipe cannot take now is as good as dropped.
  ::fcntl(fds[1], F_SETFL, O_NONBLOCK);
  return std::unique_ptr<FenceWatchdog>(new FenceWatchdog(fds[1], pid));
}

FenceWatchdog::~FenceWatchdog() {
  ::close(fd_);
  // It exits on the pipe's end; reaped here so it is no zombie of a long-lived agent.
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
}

void FenceWatchdog::send(const std::string& line) {
  // (mutex_ held) Lines are short: a write of one is whole or fails (PIPE_BUF).
  for (int attempt = 0; attempt < 50; ++attempt) {
    if (::write(fd_, line.data(), line.size()) == static_cast<ssize_t>(line.size())) return;
    if (errno != EAGAIN && errno != EINTR) return;
    if (line == "BEAT\n") return;
    ::usleep(1000);  // an ARM is not dropped: the watchdog reads its pipe within a poll
  }
}

void FenceWatchdog::set_after(milliseconds after) {
  std::lock_guard lock(mutex_);
  send("AFTER " + std::to_string(after.count()) + "\n");
}

void FenceWatchdog::arm(int pid) {
  if (pid <= 0) return;
  std::lock_guard lock(mutex_);
  send("ARM " + std::to_string(pid) + "\n");
}

void FenceWatchdog::disarm(int pid) {
  if (pid <= 0) return;
  std::lock_guard lock(mutex_);
  send("DISARM " + std::to_string(pid) + "\n");
}

void FenceWatchdog::beat() {
  std::lock_guard lock(mutex_);
  const auto now = Clock::now();
  if (now - last_beat_ < k_beat_every) return;
  last_beat_ = now;
  send("BEAT\n");
}

int run_fence_watchdog(int fd, milliseconds after) {
  // The kernel's OOM killer must not take the one process that stops a stale primary.
  if (const int adj = ::open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC); adj >= 0) {
    (void)::write(adj, "-1000", 5);
    ::close(adj);
  }
  ::signal(SIGPIPE, SIG_IGN);
  std::map<int, int> armed;  // pid -> its pidfd
  auto last_beat = Clock::now();
  std::string pending;
  const auto fire = [&](const std::string& why) {
    for (const auto& [pid, pidfd] : armed) {
      const bool killed = ::syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0) == 0;
      ::close(pidfd);
      if (killed) say("killed pid " + std::to_string(pid) + ": " + why);
    }
    armed.clear();
  };
  for (;;) {
    int timeout = -1;
    if (!armed.empty()) {
      const auto left = after - std::chrono::duration_cast<milliseconds>(Clock::now() - last_beat);
      timeout = static_cast<int>(std::max<long long>(0, left.count()));
    }
    pollfd p{fd, POLLIN, 0};
    const int ready = ::poll(&p, 1, timeout);
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {
      fire("no word from the agent for " + std::to_string(after.count()) +
           " ms (paused, or cut off from the server): its node's lease lapses next");
      continue;
    }
    std::array<char, 4096> buf{};
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      fire("the agent is gone");
      return 0;
    }
    pending.append(buf.data(), static_cast<std::size_t>(n));
    for (auto end = pending.find('\n'); end != std::string::npos; end = pending.find('\n')) {
      const std::string line = pending.substr(0, end);
      pending.erase(0, end + 1);
      const auto space = line.find(' ');
      const std::string word = line.substr(0, space);
      const std::string arg = space == std::string::npos ? "" : line.substr(space + 1);
      if (word == "BEAT") {
        last_beat = Clock::now();
      } else if (word == "AFTER") {
        try {
          after = milliseconds(std::max(100L, std::stol(arg)));
        } catch (const std::exception&) {
        }
      } else if (word == "ARM" || word == "DISARM") {
        int pid = 0;
        try {
          pid = std::stoi(arg);
        } catch (const std::exception&) {
          continue;
        }
        if (const auto it = armed.find(pid); it != armed.end()) {
          ::close(it->second);
          armed.erase(it);
        }
        if (word == "DISARM" || pid <= 1) continue;
        const int pidfd = pidfd_open(pid);
        if (pidfd < 0) continue;                      // gone already
        if (armed.empty()) last_beat = Clock::now();  // timed from here on
        armed[pid] = pidfd;
      }
    }
    if (pending.size() > 65536) pending.clear();  // no line is that long
  }
}

}  // namespace blixard::agent
