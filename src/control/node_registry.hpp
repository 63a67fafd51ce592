// The nodes of the cluster as the control plane knows them (DESIGN §3): which are connected, their
// fencing epochs, their liveness, and where a new instance goes. Each node is a stored object
// (`/registry/nodes/NAME`) written on a change of phase (join, NotReady, Lost, cordon), never per
// heartbeat: liveness is kept here, in memory, so a server holds many agents at little cost.
//
// An agent's node is Ready while its channel is up and it heartbeats; when the channel drops it
// is NotReady (its function instances and primaries are given up at once, so calls on them fail
// fast and new ones go elsewhere; its other VM replicas are held), and Lost once it has not been
// heard from for the lease (a link cut looks the same from here): then what was held is given up
// too. An in-process node never lapses. A node that joins again gets a new epoch: its
// assignments from before are stale, and its agent stops them before it takes new work, except
// the held replicas it still runs, which the new join adopts (docs/vms.md, "Agent restarts").
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "blixard/v1/agent.pb.h"
#include "blixard/v1/function.pb.h"
#include "blixard/v1/node.pb.h"
#include "blixard/v1/vm.pb.h"
#include "control/node.hpp"
#include "sched/cluster.hpp"
#include "store/store.hpp"

namespace blixard::control {

inline constexpr const char* k_nodes_prefix = "/registry/nodes/";

struct NodeRegistryOptions {
  // A node not heard from for this long is Lost; with the checks below a cut link is found, and
  // its work placed again, within 5 s (bench/node_loss.py).
  std::chrono::milliseconds lease{4000};
  // How often agents heartbeat (told in their welcome) and the server pings them, and how often
  // leases are checked; at most a quarter of the lease (the fence watchdog acts at half).
  std::chrono::milliseconds heartbeat{1000};
};

// Where an instance of a function should start: the function and, per node, how many of its
// instances run there now (for spreading).
struct PlacementRequest {
  std::string function;  // or the VM set, with vm_spec
  const v1::FunctionSpec* spec = nullptr;
  std::map<std::string, std::uint32_t> instances_per_node;
  // The input path of the call that needs the instance (its event's placement.dataPathFrom
  // field): nodes holding it score higher.
  std::string data_path;
  // Where the call came from (an IP address): when it is a node's, that node is the caller and
  // nodes nearer it score higher; otherwise the server is, and nodes nearer it do.
  std::string caller_address;
  // A replica of a VM set instead of a function (its resources and placement rules; spread
  // over the set's replicas in instances_per_node).
  const v1::VmSpec* vm_spec = nullptr;
  // The only node it may go to (a replica whose volume lives there); empty: any.
  std::string only_node;
};

// A node another one may time its round trips to (its agent's probe).
struct ProbeTarget {
  std::string node;
  std::string address;
  std::uint32_t probe_port = 0;
};

// A placement: the node, the epoch to assign under, why it was chosen ("gpu=available, holds
// /data, binpack: 14% allocated after placement"), and what it reserved there (given back with
// NodeRegistry::release when the instance is gone).
struct Placed {
  std::shared_ptr<Node> node;
  std::int64_t epoch = 0;
  std::string reasons;
  sched::Resources reserved;
};

class NodeRegistry {
 public:
  NodeRegistry(std::shared_ptr<store::Store> store, NodeRegistryOptions options = {});
  ~NodeRegistry();
  NodeRegistry(const NodeRegistry&) = delete;
  NodeRegistry& operator=(const NodeRegistry&) = delete;

  const NodeRegistryOptions& options() const noexcept { return options_; }

  // A node joins (or joins again): stored as Ready with the next epoch, which is returned.
  // `in_process` nodes never lapse. Throws already_exists when a connected node has the name.
  // `running`: what its agent says it still runs; the replicas among them that the node's last
  // connection held are adopted by `node` (Node::adopt), their names put in `adopted`.
  std::int64_t join(const std::shared_ptr<Node>& node, bool in_process,
                    const std::vector<v1::RunningInstance>& running = {},
                    std::vector<std::string>* adopted = nullptr);
  // The node's agent was heard from (any frame, a heartbeat).
  void heard(const std::string& name);
  // The server's round trip to the node's agent, just measured: nearer nodes score higher.
  void measured(const std::string& name, std::chrono::microseconds round_trip);
  // The last round trip measured to the node (0 for an in-process node; nullopt if none yet).
  std::optional<std::chrono::microseconds> round_trip(const std::string& name) const;
  // Up to `max` other connected nodes with a probe for `name`'s agent to time (a different few
  // each time when there are more).
  std::vector<ProbeTarget> probe_targets(const std::string& name, std::size_t max);
  // The addresses of the connected nodes other than `name` (each once; not `name`'s own): the
  // other ends of its network overlays.
  std::vector<std::string> peer_addresses(const std::string& name) const;
  // `name`'s agent measured a round trip to `peer`'s.
  void peer_measured(const std::string& name, const std::string& peer,
                     std::chrono::microseconds round_trip);
  // What other agents measured to the node, by their names.
  std::map<std::string, std::chrono::microseconds> peer_round_trips(const std::string& name) const;
  // The node's channel is gone (`node` is the one that joined; a newer join is left alone): its
  // instances are given up now, but for the replicas `node` holds (Node::disconnect); it is
  // NotReady until its lease lapses, then Lost, and what it held is given up.
  void disconnected(const std::shared_ptr<Node>& node, const std::string& why);
  // New work avoids a cordoned node; what runs there stays.
  void cordon(const std::string& name, bool cordoned);

  // A connected node by name (null if none).
  std::shared_ptr<Node> find(const std::string& name) const;
  // The epoch of a connected node (0 if none).
  std::int64_t epoch(const std::string& name) const;
  // The node for a new instance, by the scheduler (src/sched: resources, selectors, affinity,
  // taints, cordons, spread over the function's instances, binpack), its resources reserved
  // there. Throws unavailable saying why no node fits ("0 of 3 nodes fit: 2 cordoned, ...").
  Placed place(const PlacementRequest& request);
  // An instance placed on `node` is gone: what it reserved is free again.
  void release(const std::string& node, sched::Resources reserved);

  // Gives every node up (shutdown()) and stops checking leases.
  void shutdown();

 private:
  // join() under the lock; `previous` gets the node's last connection, which may hold replicas.
  std::int64_t add(std::shared_ptr<Node> node, bool in_process, std::shared_ptr<Node>& previous);
  // Every connected node but `except` hears the others' addresses (its VM networks' overlay
  // peers).
  void tell_overlay_peers(const std::string& except);
  std::vector<std::string> peer_addresses_locked(const std::string& name) const;
  struct Entry {
    std::shared_ptr<Node> node;  // null once disconnected
    std::shared_ptr<Node> held;  // the last connection's, while it holds replicas for a rejoin
    bool in_process = false;
    std::int64_t epoch = 0;
    bool cordoned = false;
    std::chrono::steady_clock::time_point last_heard;
    std::string phase;
    sched::NodeId id = 0;  // in index_
    // The least of the last few round trips measured: the path's latency without the queueing
    // a busy moment adds to one sample.
    std::optional<std::chrono::microseconds> round_trip;
    std::deque<std::chrono::microseconds> round_trips;
    std::map<std::string, std::chrono::microseconds> peers;  // measured by (or to) each peer
  };
  // The connected node a call from `address` came from (mutex_ held): the one agent's node with
  // that address; null when none or several (the call is then the server's).
  const Entry* caller_node(const std::string& address) const;
  // Keeps the scheduler's index in step with an entry (mutex_ held).
  void index(const std::string& name, Entry& entry);
  // Stores the node's object with its phase (and the spec from `entry.node` when connected).
  void write(const std::string& name, const Entry& entry, const std::string& reason);
  void lease_loop();

  std::shared_ptr<store::Store> store_;
  NodeRegistryOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::map<std::string, Entry> nodes_;
  // Every known node by dense id, with its labels, capacity, readiness and allocation.
  sched::Cluster index_;
  // Last stored description per node, so a phase change keeps its spec after it disconnected.
  std::map<std::string, v1::Node> stored_;
  bool closed_ = false;
  std::size_t probe_cursor_ = 0;  // where the next probe_targets() list starts
  // Node names by the address their agent connected from (several behind a NAT or a proxy).
  std::multimap<std::string, std::string> by_address_;
  std::thread leases_;
};

}  // namespace blixard::control
