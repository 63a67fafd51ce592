// The scheduler's cluster snapshot: nodes by dense id, and the bitmaps that make filtering bitmap
// algebra (DESIGN §7), kept up to date on every change rather than rebuilt per placement.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "sched/types.hpp"

namespace blixard::sched {

class Cluster {
 public:
  Cluster();
  Cluster(const Cluster&);
  Cluster(Cluster&&) noexcept;
  Cluster& operator=(const Cluster&);
  Cluster& operator=(Cluster&&) noexcept;
  ~Cluster();

  // Adds a node under the lowest free id. Throws std::invalid_argument for an empty or taken name.
  NodeId add_node(NodeInfo node);
  // Replaces a node's description (labels, taints, capacity, allocation, state, data paths).
  // Throws std::out_of_range for an unknown id, std::invalid_argument for a name taken by another.
  void update_node(NodeId id, NodeInfo node);
  // Forgets a node and its latencies; its id becomes free. Throws std::out_of_range if unknown.
  void remove_node(NodeId id);

  // Records what instances on the node hold. Allocation is bookkeeping of what runs, so it is not
  // refused past capacity (a node's capacity may shrink under its instances); the node then has no
  // free room. Release saturates at zero.
  void allocate(NodeId id, Resources r);
  void release(NodeId id, Resources r);

  void set_ready(NodeId id, bool ready);
  void set_cordoned(NodeId id, bool cordoned);
  void set_draining(NodeId id, bool draining);
  // A measured round trip between two nodes, in microseconds (symmetric).
  void set_latency(NodeId a, NodeId b, std::uint32_t micros);
  // A measured round trip between the node and the server that places work (and takes the calls
  // a placement serves), in microseconds; requests `from_server` score by it.
  void set_server_latency(NodeId id, std::uint32_t micros);

  bool contains(NodeId id) const;
  // Throws std::out_of_range for an unknown id.
  const NodeInfo& node(NodeId id) const;
  std::optional<NodeId> find(std::string_view name) const;
  std::optional<std::uint32_t> latency(NodeId a, NodeId b) const;
  std::optional<std::uint32_t> server_latency(NodeId id) const;
  Resources free(NodeId id) const;
  std::size_t size() const { return names_.size(); }
  // One past the highest id in use: ids are dense in [0, id_bound()).
  NodeId id_bound() const { return static_cast<NodeId>(slots_.size()); }

  struct Index;  // the bitmaps (sched/index.hpp); place() reads them

 private:
  struct Slot {
    bool live = false;
    NodeInfo info;
    std::unordered_map<NodeId, std::uint32_t> latency;  // peer -> round trip (µs)
    std::optional<std::uint32_t> server_latency;        // round trip to the server (µs)
  };

  Slot& slot(NodeId id);
  const Slot& slot(NodeId id) const;
  void index_node(NodeId id);
  void unindex_node(NodeId id);
  void index_capacity(NodeId id);
  void index_state(NodeId id);

  std::vector<Slot> slots_;
  std::unordered_map<std::string, NodeId> names_;
  std::set<NodeId> free_ids_;
  std::unique_ptr<Index> index_;

  friend Decision place(const Cluster& cluster, const Request& request);
};

}  // namespace blixard::sched
