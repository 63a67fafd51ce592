// The scoring arithmetic and the words of reasons, shared by both schedulers.
#include "sched/detail.hpp"

#include <algorithm>
#include <array>
#include <cstdio>

namespace blixard::sched::detail {

std::string topology_key(const std::string& spread_across) {
  return spread_across == "availability-zones" ? "zone" : spread_across;
}

std::string normalize_path(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  return std::string(path);
}

bool holds(std::string_view held, std::string_view path) {
  if (held.empty() || !path.starts_with(held)) return false;
  return path.size() == held.size() || held == "/" || path[held.size()] == '/';
}

std::vector<std::string> path_prefixes(const std::string& path) {
  std::vector<std::string> out;
  if (path.empty()) return out;
  std::string p = path;
  out.push_back(p);
  for (auto slash = p.rfind('/'); slash != std::string::npos && slash > 0; slash = p.rfind('/')) {
    p.resize(slash);
    out.push_back(p);
  }
  if (path.front() == '/' && path != "/") out.emplace_back("/");
  return out;
}

bool tolerates(const std::vector<Toleration>& tolerations, std::string_view key,
               std::string_view value) {
  return std::any_of(tolerations.begin(), tolerations.end(), [&](const Toleration& t) {
    if (t.key.empty()) return t.value.empty();
    return t.key == key && (t.value.empty() || t.value == value);
  });
}

namespace {

// Shares in units of k_score_unit per whole (basis points at 10,000): a 64 MiB instance on a
// 24 GiB node is 26 of them, so spreading small instances over big nodes sees each one.
std::int64_t share(std::uint64_t used, std::uint64_t capacity) {
  if (used >= capacity) return k_score_unit;
  return static_cast<std::int64_t>(used * k_score_unit / capacity);
}

std::int64_t used_share(const Resources& capacity, const Resources& allocated,
                        const Request& request) {
  std::int64_t sum = 0;
  int parts = 0;
  if (capacity.memory_mib > 0) {
    sum += share(allocated.memory_mib + request.memory_mib, capacity.memory_mib);
    ++parts;
  }
  if (capacity.vcpu > 0) {
    sum += share(std::uint64_t{allocated.vcpu} + request.vcpu, capacity.vcpu);
    ++parts;
  }
  return parts == 0 ? 0 : sum / parts;
}

const char* verb(std::uint32_t n, const char* one, const char* many) { return n == 1 ? one : many; }

}  // namespace

std::int64_t fit_points(const Resources& capacity, const Resources& allocated,
                        const Request& request) {
  const std::int64_t used = used_share(capacity, allocated, request);
  return request.strategy == Strategy::binpack ? used : k_score_unit - used;
}

std::int64_t latency_points(std::uint32_t micros) {
  // No network between (the caller's own node) beats any. Round trips within k_near_ms (one
  // host, one LAN) score alike, so jitter there, or a busy agent answering a ping some ms late,
  // never outweighs the resource score or a spread; past it the points fall as the round trip
  // grows (10 ms: half, 50 ms: a tenth).
  if (micros == 0) return k_latency_points;
  const std::int64_t ms = (std::int64_t{micros} + 999) / 1000;
  return ms <= k_near_ms ? k_near_points : k_near_points * k_near_ms / ms;
}

std::int64_t affinity_points(std::uint64_t matched_weight, std::uint64_t total_weight) {
  if (total_weight == 0) return 0;
  return static_cast<std::int64_t>(static_cast<std::uint64_t>(k_affinity_points) * matched_weight /
                                   total_weight);
}

std::string term_reason(const MatchExpression& m) {
  auto list = [&] {
    std::string s;
    for (const auto& v : m.values) s.append(s.empty() ? "" : ",").append(v);
    return s;
  };
  switch (m.op) {
    case Operator::in:
      return m.values.size() == 1 ? m.key + "=" + m.values[0] : m.key + " in (" + list() + ")";
    case Operator::not_in:
      return m.key + " not in (" + list() + ")";
    case Operator::exists:
      return "has " + m.key;
    case Operator::does_not_exist:
      return "no " + m.key;
  }
  return m.key;
}

std::string fit_reason(const Resources& capacity, const Resources& allocated,
                       const Request& request) {
  return std::string(request.strategy == Strategy::binpack ? "binpack" : "spread") + ": " +
         std::to_string(used_share(capacity, allocated, request) * 100 / k_score_unit) +
         "% allocated after placement";
}

std::string latency_reason(std::uint32_t micros, bool callers_node) {
  if (callers_node) return "on the caller's node";
  std::array<char, 32> buf{};
  if (micros < 100) {
    std::snprintf(buf.data(), buf.size(), "%u µs from caller", micros);
  } else {
    std::snprintf(buf.data(), buf.size(), "%.1f ms from caller", micros / 1000.0);
  }
  return buf.data();
}

std::string spread_reason(const std::string& key, const std::string& value, std::uint64_t count,
                          std::uint64_t total) {
  return key + " " + value + " has " + std::to_string(count) + " of " + std::to_string(total);
}

std::string failure_reason(const Decision& d, const Request& request) {
  std::string out = "0 of " + std::to_string(d.nodes) + " nodes fit";
  if (d.nodes == 0) return out + ": the cluster has no nodes";
  std::vector<FilterCount> counts = d.filtered;
  std::stable_sort(counts.begin(), counts.end(),
                   [](const FilterCount& a, const FilterCount& b) { return a.nodes > b.nodes; });
  const char* sep = ": ";
  for (const auto& [filter, n] : counts) {
    out += sep + std::to_string(n) + " ";
    sep = ", ";
    switch (filter) {
      case Filter::not_ready:
        out += "not ready";
        break;
      case Filter::cordoned:
        out += "cordoned";
        break;
      case Filter::draining:
        out += "draining";
        break;
      case Filter::node_selector: {
        out += verb(n, "does not match", "do not match");
        out += " nodeSelector ";
        const char* comma = "";
        for (const auto& [k, v] : request.node_selector) {
          out.append(comma).append(k).append("=").append(v);
          comma = ",";
        }
        break;
      }
      case Filter::affinity:
        out += verb(n, "does not match", "do not match") + std::string(" required affinity");
        break;
      case Filter::taint:
        out += verb(n, "has a taint", "have taints") + std::string(" not tolerated");
        break;
      case Filter::memory:
        out += verb(n, "lacks", "lack") + std::string(" memory (need ") +
               std::to_string(request.memory_mib) + " MiB)";
        break;
      case Filter::vcpu:
        out += verb(n, "lacks", "lack") + std::string(" vcpu (need ") +
               std::to_string(request.vcpu) + ")";
        break;
    }
  }
  return out;
}

}  // namespace blixard::sched::detail

namespace blixard::sched {

std::string Decision::summary() const {
  if (!placed()) return reasons.empty() ? "not placed" : reasons.front();
  std::string out = "placed on " + node_name;
  const char* sep = ": ";
  for (const auto& r : reasons) {
    out += sep + r;
    sep = ", ";
  }
  return out;
}

}  // namespace blixard::sched
