// Addresses of VM replicas on their sets' networks (DESIGN §6), kept in the store: a replica
// ("webapp-2") gets the lowest free address of the network's subnet the first time it starts and
// keeps it across restarts, rollouts and scale-downs until its set is deleted. The network itself
// (bridge, veth, VXLAN) is the node's work (src/net); this says who holds which address.
#pragma once

#include <memory>
#include <string>

#include "blixard/v1/network.pb.h"
#include "store/store.hpp"

namespace blixard::control {

class Networks {
 public:
  explicit Networks(std::shared_ptr<store::Store> store);

  // `replica`'s place on `network` (network, subnet, address; not the nodes), recorded if new.
  // Throws invalid_spec (field network) when the network does not exist, unavailable when its
  // subnet has no address left.
  v1::NetworkAttachment claim(const std::string& network, const std::string& replica);
  // The addresses `vm`'s replicas held on any network are free again (the set is gone).
  void release(const std::string& vm);
  // How many addresses of `network` are held.
  std::uint32_t held(const std::string& network);

 private:
  std::shared_ptr<store::Store> store_;
};

}  // namespace blixard::control
