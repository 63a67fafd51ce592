// The scheduler's vocabulary (DESIGN §7): what a node offers, what a placement asks for, and the
// decision with its reasons. Plain values: no store, no I/O, no threads.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace blixard::sched {

// Dense node id: the bit of a node in every bitmap. Ids of removed nodes are reused, lowest first.
using NodeId = std::uint32_t;

struct Resources {
  std::uint64_t memory_mib = 0;
  std::uint32_t vcpu = 0;
  friend bool operator==(const Resources&, const Resources&) = default;
};

// A NoSchedule taint: a node that has one takes only requests that tolerate it.
struct Taint {
  std::string key;
  std::string value;
  friend bool operator==(const Taint&, const Taint&) = default;
};

// Empty value: tolerates every value of `key`; empty key too: tolerates every taint.
struct Toleration {
  std::string key;
  std::string value;
};

// A node as the scheduler sees it.
struct NodeInfo {
  std::string name;
  std::map<std::string, std::string> labels;  // key -> value
  std::vector<Taint> taints;
  Resources capacity;
  Resources allocated;
  bool ready = true;      // false: not ready or lost
  bool cordoned = false;  // new work avoids it
  bool draining = false;  // work moves off and new work avoids it
  // Data paths ("/data") and volumes ("vol/pg-data") the node holds; a request's data path is held
  // by a node that has it or a prefix of it ("/data" holds "/data/input.jpg").
  std::vector<std::string> data_paths;

  bool schedulable() const { return ready && !cordoned && !draining; }
};

enum class Strategy : std::uint8_t {
  binpack,  // prefer the fullest node that fits (fewer nodes busy)
  spread,   // prefer the emptiest node
};

enum class Operator : std::uint8_t { in, not_in, exists, does_not_exist };

// Kubernetes' node-selector requirement. `not_in` and `does_not_exist` match nodes without `key`.
struct MatchExpression {
  std::string key;
  Operator op = Operator::in;
  std::vector<std::string> values;  // for in / not_in
};

struct PreferredTerm {
  MatchExpression match;
  std::uint32_t weight = 1;  // 1..100, relative to the request's other preferred terms
};

struct Request {
  std::uint64_t memory_mib = 0;
  std::uint32_t vcpu = 0;
  std::map<std::string, std::string> node_selector;  // every pair must match
  std::vector<MatchExpression> required;             // every expression must match
  std::vector<PreferredTerm> preferred;
  std::vector<Toleration> tolerations;
  Strategy strategy = Strategy::binpack;
  // A label key (a topology domain: "zone", "rack"); "availability-zones" means "zone". The
  // domain with the fewest of `group`'s instances among those with a node that fits is chosen.
  std::string spread_across;
  // The group's (the VM set's or function's) existing instances: how many on each node.
  std::vector<std::pair<NodeId, std::uint32_t>> group;
  std::string data_path;         // nodes holding it (or a prefix of it) score higher
  std::optional<NodeId> caller;  // nodes nearer the caller (measured latency) score higher
  // No caller node: the caller is the server (it takes the calls the instance will serve), and
  // nodes nearer it (Cluster::set_server_latency) score higher; one not measured yet scores as
  // near (it joined a moment ago: no evidence it is far).
  bool from_server = false;

  Resources resources() const { return {memory_mib, vcpu}; }
};

// Why nodes were filtered out; each node counts once, for the first filter it fails in this order.
enum class Filter : std::uint8_t {
  not_ready,
  cordoned,
  draining,
  node_selector,
  affinity,
  taint,
  memory,
  vcpu,
};
inline constexpr std::size_t k_filter_count = 8;

struct FilterCount {
  Filter filter;
  std::uint32_t nodes;
  friend bool operator==(const FilterCount&, const FilterCount&) = default;
};

struct Decision {
  std::optional<NodeId> node;  // empty: no node fits
  std::string node_name;
  std::int64_t score = 0;
  // Placed: why this node, most telling first ("gpu=available", "holds /data", "0.3 ms from
  // caller", "zone az2 has 0 of 2"). Not placed: one line, kube-style ("0 of 3 nodes fit: 2 lack
  // memory (need 512 MiB), 1 cordoned").
  std::vector<std::string> reasons;
  std::uint32_t nodes = 0;            // nodes in the cluster
  std::uint32_t feasible = 0;         // nodes that passed every filter
  std::vector<FilterCount> filtered;  // not placed: non-zero counts, in Filter order

  bool placed() const { return node.has_value(); }
  // "placed on node2: gpu=available, holds /data, 0.3 ms from caller" or the failure line.
  std::string summary() const;
};

// Score scale (a sum; higher wins, ties go to the lowest node id), in units of k_score_unit
// (10,000: the resource score counts basis points, so spreading small instances over large nodes
// sees every instance):
//   resources     0..1x    binpack: the share of the node allocated after placement; spread: 1x
//                          minus that (memory and vcpu averaged)
//   affinity      0..2x    share of the preferred terms' weight that the node matches
//   data locality 0 | 2x   node holds the request's data path
//   latency       0..1x    the caller's own node (no network between): 1x; within k_near_ms of
//                          the caller, or not measured yet: 0.9x; farther: 0.9x * k_near_ms / the
//                          round trip in whole ms, rounded up
inline constexpr std::int64_t k_score_unit = 10'000;
inline constexpr std::int64_t k_affinity_points = 2 * k_score_unit;
inline constexpr std::int64_t k_locality_points = 2 * k_score_unit;
inline constexpr std::int64_t k_latency_points = k_score_unit;
inline constexpr std::int64_t k_near_points = k_score_unit * 9 / 10;
inline constexpr std::int64_t k_near_ms = 5;

}  // namespace blixard::sched
