// VM sets' revisions as stored objects (DESIGN §3): the VM controller (control/vm_sets.hpp)
// numbers each change of a set's spec other than `replicas` and `stopped` and keeps the last few,
// which `vm history` lists and `vm rollback` returns to. Kept in the store, one record per revision
// under /registry/vmrevisions/<vm>/<revision>, a restarted server shows the same history and
// numbers new revisions after it. The controller reads a set's once, when it first sees the set,
// and writes one with each new revision; the records go with the set.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "blixard/v1/vm.pb.h"
#include "store/store.hpp"

namespace blixard::control {

inline constexpr const char* k_vm_revisions_prefix = "/registry/vmrevisions/";

// Where the controller keeps revisions (the store's, below; tests may keep them elsewhere).
class VmRevisionLog {
 public:
  virtual ~VmRevisionLog() = default;
  // The set's kept revisions, oldest first.
  virtual std::vector<v1::VmRevision> load(const std::string& vm) = 0;
  // Adds the set's newest revision; those `keep` or more before it go.
  virtual void append(const std::string& vm, const v1::VmRevision& revision, std::size_t keep) = 0;
  // The set is deleted: its revisions go.
  virtual void erase(const std::string& vm) = 0;
};

class StoredVmRevisions final : public VmRevisionLog {
 public:
  explicit StoredVmRevisions(std::shared_ptr<store::Store> store);

  std::vector<v1::VmRevision> load(const std::string& vm) override;
  void append(const std::string& vm, const v1::VmRevision& revision, std::size_t keep) override;
  void erase(const std::string& vm) override;
  // Erases the revisions of every set with no record under `vms_prefix` (deleted while no server
  // watched), each only if the set is still absent then.
  void erase_orphans(const std::string& vms_prefix);

  static std::string key(const std::string& vm, std::int64_t revision);

 private:
  std::shared_ptr<store::Store> store_;
};

}  // namespace blixard::control
