// Readiness and health checks (see health_check.hpp).
#include "common/health_check.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>

namespace blixard {
namespace {

using Clock = std::chrono::steady_clock;

// A connected, non-blocking socket to address:port within the deadline, or -1.
int connect_by(const std::string& address, std::uint32_t port, Clock::time_point deadline) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  if (::inet_pton(AF_INET, address.empty() ? "127.0.0.1" : address.c_str(), &addr.sin_addr) != 1) {
    return -1;
  }
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 && errno != EINPROGRESS) {
    ::close(fd);
    return -1;
  }
  pollfd p{fd, POLLOUT, 0};
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  int err = 0;
  socklen_t len = sizeof err;
  if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) != 1 ||
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

bool tcp_accepts(const std::string& address, std::uint32_t port,
                 std::chrono::milliseconds timeout) {
  const int fd = connect_by(address, port, Clock::now() + timeout);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

bool http_ok(const std::string& address, std::uint32_t port, const std::string& path,
             std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  const int fd = connect_by(address, port, deadline);
  if (fd < 0) return false;
  const std::string request = "GET " + path +
                              " HTTP/1.0\r\nHost: " + (address.empty() ? "127.0.0.1" : address) +
                              "\r\nUser-Agent: blixard-health\r\n\r\n";
  bool ok = ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(request.size());
  // The status line: "HTTP/1.x NNN" (12 bytes), read within the deadline.
  std::array<char, 12> head{};
  std::size_t got = 0;
  while (ok && got < head.size()) {
    pollfd p{fd, POLLIN, 0};
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) != 1) break;
    const ssize_t n = ::recv(fd, head.data() + got, head.size() - got, 0);
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  return ok && got == head.size() && std::string(head.data(), 5) == "HTTP/" &&
         (head[9] == '2' || head[9] == '3');
}

}  // namespace blixard
