// Mapping the API's placement and node messages onto the scheduler's types.
#include "sched/proto.hpp"

#include <map>

#include "sched/detail.hpp"

namespace blixard::sched {

namespace {

// Validation's defaults (src/spec/validate.cpp), for a spec that did not pass through it.
constexpr std::uint64_t k_function_memory_mib = 128;
constexpr std::uint64_t k_vm_memory_mib = 512;

}  // namespace

Request request_from(const v1::Placement& placement, std::uint64_t memory_mib, std::uint32_t vcpu) {
  Request r;
  r.memory_mib = memory_mib;
  r.vcpu = vcpu;
  r.node_selector.insert(placement.node_selector().begin(), placement.node_selector().end());
  // Protobuf maps iterate in no fixed order: sort the expressions so equal specs give equal
  // requests (and reasons in one order).
  std::map<std::string, std::string> required(placement.node_affinity().required().begin(),
                                              placement.node_affinity().required().end());
  for (const auto& [key, value] : required) r.required.push_back({key, Operator::in, {value}});
  std::map<std::string, std::string> preferred(placement.node_affinity().preferred().begin(),
                                               placement.node_affinity().preferred().end());
  for (const auto& [key, value] : preferred) {
    r.preferred.push_back({{key, Operator::in, {value}}, 100});
  }
  for (const auto& t : placement.tolerations()) r.tolerations.push_back({t.key(), t.value()});
  r.strategy = placement.strategy() == "spread" ? Strategy::spread : Strategy::binpack;
  r.spread_across = detail::topology_key(placement.spread_across());
  return r;
}

Request request_from(const v1::FunctionSpec& spec) {
  const std::uint64_t memory = spec.has_memory_mib()       ? spec.memory_mib()
                               : spec.microvm().mem() != 0 ? spec.microvm().mem()
                                                           : k_function_memory_mib;
  const std::uint32_t vcpu = spec.vcpu() != 0 ? spec.vcpu() : spec.microvm().vcpu();
  return request_from(spec.placement(), memory, vcpu);
}

std::string driver_label(const std::string& driver) { return "driver." + driver; }

Request request_from(const v1::VmSpec& spec) {
  const std::uint64_t memory = spec.has_memory_mib()       ? spec.memory_mib()
                               : spec.microvm().mem() != 0 ? spec.microvm().mem()
                                                           : k_vm_memory_mib;
  const std::uint32_t vcpu = spec.vcpu() != 0             ? spec.vcpu()
                             : spec.microvm().vcpu() != 0 ? spec.microvm().vcpu()
                                                          : 1;
  auto r = request_from(spec.placement(), memory, vcpu);
  if (!spec.driver().empty()) r.node_selector[driver_label(spec.driver())] = "true";
  return r;
}

NodeInfo node_from(const v1::Node& node) {
  NodeInfo n;
  n.name = node.metadata().name();
  n.labels.insert(node.spec().labels().begin(), node.spec().labels().end());
  n.labels[k_node_name_label] = n.name;
  for (const auto& t : node.spec().taints()) n.taints.push_back({t.key(), t.value()});
  // vCPUs are time-shared, memory is not: a node takes k_vcpu_allocation_ratio vCPUs per core
  // (OpenStack's initial cpu_allocation_ratio), and its memory once.
  n.capacity = {node.spec().memory_mib(), node.spec().vcpu() * k_vcpu_allocation_ratio};
  n.allocated = {node.status().allocated_memory_mib(), node.status().allocated_vcpu()};
  n.data_paths.assign(node.spec().data_paths().begin(), node.spec().data_paths().end());
  const std::string& phase = node.status().phase();
  n.ready = phase == "Ready" || phase == "Draining";
  n.draining = phase == "Draining";
  return n;
}

}  // namespace blixard::sched
