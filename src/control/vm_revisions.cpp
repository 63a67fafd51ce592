// VM sets' revisions in the store (vm_revisions.hpp).
#include "control/vm_revisions.hpp"

#include <algorithm>
#include <set>
#include <utility>

namespace blixard::control {
namespace {

std::string prefix_of(const std::string& vm) { return k_vm_revisions_prefix + vm + "/"; }

}  // namespace

StoredVmRevisions::StoredVmRevisions(std::shared_ptr<store::Store> store)
    : store_(std::move(store)) {}

std::string StoredVmRevisions::key(const std::string& vm, std::int64_t revision) {
  return prefix_of(vm) + std::to_string(revision);
}

std::vector<v1::VmRevision> StoredVmRevisions::load(const std::string& vm) {
  std::vector<v1::VmRevision> out;
  for (const auto& kv : store_->list(prefix_of(vm)).kvs) {
    v1::VmRevision revision;
    // (A record that does not parse is skipped: the history is shorter, nothing else changes.)
    if (revision.ParseFromString(kv.value) && revision.revision() > 0) {
      out.push_back(std::move(revision));
    }
  }
  // Keys sort as text ("10" before "9"): by number.
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.revision() < b.revision(); });
  return out;
}

void StoredVmRevisions::append(const std::string& vm, const v1::VmRevision& revision,
                               std::size_t keep) {
  store::Txn txn;
  txn.success.push_back(
      {store::Operation::Type::put, key(vm, revision.revision()), revision.SerializeAsString(), 0});
  const auto oldest_kept = revision.revision() - static_cast<std::int64_t>(keep) + 1;
  for (const auto& kept : load(vm)) {
    if (kept.revision() < oldest_kept) {
      txn.success.push_back({store::Operation::Type::erase, key(vm, kept.revision()), {}, 0});
    }
  }
  store_->txn(txn);
}

void StoredVmRevisions::erase(const std::string& vm) {
  store::Txn txn;
  txn.success.push_back({store::Operation::Type::erase_prefix, prefix_of(vm), {}, 0});
  store_->txn(txn);
}

void StoredVmRevisions::erase_orphans(const std::string& vms_prefix) {
  std::set<std::string> sets, orphans;
  for (const auto& kv : store_->list(vms_prefix).kvs) sets.insert(kv.key.substr(vms_prefix.size()));
  const std::string_view prefix = k_vm_revisions_prefix;
  for (const auto& kv : store_->list(k_vm_revisions_prefix).kvs) {
    const auto rest = std::string_view(kv.key).substr(prefix.size());
    std::string vm(rest.substr(0, rest.find('/')));
    if (!sets.contains(vm)) orphans.insert(std::move(vm));
  }
  for (const auto& vm : orphans) {
    store::Txn txn;
    // Only while the set has no record: one created meanwhile keeps what it wrote.
    txn.compares.push_back(
        {vms_prefix + vm, store::Compare::Target::version, store::Compare::Op::equal, 0});
    txn.success.push_back({store::Operation::Type::erase_prefix, prefix_of(vm), {}, 0});
    store_->txn(txn);
  }
}

}  // namespace blixard::control
