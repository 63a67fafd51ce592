// The node's side of a replica's network (see replica_network.hpp).
#include "runtime/replica_network.hpp"

#include <array>
#include <cstdint>
#include <cstdio>
#include <map>
#include <mutex>
#include <optional>
#include <set>

#include "blixard/error.hpp"
#include "net/firewall.hpp"
#include "net/links.hpp"

namespace blixard::runtime {

namespace {

// The networks this process joined, and the other nodes its overlays reach, under their mutex.
struct Joined {
  struct Network {
    int replicas = 0;
    std::optional<net::Address> local;  // the overlay's local end; none: no overlay
  };
  std::mutex mutex;
  std::map<std::string, Network> networks;
  std::set<net::Address> peers;  // the newest word: a replica's start or set_overlay_peers
};
Joined& joined() {
  static Joined j;
  return j;
}

// The network's VXLAN device as `peers` want it: a flood list of them, or none (alone, or on
// loopback: an embedded node). Under Joined's mutex.
void apply_overlay(const std::string& network, const std::optional<net::Address>& local,
                   const std::set<net::Address>& peers) {
  const std::string vxlan = net::vxlan_name(network);
  if (!local || peers.empty()) {
    net::remove_link(vxlan);
    return;
  }
  net::ensure_vxlan(vxlan, net::vni_of(network), *local, net::k_vxlan_port,
                    net::bridge_name(network));
  net::set_vxlan_peers(vxlan, peers);
}

// The bridges of the networks joined, and of `also`'s (under Joined's mutex).
std::vector<std::string> bridges_with(const Joined& j, const std::string& also) {
  std::vector<std::string> out;
  for (const auto& [network, n] : j.networks) out.push_back(net::bridge_name(network));
  if (!also.empty() && !j.networks.contains(also)) out.push_back(net::bridge_name(also));
  return out;
}

}  // namespace

NetworkMembership::NetworkMembership(const v1::NetworkAttachment& network)
    : network_(network.network()), bridge_(net::bridge_name(network.network())) {
  const auto subnet = net::parse_subnet(network.subnet(), "network.subnet");
  auto local = net::Address::parse(network.local());
  if (local && (local->value >> 24) == 127) local.reset();
  std::set<net::Address> peers;
  for (const auto& p : network.peers()) {
    if (auto a = net::Address::parse(p)) peers.insert(*a);
  }
  auto& j = joined();
  std::lock_guard lock(j.mutex);
  try {
    // The guard first: no moment where a replica reaches its node (net/firewall.hpp).
    if (!j.networks.contains(network_)) net::guard_bridges(bridges_with(j, network_));
    net::ensure_bridge(bridge_, subnet);
    apply_overlay(network_, local, peers);
    j.peers = std::move(peers);
    auto& n = j.networks[network_];
    ++n.replicas;
    n.local = local;
  } catch (const Error& e) {
    throw Error(errc::unavailable, "cannot set up network " + network_ + " on this node (" +
                                       e.what() + "); an agent needs root for VM networks");
  }
}

NetworkMembership::~NetworkMembership() {
  auto& j = joined();
  std::lock_guard lock(j.mutex);
  auto it = j.networks.find(network_);
  if (it == j.networks.end() || --it->second.replicas > 0) return;
  j.networks.erase(it);
  try {
    net::remove_link(net::vxlan_name(network_));
    net::remove_link(bridge_);
    if (j.networks.empty()) {
      net::unguard_bridges();
    } else {
      net::guard_bridges(bridges_with(j, ""));
    }
  } catch (const Error&) {
    // Left for the next replica on it to reuse; nothing to report to an exit.
  }
}

void set_overlay_peers(const std::vector<std::string>& addresses) {
  std::set<net::Address> peers;
  for (const auto& p : addresses) {
    if (auto a = net::Address::parse(p)) peers.insert(*a);
  }
  auto& j = joined();
  std::lock_guard lock(j.mutex);
  j.peers = peers;
  for (const auto& [network, n] : j.networks) {
    try {
      apply_overlay(network, n.local, j.peers);
    } catch (const Error&) {
      // Kept as it was; the next replica start on it sets it again.
    }
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
