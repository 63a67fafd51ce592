// Whether whoever waits for a call's answer is still there. A call that has to wait before it
// can start (a cold start, a full pipe) asks to be told, so a call whose caller hung up is not
// started; a call that starts at once never asks, and costs nothing.
#pragma once

#include <atomic>
#include <memory>
#include <string>

namespace blixard::detail {

class Caller {
 public:
  virtual ~Caller() = default;
  // The call is about to wait: start noticing a hang-up (any thread).
  virtual void watch() = 0;
  // The caller hung up (noticed since watch()).
  bool gone() const { return gone_.load(std::memory_order_relaxed); }
  // Where the call came from (an IP address), when known: a cold start prefers nodes near it.
  virtual std::string address() const { return {}; }

 protected:
  void hung_up() { gone_.store(true, std::memory_order_relaxed); }

 private:
  std::atomic<bool> gone_{false};
};

}  // namespace blixard::detail
