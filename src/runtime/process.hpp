// Small pieces of process handling the sandbox's instances and replicas share: an owned file
// descriptor, pipes, path and executable lookup, and the words for how a process ended.
#pragma once

#include <unistd.h>

#include <csignal>
#include <cstdint>

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace blixard::runtime {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    reset(std::exchange(o.fd_, -1));
    return *this;
  }
  ~UniqueFd() { reset(); }
  int get() const noexcept { return fd_; }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// All of `bytes` to `fd` (a file or a pipe; retried on EINTR), or false.
bool write_all(int fd, std::string_view bytes);
// A close-on-exec pipe: {read end, write end}. Throws Error(unavailable).
std::pair<UniqueFd, UniqueFd> make_pipe();
void set_nonblocking(int fd);
// `path` with symlinks and ".." resolved (the path as given when it cannot be).
std::string resolved_path(const std::string& path);
// A PATH lookup done in the parent (execvpe would allocate between clone and exec).
std::optional<std::filesystem::path> find_executable(const std::string& name);
// A TCP port free on all of the host's addresses now, for a replica's host port (another process
// may take it before the replica binds it). Throws Error(unavailable).
std::uint32_t free_port();
// "exited with status 3", "was killed by signal 9 (SIGKILL)".
std::string describe_exit(const siginfo_t& info);

}  // namespace blixard::runtime
