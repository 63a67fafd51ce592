// Internal to the sched layer: the bitmaps a Cluster keeps over its dense node ids. Every set a
// filter needs is here, so a request's feasible nodes come from a few ANDs and ANDNOTs.
#pragma once

#include <roaring/roaring.hh>

#include <array>
#include <bit>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "sched/cluster.hpp"

namespace blixard::sched {

inline constexpr std::uint32_t k_no_value = UINT32_MAX;

// All nodes carrying one label key, by value. Values are interned (never forgotten, an unused one
// has an empty bitmap) so that a node's value of a topology key is one array load.
struct LabelKey {
  Roaring any;
  std::unordered_map<std::string, std::uint32_t> value_ids;
  std::vector<std::string> values;      // by value id
  std::vector<Roaring> nodes;           // by value id
  std::vector<std::uint32_t> value_of;  // by node id; k_no_value where the node lacks the key

  const Roaring* find(const std::string& value) const {
    auto it = value_ids.find(value);
    return it == value_ids.end() ? nullptr : &nodes[it->second];
  }
};

// Free capacity as cumulative power-of-two buckets: ge[k] holds the nodes with at least 2^k free.
// A request for m needs one AND with ge[ceil(log2 m)] (all fit) plus an exact check of the nodes
// in ge[ceil(log2 m) - 1] but not in ge[ceil(log2 m)], the only ones that may or may not fit.
template <std::size_t Bits>
struct Buckets {
  std::array<Roaring, Bits + 1> ge;
  std::vector<std::uint8_t> level;  // by node id: how many of ge[0..] hold it

  static std::uint8_t level_of(std::uint64_t free) {
    return static_cast<std::uint8_t>(std::bit_width(free));  // free >= 2^k for k < bit_width
  }
  void set(NodeId id, std::uint64_t free) {
    if (level.size() <= id) level.resize(id + 1, 0);
    const std::uint8_t to = level_of(free);
    for (std::uint8_t k = level[id]; k < to; ++k) ge[k].add(id);
    for (std::uint8_t k = to; k < level[id]; ++k) ge[k].remove(id);
    level[id] = to;
  }
  void clear(NodeId id) { set(id, 0); }
};

struct Cluster::Index {
  // What scoring reads of every survivor, packed by node id (a NodeInfo is a few cache lines).
  struct Load {
    Resources capacity;
    Resources allocated;
  };
  std::vector<Load> load;
  Roaring all;  // live nodes
  Roaring ready;
  Roaring cordoned;
  Roaring draining;
  Roaring schedulable;  // ready, not cordoned, not draining
  std::unordered_map<std::string, LabelKey> labels;
  Roaring tainted;                                                // any taint
  std::map<std::pair<std::string, std::string>, Roaring> taints;  // (key, value) -> nodes
  std::unordered_map<std::string, Roaring> paths;                 // data path -> nodes
  Buckets<64> memory;
  Buckets<32> vcpu;
};

}  // namespace blixard::sched
