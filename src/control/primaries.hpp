// The primary of each VM set that has one, as a stored fact (DESIGN §3, §6):
// /registry/primaries/<vm> holds {replica, node, epoch}. A change of primary (an election, a
// failover, a switchover) is one compare-and-swap that bumps the epoch: the fence. The new
// primary's start carries the epoch to its node, which refuses the set's volume to any start
// under an older one (runtime/volume.hpp), so a primary that was given up on cannot take the
// volume back, whatever the order its node hears things in. A record outlives its set, as the
// set's volume does: a set made again under the name fences on from the epoch it reached.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "blixard/v1/vm.pb.h"
#include "store/store.hpp"

namespace blixard::control {

inline constexpr const char* k_primaries_prefix = "/registry/primaries/";

// Where the controller keeps primaries (the store's, below; tests may keep them elsewhere).
class PrimaryLog {
 public:
  virtual ~PrimaryLog() = default;
  // The set's primary as last stored, if any.
  virtual std::optional<v1::VmPrimary> load(const std::string& vm) = 0;
  // Makes `next` the primary under the epoch after `seen`, if the stored one is still `seen` (0:
  // none stored yet); returns the record as stored. Throws Error(conflict) when another wrote
  // first (the caller reads again and decides again).
  virtual v1::VmPrimary fence(const std::string& vm, std::int64_t seen, v1::VmPrimary next) = 0;
};

class StoredPrimaries final : public PrimaryLog {
 public:
  explicit StoredPrimaries(std::shared_ptr<store::Store> store);

  std::optional<v1::VmPrimary> load(const std::string& vm) override;
  v1::VmPrimary fence(const std::string& vm, std::int64_t seen, v1::VmPrimary next) override;

 private:
  std::shared_ptr<store::Store> store_;
};

}  // namespace blixard::control
