// The node's side of a replica's network (see replica_network.hpp).
#include "runtime/replica_network.hpp"

#include <array>
#include <cstdint>
#include <cstdio>
#include <map>
#include <mutex>
#include <set>

#include "blixard/error.hpp"
#include "net/links.hpp"

namespace blixard::runtime {

namespace {

// The replicas on each network this process joined (by name), under their mutex.
struct Joined {
  std::mutex mutex;
  std::map<std::string, int> replicas;
};
Joined& joined() {
  static Joined j;
  return j;
}

}  // namespace

NetworkMembership::NetworkMembership(const v1::NetworkAttachment& network)
    : network_(network.network()), bridge_(net::bridge_name(network.network())) {
  const auto subnet = net::parse_subnet(network.subnet(), "network.subnet");
  const std::string& bridge = bridge_;
  auto& j = joined();
  std::lock_guard lock(j.mutex);
  try {
    net::ensure_bridge(bridge, subnet);
    // Alone, or on loopback (an embedded node): no overlay to make.
    const auto local = net::Address::parse(network.local());
    std::set<net::Address> peers;
    for (const auto& p : network.peers()) {
      if (auto a = net::Address::parse(p)) peers.insert(*a);
    }
    const std::string vxlan = net::vxlan_name(network.network());
    if (!local || (local->value >> 24) == 127 || peers.empty()) {
      net::remove_link(vxlan);
    } else {
      net::ensure_vxlan(vxlan, net::vni_of(network.network()), *local, net::k_vxlan_port, bridge);
      net::set_vxlan_peers(vxlan, peers);
    }
    ++j.replicas[network.network()];
  } catch (const Error& e) {
    throw Error(errc::unavailable, "cannot set up network " + network.network() +
                                       " on this node (" + e.what() +
                                       "); an agent needs root for VM networks");
  }
}

NetworkMembership::~NetworkMembership() {
  const std::string& network = network_;
  auto& j = joined();
  std::lock_guard lock(j.mutex);
  auto it = j.replicas.find(network);
  if (it == j.replicas.end() || --it->second > 0) return;
  j.replicas.erase(it);
  try {
    net::remove_link(net::vxlan_name(network));
    net::remove_link(net::bridge_name(network));
  } catch (const Error&) {
    // Left for the next replica on it to reuse; nothing to report to an exit.
  }
}

std::pair<net::Address, net::Subnet> replica_address(const v1::NetworkAttachment& network) {
  const auto subnet = net::parse_subnet(network.subnet(), "network.subnet");
  const auto address = net::Address::parse(network.address());
  if (!address || !subnet.contains(*address) || *address == subnet.gateway() ||
      *address == subnet.network() || *address == subnet.broadcast()) {
    throw Error(errc::invalid_spec,
                "address " + network.address() + " is not a host of " + network.subnet(),
                "network");
  }
  return {*address, subnet};
}

std::string veth_name(const std::string& replica) {
  // FNV-1a: stable across builds, so a leftover from an earlier agent has the same name.
  std::uint32_t h = 2166136261U;
  for (const char c : replica) h = (h ^ static_cast<unsigned char>(c)) * 16777619U;
  std::array<char, 16> name{};
  std::snprintf(name.data(), name.size(), "bxv%08x", h);
  return name.data();
}

}  // namespace blixard::runtime
