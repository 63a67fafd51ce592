// A replica's console, whichever driver runs it (a sandboxed process's stdout and stderr, a
// guest's serial port and agent channel): two descriptors read until both close, split into lines
// of bounded length, and the last few lines kept for the error of a start that failed.
#pragma once

#include <array>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <string>

namespace blixard::runtime {

// A longer line is cut here (a replica that never writes a newline costs no more than this).
inline constexpr std::size_t k_max_console_line = std::size_t{16} * 1024;

// Reads `fds` (either may be -1) until both are at end of file, calling `line(which, text)` for
// each line, without its newline (or "\r\n"); a line's last part is passed at end of file.
void read_console(std::array<int, 2> fds,
                  const std::function<void(std::size_t which, std::string text)>& line);

// The last lines of a console, by stream.
class ConsoleTail {
 public:
  void add(const std::string& stream, const std::string& text);
  // "; last console lines:\n  stdout: ..." ("" before any line), to end an error message.
  std::string describe() const;

 private:
  static constexpr std::size_t k_lines = 20;
  mutable std::mutex mutex_;
  std::deque<std::string> lines_;
};

}  // namespace blixard::runtime
