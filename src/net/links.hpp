// The links of VM networks, programmed over rtnetlink (libnl-route-3): a bridge per network and
// node holding the gateway address, a veth pair per replica from the bridge into the replica's
// network namespace, and a VXLAN device on the bridge whose flood list names the other nodes of
// the network, so replicas of one network reach each other across nodes.
//
// Each call acts in the network namespace of the calling thread (connect_netns also in the one it
// is given) over a netlink socket of its own: calls are thread-safe (changes of one link from two
// threads at once are the caller's to order). Failures throw blixard::Error: invalid_spec for bad
// arguments (the field named), not_found for a bridge or device that is not there, already_exists
// for a bridge's name taken by another kind of link, unavailable when netlink or the target
// namespace cannot be reached, internal for a refused change (the message names the link and the
// kernel's reason).
#pragma once

#include <cstdint>
#include <set>
#include <string>

#include "common/subnet.hpp"

namespace blixard::net {

// IANA's VXLAN port.
inline constexpr std::uint16_t k_vxlan_port = 4789;

// Creates bridge `name` if absent, sets it up and makes its IPv4 addresses exactly the subnet's
// gateway with the subnet's prefix, and its MAC one derived from `name` (the same on every node:
// the gateway is one neighbour across the overlay). A second call changes nothing.
void ensure_bridge(const std::string& name, const Subnet& subnet);

// Deletes link `name` (a veth's peer goes with it); nothing when there is none.
void remove_link(const std::string& name);

bool link_exists(const std::string& name);

// Connects the network namespace `netns_fd` (an fd of /proc/PID/ns/net or /run/netns/X) to
// `bridge`: a veth pair whose end `host_end` is a port of the bridge, up, and whose other end is
// `inside_name` in the namespace, up with `address`/prefix, beside `lo` up and a default route via
// the subnet's gateway; its MAC is 02:62 followed by `address` (stable for a replica that keeps
// its address). On failure nothing is left behind.
void connect_netns(const std::string& bridge, const std::string& host_end, int netns_fd,
                   const std::string& inside_name, Address address, const Subnet& subnet);

// Creates VXLAN device `name` (id `vni`, sending from `local` to UDP `port`, no multicast group,
// learning on) as a port of `bridge`, up. An existing device with the same id, local address and
// port is kept (made a port of the bridge and up if it is not); one that differs is replaced, and
// with it its peers: call set_vxlan_peers after.
void ensure_vxlan(const std::string& name, std::uint32_t vni, Address local, std::uint16_t port,
                  const std::string& bridge);

// Makes the flood list of VXLAN device `name` (its all-zeros-MAC FDB entries, what
// `bridge fdb append 00:00:00:00:00:00 dev NAME dst PEER` makes) exactly `peers`. Entries it
// learned towards a node no longer in `peers` go too, so nothing is sent to a node that left.
void set_vxlan_peers(const std::string& name, const std::set<Address>& peers);

// The flood list of VXLAN device `name`.
std::set<Address> vxlan_peers(const std::string& name);

}  // namespace blixard::net
