// The linear reference scheduler: every filter and score read straight off each node's
// description, no index. Simple enough to trust, so the bitmap one is checked against it
// (tests/cpp/sched_test.cpp) and timed beside it (bench/sched_bench.cpp).
#include <algorithm>
#include <array>
#include <limits>
#include <map>
#include <optional>

#include "sched/detail.hpp"
#include "sched/place.hpp"

namespace blixard::sched {
namespace {

bool matches(const MatchExpression& m, const NodeInfo& n) {
  auto it = n.labels.find(m.key);
  const bool has = it != n.labels.end();
  const bool listed =
      has && std::find(m.values.begin(), m.values.end(), it->second) != m.values.end();
  switch (m.op) {
    case Operator::in:
      return listed;
    case Operator::not_in:
      return !listed;
    case Operator::exists:
      return has;
    case Operator::does_not_exist:
      return !has;
  }
  return false;
}

// The first filter the node fails, or none.
std::optional<Filter> first_failure(const Cluster& c, NodeId id, const Request& r) {
  const NodeInfo& n = c.node(id);
  if (!n.ready) return Filter::not_ready;
  if (n.cordoned) return Filter::cordoned;
  if (n.draining) return Filter::draining;
  for (const auto& [key, value] : r.node_selector) {
    auto it = n.labels.find(key);
    if (it == n.labels.end() || it->second != value) return Filter::node_selector;
  }
  for (const auto& m : r.required) {
    if (!matches(m, n)) return Filter::affinity;
  }
  for (const auto& t : n.taints) {
    if (!detail::tolerates(r.tolerations, t.key, t.value)) return Filter::taint;
  }
  const Resources f = c.free(id);
  if (f.memory_mib < r.memory_mib) return Filter::memory;
  if (f.vcpu < r.vcpu) return Filter::vcpu;
  return std::nullopt;
}

// The longest data path of the node that holds the request's path.
std::optional<std::string> held_path(const NodeInfo& n, const std::string& path) {
  std::optional<std::string> best;
  for (const auto& p : n.data_paths) {
    std::string held = detail::normalize_path(p);
    if (detail::holds(held, path) && (!best || held.size() > best->size())) best = held;
  }
  return best;
}

}  // namespace

Decision place_linear(const Cluster& cluster, const Request& request) {
  const Request& r = request;
  Decision d;
  d.nodes = static_cast<std::uint32_t>(cluster.size());
  std::array<std::uint32_t, k_filter_count> failed{};
  std::vector<NodeId> fit;
  for (NodeId id = 0; id < cluster.id_bound(); ++id) {
    if (!cluster.contains(id)) continue;
    if (auto f = first_failure(cluster, id, r)) {
      ++failed[static_cast<std::size_t>(*f)];
    } else {
      fit.push_back(id);
    }
  }
  if (fit.empty()) {
    for (std::size_t f = 0; f < k_filter_count; ++f) {
      if (failed[f] != 0) d.filtered.push_back({static_cast<Filter>(f), failed[f]});
    }
    d.reasons.push_back(detail::failure_reason(d, r));
    return d;
  }
  d.feasible = static_cast<std::uint32_t>(fit.size());

  const std::string key = detail::topology_key(r.spread_across);
  std::map<std::string, std::uint64_t> count;
  std::uint64_t total = 0;
  bool spread = false;
  std::string no_domain;
  if (!key.empty()) {
    auto domain = [&](NodeId id) -> const std::string* {
      const auto& labels = cluster.node(id).labels;
      auto it = labels.find(key);
      return it == labels.end() ? nullptr : &it->second;
    };
    std::erase_if(fit, [&](NodeId id) { return domain(id) == nullptr; });
    if (fit.empty()) {
      // No node that fits is in any domain: spreading cannot apply.
      for (NodeId id = 0; id < cluster.id_bound(); ++id) {
        if (cluster.contains(id) && !first_failure(cluster, id, r)) fit.push_back(id);
      }
      no_domain = "no node that fits has label " + key;
    } else {
      spread = true;
      for (const auto& [node, n] : r.group) {
        total += n;
        if (cluster.contains(node)) {
          if (const std::string* v = domain(node)) count[*v] += n;
        }
      }
      std::uint64_t least = std::numeric_limits<std::uint64_t>::max();
      for (NodeId id : fit) least = std::min(least, count[*domain(id)]);
      std::erase_if(fit, [&](NodeId id) { return count[*domain(id)] != least; });
    }
  }

  std::uint64_t total_weight = 0;
  for (const auto& p : r.preferred) total_weight += p.weight;
  const std::string path = detail::normalize_path(r.data_path);
  const bool caller = r.caller && cluster.contains(*r.caller);
  std::int64_t best = std::numeric_limits<std::int64_t>::min();
  NodeId winner = 0;
  for (NodeId id : fit) {
    const NodeInfo& n = cluster.node(id);
    std::int64_t score = detail::fit_points(n.capacity, n.allocated, r);
    if (total_weight != 0) {
      std::uint64_t matched = 0;
      for (const auto& p : r.preferred) {
        if (matches(p.match, n)) matched += p.weight;
      }
      score += detail::affinity_points(matched, total_weight);
    }
    if (!path.empty() && held_path(n, path)) score += k_locality_points;
    if (caller) {
      if (auto us = cluster.latency(*r.caller, id)) score += detail::latency_points(*us);
    } else if (r.from_server) {
      const auto us = cluster.server_latency(id);
      score += us ? detail::latency_points(*us) : k_near_points;
    }
    if (score > best) {
      best = score;
      winner = id;
    }
  }

  const NodeInfo& n = cluster.node(winner);
  d.node = winner;
  d.node_name = n.name;
  d.score = best;
  for (const auto& p : r.preferred) {
    if (matches(p.match, n)) d.reasons.push_back(detail::term_reason(p.match));
  }
  if (!path.empty()) {
    if (auto held = held_path(n, path)) d.reasons.push_back("holds " + *held);
  }
  if (caller) {
    if (auto us = cluster.latency(*r.caller, winner)) {
      d.reasons.push_back(detail::latency_reason(*us, winner == *r.caller));
    }
  } else if (r.from_server) {
    if (auto us = cluster.server_latency(winner)) {
      d.reasons.push_back(detail::latency_reason(*us, *us == 0));
    }
  }
  if (spread) {
    const std::string& v = n.labels.at(key);
    d.reasons.push_back(detail::spread_reason(key, v, count[v], total));
  } else if (!no_domain.empty()) {
    d.reasons.push_back(no_domain);
  }
  d.reasons.push_back(detail::fit_reason(n.capacity, n.allocated, r));
  return d;
}

}  // namespace blixard::sched
