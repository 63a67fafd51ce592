// Writing to a pipe whose reader is gone raises SIGPIPE, which by default kills the process: the
// agent must not die of a handler that exited. Pipes have no MSG_NOSIGNAL, so the writing thread
// blocks SIGPIPE around the write and swallows the one it raised.
#pragma once

#include <pthread.h>

#include <csignal>
#include <ctime>

namespace blixard {

namespace detail {
inline thread_local bool t_sigpipe_blocked = false;
}

// For threads the agent owns (io threads): SIGPIPE stays blocked in this thread, so its writes
// to pipes cost no signal-mask calls each.
inline void block_sigpipe_in_this_thread() {
  sigset_t pipe;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  if (::pthread_sigmask(SIG_BLOCK, &pipe, nullptr) == 0) detail::t_sigpipe_blocked = true;
}

// Blocks SIGPIPE in this thread while it lives (unless it is blocked for good), and swallows the
// one a write raised (raised()).
class SigpipeGuard {
 public:
  SigpipeGuard() : temporary_(!detail::t_sigpipe_blocked) {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    if (!temporary_) return;
    ::pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
  }
  ~SigpipeGuard() {
    if (raised_ && !was_pending_) {
      const timespec zero{};
      ::sigtimedwait(&pipe_, nullptr, &zero);
    }
    if (temporary_) ::pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  SigpipeGuard(const SigpipeGuard&) = delete;
  SigpipeGuard& operator=(const SigpipeGuard&) = delete;
  void raised() noexcept { raised_ = true; }

 private:
  bool temporary_;
  sigset_t pipe_{}, old_{};
  bool was_pending_ = false;
  bool raised_ = false;
};

}  // namespace blixard
