// Process helpers (see process.hpp).
#include "runtime/process.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "blixard/error.hpp"

namespace blixard::runtime {

namespace fs = std::filesystem;

bool write_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// A port free on every address now: bound, read back, closed (its user binds it a moment later).
std::uint32_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  socklen_t len = sizeof addr;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    if (fd >= 0) ::close(fd);
    throw Error(errc::unavailable,
                std::string("no free port for a replica: ") + std::strerror(errno));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::pair<UniqueFd, UniqueFd> make_pipe() {
  std::array<int, 2> fds{};
  if (::pipe2(fds.data(), O_CLOEXEC) != 0) {
    throw Error(errc::unavailable, std::string("pipe: ") + std::strerror(errno));
  }
  return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

// `path` with symlinks and ".." resolved. realpath(3) looks each component up once, where
// std::filesystem::weakly_canonical re-resolves every prefix (0.15 ms of a 4 ms cold start);
// weakly_canonical remains for a path that does not exist.
std::string resolved_path(const std::string& path) {
  if (char* real = ::realpath(path.c_str(), nullptr)) {
    std::string out(real);
    std::free(real);  // NOLINT(cppcoreguidelines-no-malloc): realpath's buffer
    return out;
  }
  std::error_code ignored;
  return fs::weakly_canonical(path, ignored).string();
}

// A PATH lookup done in the parent (execvpe would allocate between clone and exec).
std::optional<fs::path> find_executable(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::istringstream ss(path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin");
  for (std::string dir; std::getline(ss, dir, ':');) {
    if (dir.empty()) dir = ".";
    fs::path candidate = fs::path(dir) / name;
    if (::access(candidate.c_str(), X_OK) == 0 && !fs::is_directory(candidate)) {
      return fs::absolute(candidate);
    }
  }
  return std::nullopt;
}

std::string describe_exit(const siginfo_t& info) {
  if (info.si_code == CLD_EXITED) return "exited with status " + std::to_string(info.si_status);
  const char* abbrev = sigabbrev_np(info.si_status);
  std::string sig =
      abbrev != nullptr ? std::string("SIG") + abbrev : std::to_string(info.si_status);
  return "was killed by signal " + std::to_string(info.si_status) + " (" + sig + ")";
}

}  // namespace blixard::runtime
