// Internal to the sched layer: the arithmetic and wording both schedulers share (the bitmap one in
// place.cpp and the linear oracle in linear.cpp), so they differ only in how they find nodes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "sched/types.hpp"

namespace blixard::sched::detail {

// "availability-zones" is the well-known alias of the `zone` label (DESIGN §7).
std::string topology_key(const std::string& spread_across);

// Trailing slashes dropped ("/data/" -> "/data"); "/" stays.
std::string normalize_path(std::string_view path);
// `held` names `path` or a directory above it: "/data" holds "/data/x" but not "/database".
bool holds(std::string_view held, std::string_view path);
// The path and the directories above it, longest first: "/data/x" -> "/data/x", "/data", "/".
std::vector<std::string> path_prefixes(const std::string& path);

bool tolerates(const std::vector<Toleration>& tolerations, std::string_view key,
               std::string_view value);

// % of the node allocated once the request is placed (mean of memory and vcpu where the node has
// any), turned into points by the strategy.
std::int64_t fit_points(const Resources& capacity, const Resources& allocated,
                        const Request& request);
std::int64_t latency_points(std::uint32_t micros);
std::int64_t affinity_points(std::uint64_t matched_weight, std::uint64_t total_weight);

std::string term_reason(const MatchExpression& m);
std::string fit_reason(const Resources& capacity, const Resources& allocated,
                       const Request& request);
std::string latency_reason(std::uint32_t micros, bool callers_node);
std::string spread_reason(const std::string& key, const std::string& value, std::uint64_t count,
                          std::uint64_t total);
// "0 of 3 nodes fit: 2 lack memory (need 512 MiB), 1 cordoned"
std::string failure_reason(const Decision& d, const Request& request);

}  // namespace blixard::sched::detail
