// Replica consoles (see console.hpp).
#include "runtime/console.hpp"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

namespace blixard::runtime {

void read_console(std::array<int, 2> fds,
                  const std::function<void(std::size_t, std::string)>& line) {
  std::array<std::string, 2> partial;
  const auto emit = [&](std::size_t i, std::string text) {
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (text.size() > k_max_console_line) text.resize(k_max_console_line);
    line(i, std::move(text));
  };
  std::array<char, 4096> buf{};
  while (fds[0] >= 0 || fds[1] >= 0) {
    std::array<pollfd, 2> p{{{fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}}};
    if (::poll(p.data(), p.size(), -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (std::size_t i = 0; i < 2; ++i) {
      if (fds[i] < 0 || p[i].revents == 0) continue;
      const ssize_t n = ::read(fds[i], buf.data(), buf.size());
      if (n <= 0) {
        if (!partial[i].empty()) emit(i, std::exchange(partial[i], {}));
        fds[i] = -1;
        continue;
      }
      partial[i].append(buf.data(), static_cast<std::size_t>(n));
      for (std::size_t nl; (nl = partial[i].find('\n')) != std::string::npos;) {
        emit(i, partial[i].substr(0, nl));
        partial[i].erase(0, nl + 1);
      }
      if (partial[i].size() > k_max_console_line) emit(i, std::exchange(partial[i], {}));
    }
  }
}

void ConsoleTail::add(const std::string& stream, const std::string& text) {
  std::lock_guard lock(mutex_);
  lines_.push_back(stream + ": " + text);
  if (lines_.size() > k_lines) lines_.pop_front();
}

std::string ConsoleTail::describe() const {
  std::lock_guard lock(mutex_);
  std::string out;
  for (const auto& l : lines_) out += "\n  " + l;
  return out.empty() ? "" : "; last console lines:" + out;
}

}  // namespace blixard::runtime
