// Delivery of queued work to functions (DESIGN §5), after Lambda's event source mappings: one
// poller per queue trigger, per event trigger and per function with async invocations. A poller
// receives in batches, calls the function with them and acknowledges what succeeded; a failure
// comes back after a backoff and, after the queue's maxReceives, goes to its dead-letter queue.
// A throttled call is not counted as a failure: it is tried again shortly. How many calls a poller
// keeps in flight follows the queue's depth, from 5 (Lambda's first pollers) up to the function's
// concurrentExecutions, by at most 5 more a second (Lambda's 300 a minute).
//
// Events and async invocations use queues of their own, made here: `event:<trigger>` per event
// trigger (an event is appended to each of its source's triggers in one write: fan-out), and
// `async:<function>` per function; each has a dead-letter queue `<queue>:dead`. Both retry twice
// (three receives), as Lambda's async invocations do.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "blixard/v1/function.pb.h"
#include "blixard/v1/queue.pb.h"
#include "blixard/v1/trigger.pb.h"
#include "control/queues.hpp"
#include "control/telemetry.hpp"

namespace blixard::control {

// Calls `function` with `payload`; `done` runs once, on any thread, with the error the call
// failed with (an Error: throttled, timeout, handler_failed, unavailable, ...) or its result.
using InvokeDone = std::function<void(std::exception_ptr error, std::string result)>;
using Invoke =
    std::function<void(const std::string& function, std::string payload, InvokeDone done)>;

struct DeliveryOptions {
  // A poller's first concurrency and how fast it grows (per second), after Lambda's SQS mapping.
  std::uint32_t initial_pollers = 5;
  std::uint32_t pollers_per_second = 5;
  // A queue trigger's batch when its spec sets none.
  std::uint32_t default_batch_size = 10;
  // A throttled or refused call is tried again after this.
  std::chrono::milliseconds throttle_delay{1000};
  // How long a poller waits for messages before it looks at its settings again.
  std::chrono::milliseconds poll_wait{500};
};

class Deliveries {
 public:
  Deliveries(std::shared_ptr<Queues> queues, Invoke invoke, std::shared_ptr<Telemetry> telemetry,
             DeliveryOptions options = {});
  ~Deliveries();
  Deliveries(const Deliveries&) = delete;
  Deliveries& operator=(const Deliveries&) = delete;

  // A function was stored (or changed): its async queue, and its limits for every poller.
  void function_changed(const std::string& name, const v1::FunctionSpec& spec);
  void function_removed(const std::string& name);
  // A trigger was stored, changed or deleted; http triggers are not this class's business.
  void trigger_changed(const std::string& name, const v1::TriggerSpec& spec);
  void trigger_removed(const std::string& name);

  // Appends the event to the queue of every event trigger on `source`, in one durable write.
  // Returns the triggers it reached (none is not an error: nobody listens yet).
  std::vector<std::string> publish(const std::string& source, const std::string& data_json);

  // Whether an event trigger listens on `source`, or on any source starting with `prefix`.
  bool listens(const std::string& source) const;
  bool listens_prefix(const std::string& prefix) const;

  // Queues an async invocation, durable when it returns; its id. not_found for an unknown
  // function, payload_too_large past the queue's message limit.
  std::string submit(const std::string& function, const std::string& payload);
  // Where an async invocation is: queued, running, retrying, succeeded, failed. not_found once
  // its outcome expired, or for an id never given.
  v1::Invocation invocation(const std::string& id);

  // The queue an event trigger or a function's async invocations use.
  static std::string event_queue(const std::string& trigger) { return "event:" + trigger; }
  static std::string async_queue(const std::string& function) { return "async:" + function; }
  static std::string dead_letters(const std::string& queue) { return queue + ":dead"; }

  // Stops the pollers; calls in flight finish (their acknowledgements are written or lost).
  void close();

 private:
  struct Poller;
  enum class Kind { queue, event, async };
  struct Limits {
    std::uint32_t concurrency = 1;
    std::chrono::milliseconds timeout{30000};
  };
  // mutex_ held: starts, changes or stops the poller `key` (a trigger, or "async:<function>").
  void run_poller(const std::string& key, Kind kind, const std::string& queue,
                  const std::string& function, std::uint32_t batch);
  void stop_poller(const std::string& key);
  void poll(const std::shared_ptr<Poller>& p);
  // How a call with `batch` ended: acknowledged, failed (back later or dead-lettered), or not
  // counted (refused). Static: it runs on the call's thread and may outlive nothing but `p`.
  static void delivered(const Poller& p, const std::vector<QueueMessage>& batch,
                        const std::exception_ptr& error, const std::string& result);
  static std::string payload_of(const Poller& p, const std::vector<QueueMessage>& batch);
  static void record(const Poller& p, const char* reason, const std::string& message);
  Limits limits_of(const std::string& function) const;

  std::shared_ptr<Queues> queues_;
  Invoke invoke_;
  std::shared_ptr<Telemetry> telemetry_;
  DeliveryOptions options_;

  mutable std::mutex mutex_;
  std::map<std::string, Limits> functions_;
  std::map<std::string, v1::TriggerSpec> triggers_;  // queue and event triggers, by name
  std::map<std::string, std::shared_ptr<Poller>> pollers_;
  std::vector<std::shared_ptr<Poller>> retired_;  // stopped, joined at close()
  bool closed_ = false;
};

}  // namespace blixard::control
