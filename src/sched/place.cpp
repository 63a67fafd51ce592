// The bitmap scheduler: feasible nodes by set algebra over the Cluster's index, then a score for
// each survivor only. A failed placement replays the filters in a fixed order to say why.
#include <algorithm>
#include <bit>
#include <deque>
#include <limits>

#include "sched/detail.hpp"
#include "sched/index.hpp"
#include "sched/place.hpp"

namespace blixard::sched {
namespace {

using Index = Cluster::Index;
using Load = Cluster::Index::Load;

const Roaring& empty_set() {
  static const Roaring empty;
  return empty;
}

const Roaring* label_set(const Index& x, const std::string& key, const std::string& value) {
  auto it = x.labels.find(key);
  return it == x.labels.end() ? nullptr : it->second.find(value);
}

// The nodes an expression matches: `set`, or everything outside it when `negated`.
struct TermSet {
  const Roaring* set;
  bool negated;

  void apply(Roaring& s) const {
    if (negated) {
      s -= *set;
    } else {
      s &= *set;
    }
  }
};

// Unions an expression needs live in `owned` (a deque: growing it moves nothing).
TermSet term_set(const Index& x, const MatchExpression& m, std::deque<Roaring>& owned) {
  const bool negated = m.op == Operator::not_in || m.op == Operator::does_not_exist;
  if (m.op == Operator::exists || m.op == Operator::does_not_exist) {
    auto it = x.labels.find(m.key);
    return {it == x.labels.end() ? &empty_set() : &it->second.any, negated};
  }
  if (m.values.size() == 1) {
    const Roaring* b = label_set(x, m.key, m.values.front());
    return {b ? b : &empty_set(), negated};
  }
  Roaring& u = owned.emplace_back();
  for (const auto& v : m.values) {
    if (const Roaring* b = label_set(x, m.key, v)) u |= *b;
  }
  return {&u, negated};
}

// A preferred term tested per survivor through the interned label values: one array load per
// node, cheaper than intersecting the survivors with a large array of matching nodes.
struct TermTest {
  const LabelKey* key = nullptr;      // null: no node has the label
  std::vector<std::uint32_t> values;  // value ids, for in / not_in
  bool any_value = false;             // exists / does_not_exist
  bool negated = false;

  bool matches(NodeId id) const {
    bool has = false;
    if (key != nullptr && id < key->value_of.size() && key->value_of[id] != k_no_value) {
      has = any_value || std::find(values.begin(), values.end(), key->value_of[id]) != values.end();
    }
    return has != negated;
  }
};

TermTest term_test(const Index& x, const MatchExpression& m) {
  TermTest t;
  t.negated = m.op == Operator::not_in || m.op == Operator::does_not_exist;
  t.any_value = m.op == Operator::exists || m.op == Operator::does_not_exist;
  auto it = x.labels.find(m.key);
  if (it == x.labels.end()) return t;
  t.key = &it->second;
  for (const auto& v : m.values) {
    auto id = t.key->value_ids.find(v);
    if (id != t.key->value_ids.end()) t.values.push_back(id->second);
  }
  return t;
}

void apply_selector(const Index& x, const Request& r, Roaring& s) {
  for (const auto& [key, value] : r.node_selector) {
    const Roaring* b = label_set(x, key, value);
    if (b == nullptr) {
      s = Roaring();
      return;
    }
    s &= *b;
  }
}

void apply_affinity(const Index& x, const Request& r, Roaring& s, std::deque<Roaring>& owned) {
  for (const auto& m : r.required) term_set(x, m, owned).apply(s);
}

void apply_taints(const Index& x, const Request& r, Roaring& s) {
  if (!s.intersect(x.tainted)) return;
  if (r.tolerations.empty()) {
    s -= x.tainted;
    return;
  }
  for (const auto& [taint, nodes] : x.taints) {
    if (!detail::tolerates(r.tolerations, taint.first, taint.second)) s -= nodes;
  }
}

void to_ids(const Roaring& s, std::vector<std::uint32_t>& ids) {
  ids.resize(s.cardinality());
  s.toUint32Array(ids.data());
}

// Nodes in ge[k] (at least 2^k free, 2^k >= need) all fit; of the bucket just below, which holds
// [2^(k-1), 2^k), each is checked exactly; the rest cannot fit.
template <std::size_t Bits, class FreeOf>
void apply_resource(const Buckets<Bits>& b, std::uint64_t need, FreeOf free_of, Roaring& s) {
  if (need == 0) return;
  const auto k = static_cast<std::size_t>(std::bit_width(need - 1));
  if (k > Bits) {
    s = Roaring();
    return;
  }
  if (std::has_single_bit(need)) {
    s &= b.ge[k];
    return;
  }
  s &= b.ge[k - 1];
  const Roaring border = s - b.ge[k];
  std::vector<std::uint32_t> ids;
  to_ids(border, ids);
  for (std::uint32_t id : ids) {
    if (free_of(id) < need) s.remove(id);
  }
}

}  // namespace

Decision place(const Cluster& cluster, const Request& request) {
  const Index& x = *cluster.index_;
  const Request& r = request;
  Decision d;
  d.nodes = static_cast<std::uint32_t>(cluster.size());
  auto free_memory = [&](NodeId id) {
    const Load& l = x.load[id];
    return l.capacity.memory_mib - std::min(l.capacity.memory_mib, l.allocated.memory_mib);
  };
  auto free_vcpu = [&](NodeId id) {
    const Load& l = x.load[id];
    return std::uint64_t{l.capacity.vcpu - std::min(l.capacity.vcpu, l.allocated.vcpu)};
  };
  std::deque<Roaring> owned;

  // Start from the smallest set the request names, so that every AND after it is cheap; the
  // capacity filters come last, so the exact checks of their boundary bucket are few.
  const Roaring* seed = &x.schedulable;
  bool unknown_label = false;
  for (const auto& [key, value] : r.node_selector) {
    const Roaring* b = label_set(x, key, value);
    if (b == nullptr) {
      unknown_label = true;
      break;
    }
    if (b->cardinality() < seed->cardinality()) seed = b;
  }
  Roaring s;
  if (!unknown_label) {
    s = *seed;
    if (seed != &x.schedulable) s &= x.schedulable;
    for (const auto& [key, value] : r.node_selector) {
      const Roaring* b = label_set(x, key, value);
      if (b != seed) s &= *b;
    }
    apply_affinity(x, r, s, owned);
    apply_taints(x, r, s);
    apply_resource(x.memory, r.memory_mib, free_memory, s);
    apply_resource(x.vcpu, r.vcpu, free_vcpu, s);
  }

  if (s.isEmpty()) {
    // Replay from all nodes in Filter order; each node counts for the first filter it fails.
    Roaring t = x.all;
    auto stage = [&](Filter f, auto&& apply) {
      const std::uint64_t before = t.cardinality();
      if (before != 0) apply();
      const std::uint64_t after = t.cardinality();
      if (after != before) d.filtered.push_back({f, static_cast<std::uint32_t>(before - after)});
    };
    stage(Filter::not_ready, [&] { t &= x.ready; });
    stage(Filter::cordoned, [&] { t -= x.cordoned; });
    stage(Filter::draining, [&] { t -= x.draining; });
    stage(Filter::node_selector, [&] { apply_selector(x, r, t); });
    stage(Filter::affinity, [&] { apply_affinity(x, r, t, owned); });
    stage(Filter::taint, [&] { apply_taints(x, r, t); });
    stage(Filter::memory, [&] { apply_resource(x.memory, r.memory_mib, free_memory, t); });
    stage(Filter::vcpu, [&] { apply_resource(x.vcpu, r.vcpu, free_vcpu, t); });
    d.reasons.push_back(detail::failure_reason(d, r));
    return d;
  }
  d.feasible = static_cast<std::uint32_t>(s.cardinality());

  // Spread: only the domains with the fewest of the group's instances take part. `s` ends as
  // the nodes to score, `ids` as the same set in ascending order.
  std::vector<std::uint32_t> ids;
  const std::string key = detail::topology_key(r.spread_across);
  const LabelKey* domains = nullptr;
  std::vector<std::uint64_t> count;
  std::uint64_t total = 0;
  std::string no_domain;
  if (!key.empty()) {
    auto it = x.labels.find(key);
    if (it != x.labels.end() && s.intersect(it->second.any)) {
      domains = &it->second;
      s &= domains->any;
      count.assign(domains->values.size(), 0);
      for (const auto& [node, n] : r.group) {
        total += n;
        if (node < domains->value_of.size() && domains->value_of[node] != k_no_value) {
          count[domains->value_of[node]] += n;
        }
      }
      std::uint64_t least = std::numeric_limits<std::uint64_t>::max();
      if (s.cardinality() > 64 * domains->values.size()) {
        // Many nodes per domain: one intersection test per domain beats a load per node.
        for (std::size_t v = 0; v < count.size(); ++v) {
          if (count[v] < least && s.intersect(domains->nodes[v])) least = count[v];
        }
        Roaring chosen;
        for (std::size_t v = 0; v < count.size(); ++v) {
          if (count[v] == least) chosen |= domains->nodes[v];
        }
        s &= chosen;
        to_ids(s, ids);
      } else {
        // Few nodes: each one's domain is an array load.
        to_ids(s, ids);
        for (std::uint32_t id : ids) least = std::min(least, count[domains->value_of[id]]);
        const auto before = ids.size();
        std::erase_if(ids, [&](std::uint32_t id) { return count[domains->value_of[id]] != least; });
        if (ids.size() != before) s = Roaring(ids.size(), ids.data());
      }
    } else {
      no_domain = "no node that fits has label " + key;
      to_ids(s, ids);
    }
  } else {
    to_ids(s, ids);
  }

  // Scores: resource fit and preferred affinity per survivor; data locality as one intersection
  // with the survivors, walked beside `ids`; latency from the caller's few measured peers.
  std::vector<std::int64_t> score(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const Load& load = x.load[ids[i]];
    score[i] = detail::fit_points(load.capacity, load.allocated, r);
  }
  std::vector<std::uint32_t> hit_ids;
  auto for_each_hit = [&](const Roaring& hit, auto&& add) {
    to_ids(hit, hit_ids);
    std::size_t i = 0;
    for (std::uint32_t id : hit_ids) {  // hit is a subset of ids: both ascend
      while (ids[i] != id) ++i;
      add(i);
    }
  };
  struct Preferred {
    TermTest test;
    const PreferredTerm* term;
  };
  std::vector<Preferred> preferred;
  std::uint64_t total_weight = 0;
  for (const auto& p : r.preferred) {
    preferred.push_back({term_test(x, p.match), &p});
    total_weight += p.weight;
  }
  if (total_weight != 0) {
    for (std::size_t i = 0; i < ids.size(); ++i) {
      std::uint64_t matched = 0;
      for (const auto& p : preferred) {
        if (p.test.matches(ids[i])) matched += p.term->weight;
      }
      score[i] += detail::affinity_points(matched, total_weight);
    }
  }
  std::vector<std::pair<const Roaring*, std::string>> held;  // longest path first
  if (!r.data_path.empty()) {
    for (auto& p : detail::path_prefixes(detail::normalize_path(r.data_path))) {
      auto it = x.paths.find(p);
      if (it != x.paths.end()) held.emplace_back(&it->second, std::move(p));
    }
  }
  if (!held.empty()) {
    Roaring hit;
    for (const auto& h : held) hit |= s & *h.first;
    for_each_hit(hit, [&](std::size_t i) { score[i] += k_locality_points; });
  }
  const std::unordered_map<NodeId, std::uint32_t>* peers = nullptr;
  if (r.caller && cluster.contains(*r.caller)) peers = &cluster.slots_[*r.caller].latency;
  if (peers != nullptr) {
    auto at = [&](NodeId id) {
      auto p = std::lower_bound(ids.begin(), ids.end(), id);
      return p != ids.end() && *p == id ? static_cast<std::size_t>(p - ids.begin()) : ids.size();
    };
    if (auto i = at(*r.caller); i != ids.size()) score[i] += k_latency_points;
    if (peers->size() < ids.size()) {
      // A node measures a few peers: walk them rather than look up every survivor.
      for (const auto& [peer, micros] : *peers) {
        if (auto i = at(peer); i != ids.size()) score[i] += detail::latency_points(micros);
      }
    } else {
      for (std::size_t i = 0; i < ids.size(); ++i) {
        if (auto it = peers->find(ids[i]); it != peers->end()) {
          score[i] += detail::latency_points(it->second);
        }
      }
    }
  } else if (r.from_server) {
    // A node not measured yet (it joined a moment ago) is taken as near, not far.
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const auto& us = cluster.slots_[ids[i]].server_latency;
      score[i] += us ? detail::latency_points(*us) : k_near_points;
    }
  }

  // Highest score; ties to the lowest id (the first, as ids ascend).
  std::size_t best = 0;
  for (std::size_t i = 1; i < ids.size(); ++i) {
    if (score[i] > score[best]) best = i;
  }
  const NodeId winner = ids[best];

  const NodeInfo& n = cluster.slots_[winner].info;
  d.node = winner;
  d.node_name = n.name;
  d.score = score[best];
  for (const auto& p : preferred) {
    if (p.test.matches(winner)) d.reasons.push_back(detail::term_reason(p.term->match));
  }
  for (const auto& [set, path] : held) {
    if (set->contains(winner)) {
      d.reasons.push_back("holds " + path);
      break;
    }
  }
  if (peers != nullptr) {
    if (winner == *r.caller) {
      d.reasons.push_back(detail::latency_reason(0, true));
    } else if (auto it = peers->find(winner); it != peers->end()) {
      d.reasons.push_back(detail::latency_reason(it->second, false));
    }
  } else if (r.from_server) {
    if (const auto& us = cluster.slots_[winner].server_latency) {
      d.reasons.push_back(detail::latency_reason(*us, *us == 0));
    }
  }
  if (domains != nullptr) {
    const std::uint32_t v = domains->value_of[winner];
    d.reasons.push_back(detail::spread_reason(key, domains->values[v], count[v], total));
  } else if (!no_domain.empty()) {
    d.reasons.push_back(no_domain);
  }
  d.reasons.push_back(detail::fit_reason(n.capacity, n.allocated, r));
  return d;
}

}  // namespace blixard::sched
