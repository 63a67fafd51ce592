// The node's side of a replica's network (DESIGN §6): the network's bridge holding the gateway
// address, and where the node has peers, a VXLAN device on it whose flood list is exactly them
// (src/net programs both over netlink). Both drivers hold a membership while a replica on a
// network runs.
#pragma once

#include <string>
#include <vector>

#include "blixard/v1/network.pb.h"
#include "common/subnet.hpp"

namespace blixard::runtime {

// One replica's place on its network on this node: made, the network is present (its bridge,
// and the overlay to the attachment's peers); destroyed, and it was the network's last replica
// here, the bridge and VXLAN device go (a network deleted leaves nothing on the nodes).
// Replicas starting at once on one network share its bridge.
class NetworkMembership {
 public:
  // Throws Error(unavailable) when the node cannot (no CAP_NET_ADMIN: an agent that is not root).
  explicit NetworkMembership(const v1::NetworkAttachment& network);
  ~NetworkMembership();
  NetworkMembership(const NetworkMembership&) = delete;
  NetworkMembership& operator=(const NetworkMembership&) = delete;

  const std::string& bridge() const noexcept { return bridge_; }

 private:
  std::string network_, bridge_;
};

// The other nodes changed (one joined or left): every network this process has a replica on
// floods to exactly these now (`addresses`: the other nodes', as the server knows them).
void set_overlay_peers(const std::vector<std::string>& addresses);

// The replica's address and subnet from the attachment (checked: the address is a host of it).
std::pair<net::Address, net::Subnet> replica_address(const v1::NetworkAttachment& network);

// The host end of a replica's veth, unique per replica start, at most 15 characters.
std::string veth_name(const std::string& replica);

}  // namespace blixard::runtime
