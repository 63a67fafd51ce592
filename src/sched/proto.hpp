// From the API's messages to the scheduler's plain types: a Placement (with the resources of the
// function or VM that carries it) into a Request, a stored Node into a NodeInfo.
#pragma once

#include <cstdint>
#include <string>

#include "blixard/v1/common.pb.h"
#include "blixard/v1/function.pb.h"
#include "blixard/v1/node.pb.h"
#include "blixard/v1/vm.pb.h"
#include "sched/types.hpp"

namespace blixard::sched {

// nodeSelector and nodeAffinity.required become exact matches (required as `in` expressions),
// each nodeAffinity.preferred pair a term of weight 100, tolerations keep their key and value
// (an empty value tolerates any), strategy "spread" or binpack, spreadAcross with its alias.
Request request_from(const v1::Placement& placement, std::uint64_t memory_mib, std::uint32_t vcpu);
// A validated spec's memory and vcpu (unset fields as validation defaults them) and placement.
Request request_from(const v1::FunctionSpec& spec);
// A spec naming a `driver` is placed on nodes labelled with it: this label, "true".
std::string driver_label(const std::string& driver);

// The label every node carries with its own name (a nodeSelector may name one node by it).
inline constexpr const char* k_node_name_label = "blixard.io/node";
Request request_from(const v1::VmSpec& spec);

// vCPUs a node may allocate per core it has: vCPUs are time-shared (an idle guest's cost little).
inline constexpr std::uint32_t k_vcpu_allocation_ratio = 4;

// Labels, taints, capacity (vcpu times the ratio above), allocation; phase "Ready" is ready,
// "Draining" ready and draining, anything else not ready.
NodeInfo node_from(const v1::Node& node);

}  // namespace blixard::sched
