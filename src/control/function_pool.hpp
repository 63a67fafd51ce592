// Function pools on this node (DESIGN §5): per function, warm (idle) and busy instances of its
// current spec. A call takes a warm instance or starts one (a cold start) under maxInstances;
// past maxInstances or concurrentExecutions it is throttled at once. Idle instances stop after
// keepWarm (scale to zero) but never below minInstances nor below what a Knative-like autoscaler
// (stable and panic windows of in-flight concurrency) wants. A spec update drains old instances;
// a deletion or shutdown kills everything and fails the calls in flight with `unavailable`.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/any_io_executor.hpp>

#include "blixard/v1/function.pb.h"
#include "control/node_registry.hpp"
#include "control/telemetry.hpp"
#include "runtime/instance.hpp"

namespace blixard::control {

struct PoolOptions {
  // How often idle instances are reaped and the autoscaler looks at demand.
  std::chrono::milliseconds tick{100};
  // Knative's defaults; a function's stable window is never longer than its keepWarm (so an
  // idle function can reach zero once keepWarm has passed), the panic window a tenth of it.
  std::chrono::milliseconds stable_window{std::chrono::seconds(60)};
  double panic_window_fraction = 0.1;
  // Panic (scale up at once, never down) when the panic window wants this many times the
  // instances there are.
  double panic_threshold = 2.0;
  // How long a stopping instance may take to exit after EOF on its request pipe.
  std::chrono::milliseconds stop_grace{200};
};

// Told, under the pools' lock, when an instance became ready (gone false) and when it ended
// (gone true: name, function and node only). It must only queue (InstanceRecords does).
using InstanceObserver = std::function<void(const v1::FunctionInstance&, bool gone)>;

class FunctionPools {
 public:
  // Where a new instance starts; the default is NodeRegistry::place.
  using Place = std::function<Placed(const PlacementRequest&)>;
  // Instances start on the registry's nodes, where `place` says; each records its node.
  FunctionPools(std::shared_ptr<NodeRegistry> nodes, std::shared_ptr<Telemetry> telemetry,
                PoolOptions options = {}, Place place = {});
  ~FunctionPools();
  FunctionPools(const FunctionPools&) = delete;
  FunctionPools& operator=(const FunctionPools&) = delete;

  // Sets who is told of instances becoming ready and ending (before the first call).
  void observe(InstanceObserver observer);

  // Runs one invocation. `version` is the function's resource_version (a newer one than the
  // pool knows replaces its spec). Throws Error: throttled, unavailable (deleted, shut down),
  // and the driver's errors (timeout, handler_failed, payload_too_large).
  runtime::InvocationResult invoke(std::int64_t version, const runtime::Invocation& invocation);
  // The same, admitted at once and answered through `complete` (on any thread, never inside this
  // call). When a ready instance has room the call is sent and its answer read on `executor`'s
  // reactor; when it has to wait (a cold start, a full pipe) it takes its place now (counted
  // toward concurrentExecutions and maxInstances) and waits on a thread of its own, so callers
  // never hold a thread of theirs for it. Throws what invoke() throws at once (throttled,
  // unavailable). True once the call is on its way (always, when it does not throw).
  bool try_invoke_async(std::int64_t version,
                        const std::shared_ptr<const runtime::Invocation>& invocation,
                        const boost::asio::any_io_executor& executor,
                        runtime::CallCompletion complete);

  // The function was created or changed: calls go to instances of the new spec, old instances
  // drain; minInstances are started.
  void update(const std::string& function, std::int64_t version, const v1::FunctionSpec& spec);
  // The function was deleted: its instances are killed, its calls fail.
  void remove(const std::string& function);

  // Moves work off a node (`node drain`): its idle instances stop now, busy ones once their calls
  // end; new instances start elsewhere as long as the registry keeps the node cordoned. Returns
  // how many instances were running there.
  std::uint32_t drain_node(const std::string& node);
  // What this node runs of the pools: instances (starting or running) and their memory.
  struct Load {
    std::uint32_t instances = 0;
    std::uint64_t memory_mib = 0;
  };
  Load load_on(const std::string& node) const;

  // Fills instances_running (busy), instances_warm and instances[].
  void fill_status(const std::string& function, v1::FunctionStatus& status) const;

  // New calls and starts fail with unavailable ("shut down"); what runs keeps running.
  void close();
  // Kills every instance, fails calls in flight, waits for the instance threads' callbacks. The
  // nodes (and their drivers) belong to their owner: shut them down first, so starts in
  // progress fail at once instead of finishing.
  void shutdown();

 private:
  struct Slot;
  struct Pool;
  // One try of invoke(); a call that found its instance already dead is retried once.
  runtime::InvocationResult invoke_attempt(std::int64_t version, const runtime::Invocation& inv,
                                           int attempt);
  // Where an admitted call runs: its slot (its place taken), whether it waits for a start, and
  // whether it makes that start itself (with `spec`).
  struct Placement {
    std::shared_ptr<Slot> slot;
    v1::FunctionSpec spec;
    bool cold = false;
    bool starter = false;
  };
  // mutex_ held: places a call admitted into `pool` on `ready`, else on a starting instance or a
  // new one (throws throttled past maxInstances).
  Placement place(Pool& pool, std::shared_ptr<Slot> ready);
  // The rest of a placed call: the start (or the wait for it), then the call.
  runtime::InvocationResult run_placed(std::int64_t version, const runtime::Invocation& inv,
                                       const Placement& placed, int attempt);
  // Runs `body` on a thread of its own and completes with its outcome; without a thread, gives
  // `placed` back and throws unavailable.
  void detach_call(const std::shared_ptr<const runtime::Invocation>& inv,
                   const runtime::CallCompletion& complete, const Placement& placed,
                   std::function<runtime::InvocationResult()> body);
  // mutex_ held: the pool of a call that may run (throws throttled, unavailable), and a ready
  // instance of it with room (null if none), preferring one `reactor` (an execution context)
  // already reads.
  Pool& admit(std::int64_t version, const runtime::Invocation& inv);
  std::shared_ptr<Slot> pick_ready(Pool& pool, const void* reactor) const;
  // mutex_ held: a call takes its place on a slot, and gives it back (true: wake changed_).
  void take_place(Pool& pool, Slot& slot);
  bool give_place(const std::string& function, Slot& slot);
  // The same with mutex_ not held: takes it, and wakes changed_ when needed.
  void release_place(const std::string& function, Slot& slot);
  // mutex_ held: what the caller is told of `e` (unavailable once deleted or shut down).
  Error map_error(const std::string& function, const Error& e) const;
  void record_success(const std::string& function, const std::string& request_id, const Slot& slot,
                      const runtime::InvocationResult& out);
  void record_failure(const std::string& function, const Error& e, bool cold);
  // A call on `instance` failed with `raw`: its place is given back and the failure recorded,
  // unless it is to be retried (the instance died before the call reached it).
  struct Failure {
    Error error;
    bool retry;
  };
  Failure call_failed(const std::string& function, const std::shared_ptr<Slot>& slot,
                      const runtime::Instance& instance, const Error& raw, bool cold,
                      bool first_try);
  // A try_invoke_async() call in flight, and how it ends.
  struct AsyncCall {
    std::int64_t version;
    std::shared_ptr<const runtime::Invocation> inv;
    std::shared_ptr<Slot> slot;
    std::shared_ptr<runtime::Instance> instance;
    runtime::CallCompletion complete;
  };
  void async_done(const AsyncCall& call, const std::exception_ptr& error,
                  runtime::InvocationResult out);
  void background_done();
  // Takes a dead instance out of rotation at once, before its exit is reported; records why.
  void retire(const std::string& function, const std::shared_ptr<Slot>& slot,
              const std::string& why);
  using Clock = std::chrono::steady_clock;

  Pool& pool_for(const std::string& function);
  // mutex_ held: the slot is gone; what its placement reserved is given back.
  void end_slot(Slot& slot);
  InstanceObserver observer_;
  void apply_spec(Pool& pool, std::int64_t version, const v1::FunctionSpec& spec);
  // Starts the instance of a slot in phase Starting; mutex_ is not held. `data_path` and
  // `caller_address`: the input path and the origin of the call it starts for (placement prefers
  // a node holding the one and near the other).
  void start_slot(const std::string& function, const std::shared_ptr<Slot>& slot,
                  const v1::FunctionSpec& spec, const std::string& data_path = {},
                  const std::string& caller_address = {});
  void start_in_background(Pool& pool, std::uint32_t count);
  void on_instance_exit(const std::string& function, const std::weak_ptr<Slot>& slot,
                        const runtime::InstanceExit& exit);
  void note_concurrency(Pool& pool);
  void publish_gauges(const Pool& pool);
  void record(const std::string& function, const char* reason, const std::string& message,
              const std::string& node = {});
  [[noreturn]] void throttle(Pool& pool, const std::string& why);
  void maintenance_loop();
  void tick(std::vector<std::shared_ptr<runtime::Instance>>& to_stop);

  std::shared_ptr<NodeRegistry> nodes_;
  std::shared_ptr<Telemetry> telemetry_;
  PoolOptions options_;
  Place place_;

  mutable std::mutex mutex_;
  // Held across one cold start's placement (taken before mutex_, never while it is held).
  std::mutex placement_mutex_;
  std::condition_variable changed_;
  std::map<std::string, std::unique_ptr<Pool>> pools_;
  bool closed_ = false;
  bool shut_down_ = false;
  std::size_t background_threads_ = 0;
  std::uint64_t slot_counter_ = 0;
  std::thread maintenance_;
};

}  // namespace blixard::control
