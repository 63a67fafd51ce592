// VM sets on the cluster's nodes (DESIGN §6): the controller that keeps each set's replicas
// running. A set wants `replicas` replicas (none once stopped), named "<vm>-1" .. "<vm>-N"; each is
// placed by the scheduler (resources, selectors, spread over the set) and started on its node
// (control/node.hpp). A replica that fails, or is lost with its node, is started again (elsewhere
// if the scheduler says so) after a backoff; scaling down stops the highest ordinals first; a
// deleted set's replicas stop. Its status (each replica's node, phase, ports) comes from here.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "blixard/v1/vm.pb.h"
#include "control/node_registry.hpp"
#include "control/telemetry.hpp"

namespace blixard::control {

struct VmSetsOptions {
  // How often the sets are checked besides on a change (a backoff that ended, a node that joined).
  std::chrono::milliseconds tick{250};
  // A failed replica is started again after this, doubled per failure in a row up to the max.
  std::chrono::milliseconds restart_backoff{500};
  std::chrono::milliseconds max_restart_backoff{std::chrono::seconds(30)};
  // How long a stopping replica has after SIGTERM (or the guest after ACPI power off).
  std::chrono::milliseconds stop_grace{std::chrono::seconds(10)};
};

// A ready replica's declared port as reached from the server.
struct VmEndpoint {
  std::string replica;
  std::string address;  // the node's
  std::uint32_t port = 0;
};

class VmSets {
 public:
  VmSets(std::shared_ptr<NodeRegistry> nodes, std::shared_ptr<Telemetry> telemetry,
         VmSetsOptions options = {});
  ~VmSets();
  VmSets(const VmSets&) = delete;
  VmSets& operator=(const VmSets&) = delete;

  // The set was created or changed (`spec` validated). Replicas already running keep the spec
  // they started with; new ones get this one.
  void update(const std::string& vm, std::int64_t version, const v1::VmSpec& spec);
  // The set was deleted: its replicas stop.
  void remove(const std::string& vm);
  // Fills `status` (phase, ready replicas, each replica) for the set as stored with `spec`.
  void fill_status(const std::string& vm, const v1::VmSpec& spec, v1::VmStatus& status) const;
  // The ready replicas serving `port` of the set, in ordinal order.
  std::vector<VmEndpoint> endpoints(const std::string& vm, std::uint32_t port) const;
  // Every set's declared ports (what the load balancer listens for).
  std::map<std::string, std::vector<std::uint32_t>> exposed() const;
  // Where the load balancer serves `port` of the set ("host:port"; empty: nowhere any more), for
  // its status.
  void set_balanced(const std::string& vm, std::uint32_t port, const std::string& address);
  // Ends the controller: nothing more starts or restarts (the nodes, shut down next, end the
  // replicas); waits for starts in flight. Later updates are ignored.
  void shutdown();

  // Where the sets' console lines are kept in Telemetry (beside functions' logs).
  static std::string log_key(const std::string& vm);

 private:
  struct Set;
  struct Slot;
  struct Hub;
  void loop();
  // One pass over the sets (mutex_ held by `lock`): starts what is missing or due a restart,
  // stops what is past the wanted count.
  void reconcile(std::unique_lock<std::mutex>& lock);
  // Places and starts the slot's replica on a thread of its own (mutex_ held).
  void start(const std::string& vm, Set& set, Slot& slot);
  void stop(Slot& slot);                            // mutex_ held
  void failed(Slot& slot, const std::string& why);  // mutex_ held: backoff, then again
  Slot* find(const std::string& vm, int ordinal, std::uint64_t generation);  // mutex_ held
  void exited(const std::string& vm, int ordinal, std::uint64_t generation,
              const runtime::ReplicaExit& exit);
  void publish(const std::string& vm, const std::string& reason, const std::string& what);

  std::shared_ptr<NodeRegistry> nodes_;
  std::shared_ptr<Telemetry> telemetry_;
  VmSetsOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable idle_;  // a start or stop thread finished
  std::map<std::string, std::shared_ptr<Set>> sets_;
  std::map<std::string, std::map<std::uint32_t, std::string>> balanced_;
  std::size_t workers_ = 0;  // start and stop threads running
  bool closed_ = false;
  std::mutex placement_mutex_;  // one placement at a time
  std::shared_ptr<Hub> hub_;
  std::thread loop_;
};

}  // namespace blixard::control
