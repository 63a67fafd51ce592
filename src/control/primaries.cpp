// VM sets' primaries in the store (see primaries.hpp).
#include "control/primaries.hpp"

#include "blixard/error.hpp"

namespace blixard::control {

StoredPrimaries::StoredPrimaries(std::shared_ptr<store::Store> store) : store_(std::move(store)) {}

std::optional<v1::VmPrimary> StoredPrimaries::load(const std::string& vm) {
  const std::string key = k_primaries_prefix + vm;
  auto kv = store_->get(key);
  if (!kv) return std::nullopt;
  v1::VmPrimary primary;
  if (!primary.ParseFromString(kv->value)) {
    throw Error(errc::internal, "stored primary at " + key + " is corrupt");
  }
  return primary;
}

v1::VmPrimary StoredPrimaries::fence(const std::string& vm, std::int64_t seen, v1::VmPrimary next) {
  const std::string key = k_primaries_prefix + vm;
  const auto kv = store_->get(key);
  v1::VmPrimary stored;
  if (kv && !stored.ParseFromString(kv->value)) {
    throw Error(errc::internal, "stored primary at " + key + " is corrupt");
  }
  // The epoch is what fences; the write below is conditional on the record read here.
  if (stored.epoch() != seen) {
    throw Error(errc::conflict, "the primary of " + vm + " changed meanwhile (epoch " +
                                    std::to_string(stored.epoch()) + ", expected " +
                                    std::to_string(seen) + ")");
  }
  next.set_epoch(seen + 1);
  store::Txn txn;
  txn.compares.push_back({key, store::Compare::Target::mod_revision, store::Compare::Op::equal,
                          kv ? kv->mod_revision : 0});  // (a missing key's is 0)
  txn.success.push_back({store::Operation::Type::put, key, next.SerializeAsString(), 0});
  if (!store_->txn(txn).succeeded) {
    throw Error(errc::conflict, "the primary of " + vm + " changed meanwhile");
  }
  return next;
}

}  // namespace blixard::control
