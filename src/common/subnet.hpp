// IPv4 subnets of VM networks ("blixard network create web-vlan --subnet 10.88.0.0/24"), the
// address management over them, and the names and VXLAN ids derived from a network's name.
//
// Every node gives a network the same gateway (.1) on a bridge of its own; replicas take the other
// host addresses, recorded in the store. The names and the VNI are pure functions of the network's
// name so that each agent derives the same ones without asking.
#pragma once

#include <compare>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>

namespace blixard::net {

// An IPv4 address, in host byte order.
struct Address {
  std::uint32_t value = 0;

  // A dotted quad ("10.88.0.5"); nullopt for anything else.
  static std::optional<Address> parse(std::string_view text);
  std::string to_string() const;
  // NOLINTNEXTLINE(modernize-use-nullptr): clang-tidy 14 misreads a defaulted <=>
  auto operator<=>(const Address&) const = default;
};

struct Subnet {
  Address network() const noexcept { return network_; }
  int prefix() const noexcept { return prefix_; }
  std::uint32_t mask() const noexcept { return ~std::uint32_t{0} << (32 - prefix_); }
  // The first host address, which every node's bridge holds.
  Address gateway() const noexcept { return {network_.value + 1}; }
  Address broadcast() const noexcept { return {network_.value | ~mask()}; }
  bool contains(Address a) const noexcept { return (a.value & mask()) == network_.value; }
  // "10.88.0.0/24".
  std::string to_string() const;
  bool operator==(const Subnet&) const = default;

 private:
  friend Subnet parse_subnet(std::string_view cidr, std::string field);
  Address network_;
  int prefix_ = 32;
};

// Parses "10.88.0.0/24": a prefix of 8 to 30 (room for a gateway and replicas, not the whole
// address space) and no host bits set. Throws Error(invalid_spec) naming `field`.
Subnet parse_subnet(std::string_view cidr, std::string field);

// The lowest host address of `subnet` that is neither the network, the gateway, the broadcast
// address nor in `taken`; nullopt when none is left.
std::optional<Address> next_free(const Subnet& subnet, const std::set<Address>& taken);

// The interfaces of network `network` on every node: "bx-" (bridge) or "vx-" (VXLAN) and 8 hex
// digits of a hash of the name, 11 characters (interface names hold 15).
std::string bridge_name(std::string_view network);
std::string vxlan_name(std::string_view network);
// The network's VXLAN id: 1 to 2^24-1, from the same hash.
std::uint32_t vni_of(std::string_view network);

}  // namespace blixard::net
