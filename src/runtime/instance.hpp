// The instance contract both sides of a node share: an invocation, its result, how an instance
// ended, and the handle of a running instance. The control plane holds instances through this
// header only (whatever node runs them: in this process through a Driver, or a remote agent over
// the agent channel); drivers (driver.hpp) and the agent implement it.
#pragma once

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <string>

#include <boost/asio/any_io_executor.hpp>

#include "blixard/detail/caller.hpp"
#include "blixard/error.hpp"
#include "blixard/v1/function.pb.h"

namespace blixard::runtime {

struct Invocation {
  std::string function;
  v1::FunctionSpec spec;  // validated, defaults applied
  std::string payload;    // JSON text
  std::string request_id;
  std::chrono::milliseconds timeout{0};  // 0: the spec's timeout
  // Who waits for the answer, watched while the call waits to start; null: somebody always does.
  std::shared_ptr<detail::Caller> caller;

  bool abandoned() const { return caller && caller->gone(); }
};

struct InvocationResult {
  std::string result;  // JSON text from the handler
  std::chrono::microseconds duration{0};
  bool cold_start = true;
  std::string node;  // where it ran (set by the control plane's pool)
};

// How an instance ended, for Instance's exit callback and the pool's events.
struct InstanceExit {
  std::string instance;
  // Why: "exited with status 3", "was killed by signal 9 (SIGKILL)", "ran out of memory ...".
  std::string reason;
  bool requested = false;  // stopped or killed by us (stop(), kill(), a timeout, shutdown)
  bool oom = false;
};

struct InstanceOptions {
  std::string function;
  v1::FunctionSpec spec;  // validated, defaults applied
  // Each line the instance writes to stdout/stderr (stream "stdout" or "stderr", no newline).
  // Runs on the instance's own thread: must not block for long.
  std::function<void(const std::string& instance, const std::string& stream, std::string line)>
      on_log;
  // Once, when a started instance is gone (whatever the reason), on the instance's thread.
  std::function<void(const InstanceExit&)> on_exit;
};

// How an asynchronous call ends: an exception (the Error call() would throw) or the result.
using CallCompletion = std::function<void(std::exception_ptr error, InvocationResult result)>;

class Instance {
 public:
  // Kills the process if it still runs (without waiting for it).
  virtual ~Instance() = default;
  virtual const std::string& name() const = 0;
  // Create-to-ready time of this instance.
  virtual std::chrono::microseconds init_duration() const = 0;
  virtual bool alive() const = 0;
  // Sends one invocation and waits for its response. Thread-safe. Throws blixard::Error:
  // timeout (the instance is killed: a timed-out handler cannot be trusted to recover),
  // handler_failed (raised, crashed, OOM, protocol error; with the last log lines),
  // payload_too_large, unavailable (the instance was stopped meanwhile).
  virtual InvocationResult call(const Invocation& invocation) = 0;
  // The same without a thread waiting: sends the invocation and returns; the response is read on
  // `executor`'s reactor (so an io thread serves other work while the handler runs) and
  // `complete` runs once, on that executor's thread or another reader's, never inside this call.
  // What call() would throw before sending (no longer running, payload too large) is thrown
  // here. False, having done nothing, when the request would have to wait to be written (it
  // does not fit in the handler's request pipe beside the requests queued ahead, or another frame
  // is being written): make it with call(). `executor`'s context must keep running until `complete`
  // has run.
  virtual bool call_async(const Invocation& invocation,
                          const boost::asio::any_io_executor& executor,
                          CallCompletion complete) = 0;
  // EOF on the request pipe (a clean exit), SIGKILL after `grace`; returns once reaped.
  virtual void stop(std::chrono::milliseconds grace) = 0;
  // SIGKILL now; calls in flight fail with unavailable. Does not wait.
  virtual void kill() = 0;
};

}  // namespace blixard::runtime
