// Placement: a pure function of a cluster snapshot and a request (DESIGN §7).
#pragma once

#include "sched/cluster.hpp"
#include "sched/types.hpp"

namespace blixard::sched {

// Filters by bitmap algebra (state, nodeSelector, required affinity, taints, then free memory and
// vcpu by capacity bucket with an exact check of the boundary bucket only), narrows to the
// emptiest spread domain, and scores the survivors. Same inputs, same decision.
Decision place(const Cluster& cluster, const Request& request);

// The same semantics by scanning every node (no bitmaps): the oracle of the property tests and
// the baseline of bench/sched_bench.cpp.
Decision place_linear(const Cluster& cluster, const Request& request);

}  // namespace blixard::sched
