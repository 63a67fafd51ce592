// apply's planning as a pure function: an object set, its options (mode, prune, stack, dry run)
// and a snapshot of what is stored in, the store writes (each guarded by the resource version it
// was planned against) and the ApplyResult out. Service::apply reads the snapshot, commits the plan
// as one compare-and-swap transaction and plans again on conflict; the planner itself touches no
// store.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <google/protobuf/timestamp.pb.h>

#include "blixard/detail/backend.hpp"
#include "blixard/v1/api.pb.h"
#include "common/registry.hpp"

namespace blixard::api {

// Where apply's kinds are stored: <prefix><name>.
inline constexpr const char* k_functions_prefix = "/registry/functions/";
inline constexpr const char* k_vms_prefix = "/registry/vms/";
inline constexpr const char* k_triggers_prefix = "/registry/triggers/";
// Label that marks a trigger generated from a function's inline `triggers` list; its value is
// the function's name.
inline constexpr const char* k_owner_label = "blixard.dev/function";
// Label that marks a queue apply created because a queue trigger named it and it did not exist;
// its value is the trigger's name. The queue goes when that trigger does.
inline constexpr const char* k_created_for_label = "blixard.dev/created-for";

// One stored object as the planner sees it: the serialized message and its resource version.
struct StoredObject {
  std::string value;
  std::int64_t resource_version = 0;
};
// Stored objects by key. A key that is absent here is absent from the store.
using Snapshot = std::map<std::string, StoredObject>;

// A set ready to plan: validated, stamped with its stack, inline triggers expanded (remove: as
// given).
struct PreparedApply {
  v1::ObjectSet set;
  detail::ApplyMode mode = detail::ApplyMode::apply;
  bool prune = false;
  bool dry_run = false;
  // The set's stack: the Platform's name or ApplyOptions::stack; empty: none.
  std::string stack;
};

// What a snapshot must hold for plan_apply: these keys, and every key under these prefixes.
struct SnapshotQuery {
  std::vector<std::string> keys;
  std::vector<std::string> prefixes;
};

// `key` must still be at `resource_version` (0: absent) when the writes commit.
struct Expectation {
  std::string key;
  std::int64_t resource_version = 0;
};

struct Write {
  enum class Type { put, erase };
  Type type = Type::put;
  std::string key;
  std::string value;  // put: the serialized object
};

struct ApplyPlan {
  std::vector<Expectation> expected;
  std::vector<Write> writes;  // empty: nothing to commit
  // Per object created, configured, unchanged, deleted or pruned (with a diff of each change
  // when dry_run); the revision is the caller's to set.
  v1::ApplyResult result;
};

// Validates `set` (apply, create), puts every object in the stack options.stack names, and
// expands inline triggers into owned Trigger objects named <function>-<type>[-<n>]. Throws
// Error(invalid_spec) naming the field ("stack" for a stack that contradicts the set's, or prune
// without any).
PreparedApply prepare_apply(const v1::ObjectSet& set, const detail::ApplyOptions& options);

// The keys and prefixes plan_apply reads.
SnapshotQuery snapshot_query(const PreparedApply& prepared);

// The writes that make the store hold `prepared` (or not hold it, for remove). An object whose
// spec, labels and stack equal the stored ones is unchanged and not written: where its manifest
// lives (metadata.source, the path of a config file it names) is not part of it. Owned triggers a
// function no longer declares are deleted with it. A queue trigger's source queue that neither the
// set nor the store holds is created, owned by the trigger (k_created_for_label), and deleted with
// it unless another trigger still reads it. With prune, the stack's stored objects the set does not
// hold are deleted too. `now` stamps created_at of new objects. Throws Error naming the field:
// invalid_spec, already_exists (create), not_found (remove), conflict (a pool or network still
// used), internal for a corrupt stored object that must be read.
ApplyPlan plan_apply(const PreparedApply& prepared, const Snapshot& stored,
                     const google::protobuf::Timestamp& now);

}  // namespace blixard::api
