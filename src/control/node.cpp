// Which driver runs a replica (see node.hpp).
#include "control/node.hpp"

#include <algorithm>

namespace blixard::control {

std::string replica_driver(const v1::VmSpec& spec, const v1::NodeSpec& node) {
  const auto has = [&](const std::string& d) {
    return std::find(node.drivers().begin(), node.drivers().end(), d) != node.drivers().end();
  };
  if (!spec.driver().empty()) return has(spec.driver()) ? spec.driver() : "";
  if (has("libvirt")) return "libvirt";
  return has("sandbox") ? "sandbox" : "";
}

}  // namespace blixard::control
