// IPv4 subnets, address management and derived names (see subnet.hpp).
#include "common/subnet.hpp"

#include <arpa/inet.h>

#include <array>
#include <charconv>
#include <cstdio>

#include "blixard/error.hpp"

namespace blixard::net {
namespace {

// FNV-1a, 64 bits: stable across builds and hosts, which std::hash is not.
std::uint64_t name_hash(std::string_view name) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::string hashed_name(std::string_view prefix, std::string_view network) {
  std::array<char, 9> hex{};
  std::snprintf(hex.data(), hex.size(), "%08x", static_cast<unsigned>(name_hash(network)));
  return std::string(prefix) + hex.data();
}

}  // namespace

std::optional<Address> Address::parse(std::string_view text) {
  if (text.size() > 15) return std::nullopt;
  in_addr a{};
  // inet_pton takes only the four-part dotted form, unlike inet_aton ("10.1" or "0x0a.0.0.1").
  if (::inet_pton(AF_INET, std::string(text).c_str(), &a) != 1) return std::nullopt;
  return Address{ntohl(a.s_addr)};
}

std::string Address::to_string() const {
  return std::to_string(value >> 24) + '.' + std::to_string(value >> 16 & 0xff) + '.' +
         std::to_string(value >> 8 & 0xff) + '.' + std::to_string(value & 0xff);
}

std::string Subnet::to_string() const {
  return network_.to_string() + '/' + std::to_string(prefix_);
}

Subnet parse_subnet(std::string_view cidr, std::string field) {
  const auto bad = [&](const std::string& why) {
    return Error(errc::invalid_spec, why, std::move(field));
  };
  const auto slash = cidr.find('/');
  if (slash == std::string_view::npos) {
    throw bad("expected an IPv4 network such as 10.88.0.0/24, got '" + std::string(cidr) + "'");
  }
  const auto address = Address::parse(cidr.substr(0, slash));
  if (!address) {
    throw bad("'" + std::string(cidr.substr(0, slash)) + "' is not an IPv4 address");
  }
  const auto digits = cidr.substr(slash + 1);
  int prefix = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), prefix);
  if (digits.empty() || ec != std::errc{} || end != digits.data() + digits.size() || prefix < 8 ||
      prefix > 30) {
    throw bad("the prefix of '" + std::string(cidr) + "' must be a number from 8 to 30");
  }
  Subnet s;
  s.prefix_ = prefix;
  s.network_ = Address{address->value & s.mask()};
  if (s.network_ != *address) {
    throw bad("'" + std::string(cidr) + "' has host bits set: the network is " + s.to_string());
  }
  return s;
}

std::optional<Address> next_free(const Subnet& subnet, const std::set<Address>& taken) {
  // Addresses before the first candidate sort first in `taken`: start the walk past them.
  Address a{subnet.gateway().value + 1};
  for (auto it = taken.lower_bound(a); a < subnet.broadcast(); ++a.value) {
    if (it == taken.end() || *it != a) return a;
    ++it;
  }
  return std::nullopt;
}

std::string bridge_name(std::string_view network) { return hashed_name("bx-", network); }

std::string vxlan_name(std::string_view network) { return hashed_name("vx-", network); }

std::uint32_t vni_of(std::string_view network) {
  return static_cast<std::uint32_t>((name_hash(network) >> 32) % 0xffffff) + 1;
}

}  // namespace blixard::net
