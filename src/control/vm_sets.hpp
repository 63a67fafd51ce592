// VM sets on the cluster's nodes (DESIGN §6): the controller that keeps each set's replicas
// running. A set wants `replicas` replicas (none once stopped), named "<vm>-1" .. "<vm>-N"; each is
// placed by the scheduler (resources, selectors, spread over the set) and started on its node
// (control/node.hpp). A replica that fails, or is lost with its node, is started again (elsewhere
// if the scheduler says so) after a backoff; scaling down stops the highest ordinals first; a
// deleted set's replicas stop. Its status (each replica's node, phase, ports) comes from here.
//
// Each change of the spec other than `replicas` and `stopped` is a new revision, rolled out by
// the set's update strategy: "rolling" starts a replica's new revision beside its old one, and
// once the new one has been ready for minHealthyTime, takes the old one out of the load balancer,
// lets its connections drain and stops it; then the next replica. A new start that fails halts
// the rollout: the set keeps serving (and restarting, and scaling) the last revision that ran.
// So does a new run not ready and healthy for minHealthyTime within healthyDeadline (it is
// stopped), and a rollout where no replica became healthy within progressDeadline (Nomad's update
// block). With autoRevert, a halted rollout goes back to the last revision all replicas ran: new
// runs start from it and the replicas already updated are rolled back to it.
// "recreate" stops each old replica, then starts the new one. A set with storage is rolled in
// place whatever its strategy (a volume has one writer at a time): each replica stops, then its
// new revision starts on the same volume. The last 10 revisions are kept through a VmRevisionLog
// (control/vm_revisions.hpp): read when a set is first seen, so a restarted server numbers on.
//
// A replica of a set with storage gets its volume (control/volumes.hpp) with each start, and
// goes back to the node holding it when the pool is node-local; one of a set on a network, its
// address there (control/networks.hpp) and the nodes its node's overlay reaches.
//
// A set with a primaryElectionPolicy has one primary (docs/vms.md, "Primary and failover"): the
// only replica with the set's volume ("<vm>-data", on a shared pool) and the only one the load
// balancer sends to; the others run as standbys (BLIXARD_ROLE=replica, serving and writing
// nothing). When the primary's run is gone (it exited, failed its health check, or was lost with
// its node), the policy picks a running standby, whose standby run stops; its primary run then (a)
// fences: bumps the stored epoch in one compare-and-swap (control/primaries.hpp), (b) is placed and
// started with the volume under that epoch, which its node refuses to an older one, and (c) serves
// through the balancer once ready. A standby guest (libvirt driver) holds the volume unmounted from
// its start: it is promoted in place instead of (b), its node fencing the volume and its guest
// mounting it and starting the workload as the primary. Each step is timed in the set's status and
// published as an event. A switchover (the spec's `primary` changed) stops the old primary cleanly
// first, then promotes the same way.
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
#include "common/defaults.hpp"
#include "control/networks.hpp"
#include "control/node_registry.hpp"
#include "control/primaries.hpp"
#include "control/telemetry.hpp"
#include "control/vm_revisions.hpp"
#include "control/volumes.hpp"

namespace blixard::control {

struct VmSetsOptions {
  // How often the sets are checked besides on a change (a backoff that ended, a node that joined).
  std::chrono::milliseconds tick{250};
  // A failed replica is started again after this, doubled per failure in a row up to the max.
  std::chrono::milliseconds restart_backoff{500};
  std::chrono::milliseconds max_restart_backoff{std::chrono::seconds(30)};
  // How long a stopping replica has after SIGTERM (or the guest after ACPI power off).
  std::chrono::milliseconds stop_grace{std::chrono::seconds(10)};
  // How long a replica replaced by a rollout keeps its connections after the load balancer
  // stopped sending it new ones (Kubernetes users add a preStop sleep for the same reason).
  std::chrono::milliseconds drain{std::chrono::seconds(1)};
  // A rollout's minHealthyTime, healthyDeadline and progressDeadline when the spec gives none.
  std::chrono::milliseconds min_healthy_time{k_default_min_healthy_time};
  std::chrono::milliseconds healthy_deadline{k_default_healthy_deadline};
  std::chrono::milliseconds progress_deadline{k_default_progress_deadline};
};

// A ready replica's declared port as reached from the server.
struct VmEndpoint {
  std::string replica;
  std::string address;  // the node's
  std::uint32_t port = 0;
};

class VmSets {
 public:
  // `volumes`: where sets with storage get their volumes; `networks`: where sets on a network get
  // their replicas' addresses (none: such sets' replicas fail); `revisions`: where each set's
  // revisions are kept across restarts, `primaries` its primary and fencing epoch (none: in
  // memory only).
  VmSets(std::shared_ptr<NodeRegistry> nodes, std::shared_ptr<Telemetry> telemetry,
         std::shared_ptr<Volumes> volumes, std::shared_ptr<Networks> networks,
         std::shared_ptr<VmRevisionLog> revisions, std::shared_ptr<PrimaryLog> primaries,
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
  struct Run;
  struct Hub;
  void loop();
  // Checks running replicas' health (TCP or HTTP, per their Readiness); kills one that failed
  // it failure_threshold times in a row, and the controller replaces it.
  void health_loop();
  static std::chrono::milliseconds check_interval(const v1::Readiness& readiness);
  // One pass over the sets (mutex_ held): starts what is missing or due a restart, stops what is
  // past the wanted count, moves rollouts on.
  void reconcile();
  void roll(const std::string& vm, Set& set, int desired);  // mutex_ held
  // Keeps a set with a primary on one: elects, fails over, switches over (mutex_ held).
  void elect(const std::string& vm, Set& set, int desired);
  // Makes `replica` on `node` the set's primary under the next epoch (stored first), for `run`;
  // returns the epoch. Throws Error(conflict) when the stored epoch moved meanwhile.
  std::int64_t fence(const std::string& vm, Run& run, const std::string& replica,
                     const std::string& node);
  // Makes the slot's running standby, which holds the volume, the primary in place on a thread
  // of its own: fenced (the epoch's compare-and-swap), then promoted on its node; when that
  // fails the standby makes way and reconcile() starts the primary afresh (mutex_ held).
  void promote_in_place(const std::string& vm, Set& set, Slot& slot);
  // A step of the set's failover, timed from its detection, published (mutex_ held).
  void failover_step(const std::string& vm, Set& set, const std::string& step,
                     const std::string& message);
  // Places and starts a run of the slot's replica (its current one, or `next` in a rolling
  // update) on a thread of its own (mutex_ held).
  void start(const std::string& vm, Set& set, Slot& slot, bool next);
  // Takes the run out of the load balancer, waits `drain`, stops it (mutex_ held).
  void retire(Slot& slot, const std::shared_ptr<Run>& run, std::chrono::milliseconds drain);
  void failed(Slot& slot, const std::string& why);  // mutex_ held: backoff, then again
  // Halts the set's rollout: new runs start from `back_to` again, or with autoRevert from the last
  // revision all replicas ran (those updated are rolled back to it); returns what happened.
  static std::string halt(Set& set, std::int64_t back_to, const std::string& why);
  // Whether a replica other than `slot`'s is running (it serves while `slot` is replaced).
  static bool ready_beside(const Set& set, const Slot& slot);
  void exited(const std::string& vm, int ordinal, std::uint64_t generation,
              const runtime::ReplicaExit& exit);
  void publish(const std::string& vm, const std::string& reason, const std::string& what);

  std::shared_ptr<NodeRegistry> nodes_;
  std::shared_ptr<Telemetry> telemetry_;
  std::shared_ptr<Volumes> volumes_;
  std::shared_ptr<Networks> networks_;
  std::shared_ptr<VmRevisionLog> revisions_;
  std::shared_ptr<PrimaryLog> primaries_;
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
  std::thread health_;
};

}  // namespace blixard::control
