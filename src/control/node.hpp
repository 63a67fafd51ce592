// The control plane's view of a machine that runs instances (DESIGN §1, §2): a `Node`. Control
// talks to nodes only through this interface; two implementations carry it: the in-process node
// of an agent hosting the server (`agent::LocalNode`, straight over its Driver) and `RemoteNode`,
// an agent on the other end of the agent channel (control/remote_node.hpp). Instances come back
// as runtime::Instance handles (runtime/instance.hpp, the contract both sides share), so a pool
// calls a remote instance exactly as a local one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "blixard/v1/agent.pb.h"
#include "blixard/v1/node.pb.h"
#include "blixard/v1/vm.pb.h"
#include "runtime/instance.hpp"
#include "runtime/replica.hpp"
#include "sched/proto.hpp"

namespace blixard::control {

// What a node is asked to run: one instance of a function, under the node's fencing epoch. Its
// state and logs come back through `instance.on_exit` and `instance.on_log` (the node's event
// stream for this instance).
struct Assignment {
  std::int64_t epoch = 0;
  runtime::InstanceOptions instance;
};

// What a node is asked to run for a VM set: one replica, under the node's fencing epoch. Its exit
// and console come back through `replica.on_exit` and `replica.on_log`.
struct ReplicaAssignment {
  std::int64_t epoch = 0;
  runtime::ReplicaOptions replica;
};

class Node {
 public:
  virtual ~Node() = default;
  virtual const std::string& name() const = 0;
  // The node as its agent describes it: labels, capacity, drivers, address (spec only).
  virtual v1::NodeSpec describe() const = 0;
  // Starts the assignment's instance and returns once it is ready. Throws blixard::Error as
  // runtime::Driver::start does, and unavailable when the node is gone or shut down.
  virtual std::shared_ptr<runtime::Instance> start(const Assignment& assignment) = 0;
  // Starts the assignment's replica and returns once it is ready; throws as start() does.
  virtual std::shared_ptr<runtime::Replica> start_replica(const ReplicaAssignment& assignment) = 0;
  // Removes a volume's data from the node (runtime::Driver::remove_volume); throws as start().
  virtual void remove_volume(const v1::VolumeAttachment& volume) = 0;
  // The other nodes' addresses, after one joined or left: what the node's VM network overlays
  // flood to (runtime/replica_network.hpp).
  virtual void overlay_peers(const std::vector<std::string>& addresses) = 0;
  // Names of the instances (and replicas) it runs for the control plane.
  virtual std::vector<std::string> instances() const = 0;
  // Ends the node's service: its instances are killed (a local node) or given up (a remote one:
  // they exit as lost), starts and calls in flight fail with unavailable, later starts too.
  virtual void shutdown() = 0;
  // The connection to the node is gone, but its agent may be back within the lease: as
  // shutdown(), except that what its agent keeps across a lost connection (a remote node's
  // guests that are no set's primary) is held, alive, for adopt() on the node's next
  // connection, until shutdown(). Default: shutdown().
  virtual void disconnect(const std::string& why) {
    (void)why;
    shutdown();
  }
  // This is the node's new connection, whose agent says it still runs `running` (names and the
  // epochs they were assigned under): takes from `previous` (its last connection) the replicas it
  // holds that the agent still runs under the epoch they were assigned, from now on under
  // `epoch`, and returns their names. Default: none (a local node is never disconnected).
  virtual std::vector<std::string> adopt(Node& previous,
                                         const std::vector<v1::RunningInstance>& running,
                                         std::int64_t epoch) {
    (void)previous;
    (void)running;
    (void)epoch;
    return {};
  }
};

// The label a node carries for each of its drivers ("driver.libvirt": "true").
using sched::driver_label;

// The driver that runs a replica of `spec` on `node`: the one the spec names, else the node's VM
// driver (libvirt where its agent runs one, the sandbox otherwise); "" when the node lacks it.
std::string replica_driver(const v1::VmSpec& spec, const v1::NodeSpec& node);

}  // namespace blixard::control
