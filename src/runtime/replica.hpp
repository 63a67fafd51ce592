// The replica contract both sides of a node share (as instance.hpp is for functions): one replica
// of a VM set (DESIGN §6), a long-lived guest (libvirt driver) or process (sandbox driver). Unlike
// a function instance it takes no calls from us: it serves its own ports, and we start it, watch it
// and stop it. The control plane holds replicas through this header only.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "blixard/error.hpp"
#include "blixard/v1/network.pb.h"
#include "blixard/v1/vm.pb.h"

namespace blixard::runtime {

// How a replica ended, for its exit callback.
struct ReplicaExit {
  std::string replica;
  // Why: "exited with status 3", "was killed by signal 9 (SIGKILL)", "ran out of memory ...".
  std::string reason;
  bool requested = false;  // stopped or killed by us
  bool oom = false;
};

struct ReplicaOptions {
  std::string vm;    // the set
  std::string name;  // this start of the replica, unique on the node ("webapp-2.4")
  // The set's replica it runs ("webapp-2", its BLIXARD_REPLICA); empty: `name`. During a rolling
  // update the old and the new start of one replica run side by side under different names.
  std::string slot;
  v1::VmSpec spec;  // validated, defaults applied
  // The replica's volume (spec.storage resolved to its pool), attached at
  // volume->mount_point(); made on first use. Unset: none.
  std::optional<v1::VolumeAttachment> volume;
  // The replica's place on its set's network (address, subnet, the node's overlay peers): a
  // sandbox replica gets a network namespace of its own on the network's bridge, a guest a
  // second interface there. Unset: none.
  std::optional<v1::NetworkAttachment> network;
  // The node's fencing epoch it is started under, kept with a guest so that an agent restarted
  // meanwhile can say which epoch it runs under (Driver::adopt).
  std::int64_t epoch = 0;
  // Each line the replica writes to its console (stdout/stderr), without its newline; on a
  // thread of the replica's: must not block for long.
  using LogCallback =
      std::function<void(const std::string& replica, const std::string& stream, std::string line)>;
  LogCallback on_log;
  // Once, when a started replica is gone (whatever the reason).
  std::function<void(const ReplicaExit&)> on_exit;
};

class Replica;

// A replica an earlier agent on this node started that still runs, taken back (Driver::adopt).
struct AdoptedReplica {
  std::shared_ptr<Replica> replica;
  std::int64_t epoch = 0;  // the node's epoch it was started under
};

// A running standby made its set's primary in place (Replica::promote): a role change, not a
// restart.
struct Promotion {
  // The set's new fencing epoch, stored by compare-and-swap before this is asked: the node
  // refuses the volume under an older one (runtime/volume.hpp, fence_volume).
  std::int64_t epoch = 0;
  std::string primary_address;  // BLIXARD_PRIMARY_ADDR from now on
  v1::Readiness readiness;      // what says it serves as the primary
  std::chrono::milliseconds timeout{60'000};
};

class Replica {
 public:
  virtual ~Replica() = default;
  virtual const std::string& name() const = 0;
  // Started and not known to have ended.
  virtual bool alive() const = 0;
  // The replica's declared ports, each with the host port it is reached on.
  virtual std::map<std::uint32_t, std::uint32_t> ports() const = 0;
  // How long it took to be ready.
  virtual std::chrono::microseconds start_duration() const = 0;
  // A shutdown request (SIGTERM, an ACPI power button), then kill after `grace`; returns once it
  // is gone. Idempotent. (A sandboxed replica is PID 1 of its namespace, which ignores a SIGTERM
  // it does not handle: one without a handler is killed at once, as SIGTERM would have.)
  virtual void stop(std::chrono::milliseconds grace) = 0;
  // At once; its exit is reported as requested.
  virtual void kill() = 0;
  // A process whose death ends the replica (a sandboxed one's init: its PID namespace dies with
  // it), for a watchdog outside this process to kill (agent/fence_watchdog.hpp); 0: none known.
  virtual int fence_pid() const { return 0; }
  // It runs on without the agent that started it, which its driver's next agent takes back
  // (Driver::adopt): a guest does, and a ready sandboxed replica its driver keeps
  // (SandboxOptions::keep_replicas).
  virtual bool outlives_agent() const { return false; }
  // It runs on under the node's new epoch (its agent reconnected, or restarted and took it back):
  // what is kept for the next agent says so.
  virtual void adopted(std::int64_t epoch) { (void)epoch; }
  // Makes this standby, which holds its set's volume unmounted (VolumeAttachment.standby), the
  // primary: fences the volume under `promotion.epoch`, mounts it, and has the workload take the
  // primary role; returns once it is ready as such. Throws Error: unavailable where the replica
  // cannot be promoted in place (the caller starts a primary afresh instead), conflict when a
  // newer epoch took the volume, timeout, handler_failed (it ended meanwhile).
  virtual void promote(const Promotion& promotion) {
    (void)promotion;
    throw Error(errc::unavailable, "replica " + name() + " cannot be promoted in place");
  }
};

}  // namespace blixard::runtime
