// Addresses of VM replicas on their sets' networks (see networks.hpp).
#include "control/networks.hpp"

#include <algorithm>
#include <set>

#include "blixard/error.hpp"
#include "common/registry.hpp"
#include "common/subnet.hpp"

namespace blixard::control {
namespace {

constexpr int k_attempts = 8;

// Whether `replica` ("web-2") is one of `vm`'s ("web").
bool replica_of(const std::string& replica, const std::string& vm) {
  if (!replica.starts_with(vm + "-") || replica.size() == vm.size() + 1) return false;
  return std::all_of(replica.begin() + static_cast<std::ptrdiff_t>(vm.size()) + 1, replica.end(),
                     [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

Networks::Networks(std::shared_ptr<store::Store> store) : store_(std::move(store)) {}

v1::NetworkAttachment Networks::claim(const std::string& network, const std::string& replica) {
  const auto stored = store_->get(k_networks_prefix + network);
  if (!stored) {
    throw Error(errc::invalid_spec,
                "network \"" + network +
                    "\" does not exist: create it with `blixard network create " + network +
                    " --subnet 10.88.0.0/24`",
                "network");
  }
  v1::Network n;
  if (!n.ParseFromString(stored->value)) {
    throw Error(errc::internal, "stored object at " + stored->key + " is corrupt");
  }
  const auto subnet = net::parse_subnet(n.spec().subnet(), "spec.subnet");
  v1::NetworkAttachment attachment;
  attachment.set_network(network);
  attachment.set_subnet(subnet.to_string());
  const std::string prefix = k_addresses_prefix + network + "/";
  for (int attempt = 0; attempt < k_attempts; ++attempt) {
    std::set<net::Address> taken;
    for (const auto& kv : store_->list(prefix).kvs) {
      const auto address = kv.key.substr(prefix.size());
      if (kv.value == replica) {
        attachment.set_address(address);
        return attachment;
      }
      if (auto a = net::Address::parse(address)) taken.insert(*a);
    }
    const auto free = net::next_free(subnet, taken);
    if (!free) {
      std::string why = "network " + network;
      why.append(" (").append(subnet.to_string()).append(") has no free address for ");
      throw Error(errc::unavailable, why.append(replica));
    }
    store::Txn txn;
    const std::string key = prefix + free->to_string();
    txn.compares.push_back(
        {key, store::Compare::Target::create_revision, store::Compare::Op::equal, 0});
    txn.success.push_back({store::Operation::Type::put, key, replica, 0});
    if (store_->txn(txn).succeeded) {
      attachment.set_address(free->to_string());
      return attachment;
    }
  }
  throw Error(errc::conflict, "addresses of network " + network + " kept changing");
}

void Networks::release(const std::string& vm) {
  store::Txn txn;
  for (const auto& kv : store_->list(k_addresses_prefix).kvs) {
    if (replica_of(kv.value, vm)) {
      txn.compares.push_back({kv.key, store::Compare::Target::mod_revision,
                              store::Compare::Op::equal, kv.mod_revision});
      txn.success.push_back({store::Operation::Type::erase, kv.key, {}, 0});
    }
  }
  if (!txn.success.empty()) store_->txn(txn);  // a new claim meanwhile: kept (the set is back)
}

std::uint32_t Networks::held(const std::string& network) {
  return static_cast<std::uint32_t>(store_->list(k_addresses_prefix + network + "/").kvs.size());
}

}  // namespace blixard::control
