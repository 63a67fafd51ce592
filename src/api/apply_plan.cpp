// apply's planning over a snapshot (see apply_plan.hpp).
#include "api/apply_plan.hpp"

#include <set>
#include <string_view>
#include <utility>

#include <google/protobuf/util/message_differencer.h>

#include "api/apply_diff.hpp"
#include "blixard/error.hpp"
#include "blixard/spec.hpp"

namespace blixard::api {
namespace {

using detail::ApplyMode;

// Inline `triggers` of a function become Trigger objects it owns, named <function>-<type>[-<n>].
void expand_inline_triggers(v1::ObjectSet& set) {
  std::set<std::string> explicit_names;
  for (const auto& t : set.triggers()) explicit_names.insert(t.metadata().name());
  for (int i = 0; i < set.functions_size(); ++i) {
    const auto& fn = set.functions(i);
    std::map<std::string, int> per_type;
    for (const auto& t : fn.spec().triggers()) per_type[t.type()]++;
    std::map<std::string, int> seen;
    for (int j = 0; j < fn.spec().triggers_size(); ++j) {
      const auto& spec = fn.spec().triggers(j);
      std::string name = fn.metadata().name() + "-" + spec.type();
      const int n = seen[spec.type()]++;
      if (per_type[spec.type()] > 1) name += "-" + std::to_string(n);
      if (explicit_names.count(name) != 0) {
        throw Error(
            errc::invalid_spec,
            "trigger name \"" + name +
                "\" is generated for this inline trigger and is also declared explicitly",
            "spec.functions[" + std::to_string(i) + "].triggers[" + std::to_string(j) + "]");
      }
      auto* trigger = set.add_triggers();
      trigger->mutable_metadata()->set_name(name);
      (*trigger->mutable_metadata()->mutable_labels())[k_owner_label] = fn.metadata().name();
      trigger->mutable_metadata()->set_stack(fn.metadata().stack());
      *trigger->mutable_spec() = spec;
      trigger->mutable_spec()->set_function(fn.metadata().name());
    }
  }
}

bool same_labels(const v1::ObjectMeta& a, const v1::ObjectMeta& b) {
  if (a.labels().size() != b.labels().size()) return false;
  for (const auto& [key, value] : a.labels()) {
    auto it = b.labels().find(key);
    if (it == b.labels().end() || it->second != value) return false;
  }
  return true;
}

// What `configured` means: the declaration changed. Bookkeeping (revisions, created_at) and
// where it was read from (metadata.source, and the config file's path a spec names) are not
// part of it: a manifest moved with its configs to another directory is unchanged.
template <class T>
bool same_declaration(const T& a, const T& b) {
  if (a.metadata().stack() != b.metadata().stack() || !same_labels(a.metadata(), b.metadata())) {
    return false;
  }
  if constexpr (requires { a.spec().config(); }) {
    auto x = a.spec();
    auto y = b.spec();
    x.clear_config();
    y.clear_config();
    return google::protobuf::util::MessageDifferencer::Equals(x, y);
  } else {
    return google::protobuf::util::MessageDifferencer::Equals(a.spec(), b.spec());
  }
}

class Planner {
 public:
  Planner(const PreparedApply& prepared, const Snapshot& stored,
          const google::protobuf::Timestamp& now)
      : set_(prepared.set),
        mode_(prepared.mode),
        prune_(prepared.prune),
        dry_run_(prepared.dry_run),
        stack_(prepared.stack),
        stored_(stored),
        now_(now) {}

  ApplyPlan run() {
    for (int i = 0; i < set_.functions_size(); ++i) {
      plan_object("function", k_functions_prefix, set_.functions(i),
                  "functions[" + std::to_string(i) + "].metadata.name");
    }
    for (int i = 0; i < set_.storage_pools_size(); ++i) {
      plan_object("storage pool", k_storage_pools_prefix, set_.storage_pools(i),
                  "storagePools[" + std::to_string(i) + "].metadata.name");
    }
    for (int i = 0; i < set_.networks_size(); ++i) {
      plan_object("network", k_networks_prefix, set_.networks(i),
                  "networks[" + std::to_string(i) + "].metadata.name");
    }
    for (int i = 0; i < set_.queues_size(); ++i) {
      plan_object("queue", k_queues_prefix, set_.queues(i),
                  "queues[" + std::to_string(i) + "].metadata.name");
    }
    for (int i = 0; i < set_.vms_size(); ++i) {
      plan_object("vm", k_vms_prefix, set_.vms(i), "vms[" + std::to_string(i) + "].metadata.name");
    }
    if (mode_ != ApplyMode::remove) check_references();

    std::set<std::string> applied_functions;
    for (const auto& f : set_.functions()) applied_functions.insert(f.metadata().name());
    std::set<std::string> declared_triggers;
    for (const auto& t : set_.triggers()) declared_triggers.insert(t.metadata().name());
    existing_triggers_ = stored_all<v1::Trigger>(k_triggers_prefix);

    // Triggers a function owned but no longer declares go with the new version of the function.
    for (const auto& [key, t] : existing_triggers_) {
      auto owner = t.metadata().labels().find(k_owner_label);
      if (owner == t.metadata().labels().end() || applied_functions.count(owner->second) == 0) {
        continue;
      }
      if (mode_ != ApplyMode::remove && declared_triggers.count(t.metadata().name()) != 0) {
        continue;
      }
      if (!touched_.insert(key).second) continue;
      erase("trigger", key, t, "deleted");
    }

    if (mode_ != ApplyMode::remove) {
      // A trigger needs its function, and an HTTP path belongs to one trigger.
      std::map<std::string, std::string> paths;
      for (const auto& [key, t] : existing_triggers_) {
        if (t.spec().type() == "http" && declared_triggers.count(t.metadata().name()) == 0 &&
            touched_.count(key) == 0) {
          paths[t.spec().path()] = t.metadata().name();
        }
      }
      for (int i = 0; i < set_.triggers_size(); ++i) {
        const auto& t = set_.triggers(i);
        const std::string field = "triggers[" + std::to_string(i) + "]";
        if (applied_functions.count(t.spec().function()) == 0) {
          const std::string key = k_functions_prefix + t.spec().function();
          const StoredObject* fn = find(key);
          if (fn == nullptr) {
            throw Error(errc::invalid_spec,
                        "function \"" + t.spec().function() + "\" does not exist",
                        field + ".spec.function");
          }
          // Deleted meanwhile, the trigger would be left without its function.
          expect(key, fn->resource_version);
        }
        if (t.spec().type() == "http") {
          auto [it, fresh] = paths.emplace(t.spec().path(), t.metadata().name());
          if (!fresh && it->second != t.metadata().name()) {
            throw Error(
                errc::invalid_spec,
                "path " + t.spec().path() + " is already served by trigger \"" + it->second + "\"",
                field + ".spec.path");
          }
        }
      }
      create_source_queues();
      check_dead_letter_queues();
    }
    for (int i = 0; i < set_.triggers_size(); ++i) {
      plan_object("trigger", k_triggers_prefix, set_.triggers(i),
                  "triggers[" + std::to_string(i) + "].metadata.name");
    }
    if (prune_) prune();
    erase_created_queues();
    check_pools_unused();
    check_networks_unused();
    return std::move(plan_);
  }

 private:
  // Every stored object of a kind by key (the snapshot's order, the store's). A corrupt one is
  // an internal error, or left out with `skip_corrupt`.
  template <class T>
  std::map<std::string, T> stored_all(const std::string& prefix, bool skip_corrupt = false) const {
    std::map<std::string, T> out;
    for (auto it = stored_.lower_bound(prefix);
         it != stored_.end() && it->first.starts_with(prefix); ++it) {
      T object;
      if (!object.ParseFromString(it->second.value)) {
        if (skip_corrupt) continue;
        throw Error(errc::internal, "stored object at " + it->first + " is corrupt");
      }
      object.mutable_metadata()->set_resource_version(it->second.resource_version);
      out.emplace(it->first, std::move(object));
    }
    return out;
  }

  // A VM's storage pool and network exist (stored, or in this set): their versions are part of
  // the transaction, so they cannot go meanwhile. (A storage class is resolved when a replica
  // starts: a set naming one no pool serves yet waits for it, as a Kubernetes claim does.)
  void check_references() {
    std::set<std::string> declared;
    for (const auto& pool : set_.storage_pools()) {
      declared.insert(k_storage_pools_prefix + pool.metadata().name());
    }
    for (const auto& network : set_.networks()) {
      declared.insert(k_networks_prefix + network.metadata().name());
    }
    for (int i = 0; i < set_.vms_size(); ++i) {
      const auto& spec = set_.vms(i).spec();
      // As validation names it: a standalone VM's "spec.storage", a Platform entry's by index.
      const std::string at =
          set_.stack().empty() ? "spec." : "spec.vms[" + std::to_string(i) + "].";
      const auto require = [&](const char* prefix, const std::string& name, const char* kind,
                               const std::string& how, const std::string& field) {
        const std::string key = prefix + name;
        if (name.empty() || declared.contains(key)) return;
        const StoredObject* found = find(key);
        if (found == nullptr) {
          std::string why = std::string(kind) + " \"" + name;
          why.append("\" does not exist: create it with `").append(how).append("`");
          throw Error(errc::invalid_spec, why, at + field);
        }
        expect(key, found->resource_version);
      };
      require(k_storage_pools_prefix, spec.storage().pool(), "storage pool",
              "blixard storage pool create " + spec.storage().pool() +
                  " --type dir --path /var/lib/blixard-volumes",
              "storage.pool");
      require(k_networks_prefix, spec.network(), "network",
              "blixard network create " + spec.network() + " --subnet 10.88.0.0/24", "network");
      if (!spec.primary_election_policy().empty() && !spec.storage().pool().empty()) {
        // The set's one volume follows its primary to any node: a node-local pool cannot.
        std::string type;
        for (const auto& pool : set_.storage_pools()) {
          if (pool.metadata().name() == spec.storage().pool()) type = pool.spec().type();
        }
        const StoredObject* found = find(k_storage_pools_prefix + spec.storage().pool());
        v1::StoragePool stored;
        if (type.empty() && found != nullptr && stored.ParseFromString(found->value)) {
          type = stored.spec().type();
        }
        if (type == "dir") {
          throw Error(errc::invalid_spec,
                      "storage pool \"" + spec.storage().pool() +
                          "\" is node-local (dir), and a set with a primary keeps one volume "
                          "that follows its primary to any node: use a shared-dir pool "
                          "(storage class replicated)",
                      at + "storage.pool");
        }
      }
    }
  }

  // A queue trigger reads a queue: one neither the set nor the store holds is created for it,
  // with the default spec, in the trigger's stack. A stored one it reads stays (prune keeps it).
  void create_source_queues() {
    std::set<std::string> declared;
    for (const auto& q : set_.queues()) declared.insert(q.metadata().name());
    for (const auto& t : set_.triggers()) {
      if (t.spec().type() != "queue" || declared.contains(t.spec().source())) continue;
      const std::string key = k_queues_prefix + t.spec().source();
      if (!touched_.insert(key).second) continue;  // an earlier trigger reads it too
      if (const StoredObject* existing = find(key)) {
        expect(key, existing->resource_version);
        v1::Queue stored;
        if (stored.ParseFromString(existing->value)) {
          auto owner = stored.metadata().labels().find(k_created_for_label);
          if (owner != stored.metadata().labels().end() && owner->second == t.metadata().name()) {
            add_item("queue", t.spec().source(), "unchanged");
          }
        }
        continue;
      }
      v1::Queue queue;
      auto* meta = queue.mutable_metadata();
      meta->set_name(t.spec().source());
      meta->set_stack(t.metadata().stack());
      (*meta->mutable_labels())[k_created_for_label] = t.metadata().name();
      validate_queue(queue);  // the defaults
      *meta->mutable_created_at() = now_;
      expect(key, 0);
      plan_.writes.push_back({Write::Type::put, key, queue.SerializeAsString()});
      add_item("queue", meta->name(), "created", nullptr, &queue);
    }
  }

  // A dead-letter queue exists: declared, created for a trigger, or stored (and kept so).
  void check_dead_letter_queues() {
    std::set<std::string> declared;
    for (const auto& q : set_.queues()) declared.insert(q.metadata().name());
    for (int i = 0; i < set_.queues_size(); ++i) {
      const std::string& dlq = set_.queues(i).spec().dead_letter_queue();
      const std::string key = k_queues_prefix + dlq;
      if (dlq.empty() || declared.contains(dlq) || touched_.contains(key)) continue;
      if (const StoredObject* found = find(key)) {
        expect(key, found->resource_version);
        continue;
      }
      const std::string at =
          set_.stack().empty() ? "spec." : "spec.queues[" + std::to_string(i) + "].";
      throw Error(errc::invalid_spec,
                  "queue \"" + dlq + "\" does not exist: declare it in the manifest (kind: Queue)",
                  at + "deadLetterQueue");
    }
  }

  // The stack's stored objects this set does not hold go (prune; or remove with a stack).
  void prune() {
    const char* action = mode_ == ApplyMode::remove ? "deleted" : "pruned";
    prune_kind<v1::Function>("function", k_functions_prefix, action);
    prune_kind<v1::Trigger>("trigger", k_triggers_prefix, action);
    prune_kind<v1::Vm>("vm", k_vms_prefix, action);
    prune_kind<v1::Queue>("queue", k_queues_prefix, action);
    prune_kind<v1::Network>("network", k_networks_prefix, action);
    prune_kind<v1::StoragePool>("storage pool", k_storage_pools_prefix, action);
    // Triggers a pruned function owned go with it, whatever their stack.
    for (const auto& [key, t] : existing_triggers_) {
      auto owner = t.metadata().labels().find(k_owner_label);
      if (owner == t.metadata().labels().end() || touched_.contains(key) ||
          !erased_.contains(k_functions_prefix + owner->second)) {
        continue;
      }
      touched_.insert(key);
      erase("trigger", key, t, action);
    }
  }

  template <class T>
  void prune_kind(const char* kind, const char* prefix, const char* action) {
    for (const auto& [key, object] : stored_all<T>(prefix, true)) {
      if (object.metadata().stack() != stack_ || !touched_.insert(key).second) continue;
      erase(kind, key, object, action);
    }
  }

  // A queue created for a trigger goes with that trigger, unless a trigger that stays reads it.
  void erase_created_queues() {
    std::map<std::string, std::string> going;  // trigger name -> its action
    for (const auto& [key, action] : erased_) {
      if (key.starts_with(k_triggers_prefix)) {
        going.emplace(key.substr(std::string_view(k_triggers_prefix).size()), action);
      }
    }
    if (going.empty()) return;
    std::set<std::string> read;
    for (const auto& [key, t] : existing_triggers_) {
      if (t.spec().type() == "queue" && !erased_.contains(key)) read.insert(t.spec().source());
    }
    if (mode_ != ApplyMode::remove) {
      for (const auto& t : set_.triggers()) {
        if (t.spec().type() == "queue") read.insert(t.spec().source());
      }
    }
    for (const auto& [key, queue] : stored_all<v1::Queue>(k_queues_prefix, true)) {
      auto owner = queue.metadata().labels().find(k_created_for_label);
      if (owner == queue.metadata().labels().end() || touched_.contains(key) ||
          read.contains(queue.metadata().name())) {
        continue;
      }
      auto trigger = going.find(owner->second);
      if (trigger == going.end()) continue;
      touched_.insert(key);
      erase("queue", key, queue, trigger->second.c_str());
    }
  }

  // The VMs the store will hold once the plan commits: stored ones not deleted, and the set's.
  std::map<std::string, v1::VmSpec> vms_after() {
    std::map<std::string, v1::VmSpec> out;
    for (const auto& [key, vm] : stored_all<v1::Vm>(k_vms_prefix, true)) {
      // A VM written meanwhile might name what goes.
      expect(key, vm.metadata().resource_version());
      if (!erased_.contains(key)) out[vm.metadata().name()] = vm.spec();
    }
    if (mode_ != ApplyMode::remove) {
      for (const auto& vm : set_.vms()) out[vm.metadata().name()] = vm.spec();
    }
    return out;
  }

  std::vector<std::string> erased_names(const char* prefix) const {
    std::vector<std::string> names;
    for (const auto& [key, action] : erased_) {
      if (key.starts_with(prefix)) names.push_back(key.substr(std::string_view(prefix).size()));
    }
    return names;
  }

  // A network goes only once no VM names it.
  void check_networks_unused() {
    const auto names = erased_names(k_networks_prefix);
    if (names.empty()) return;
    for (const auto& [vm, spec] : vms_after()) {
      for (const auto& name : names) {
        if (spec.network() == name) {
          throw Error(errc::conflict,
                      "network \"" + name + "\" is used by vm \"" + vm + "\": delete the vm first");
        }
      }
    }
  }

  // A pool goes only once no VM names it and it holds no volume.
  void check_pools_unused() {
    const auto names = erased_names(k_storage_pools_prefix);
    if (names.empty()) return;
    const auto vms = vms_after();
    const auto volumes = stored_all<v1::Volume>(k_volumes_prefix);
    for (const auto& name : names) {
      for (const auto& [vm, spec] : vms) {
        if (spec.storage().pool() == name) {
          throw Error(errc::conflict, "storage pool \"" + name + "\" is used by vm \"" + vm +
                                          "\": delete the vm first");
        }
      }
      std::string held;
      for (const auto& [key, volume] : volumes) {
        if (volume.spec().storage().pool() == name) {
          held += (held.empty() ? "" : ", ") + volume.metadata().name();
        }
        expect(key, volume.metadata().resource_version());
      }
      if (!held.empty()) {
        std::string why = "storage pool \"" + name;
        why.append("\" holds volumes (").append(held);
        throw Error(errc::conflict,
                    why.append("): delete them first with `blixard storage volume delete NAME`"));
      }
    }
  }

  const StoredObject* find(const std::string& key) const {
    auto it = stored_.find(key);
    return it == stored_.end() ? nullptr : &it->second;
  }

  void expect(const std::string& key, std::int64_t resource_version) {
    if (expected_.insert(key).second) plan_.expected.push_back({key, resource_version});
  }

  // One line of the result; on a dry run, a change carries its diff (kubectl diff's live and
  // merged) from `before` (absent: created) to `after` (absent: deleted).
  void add_item(const char* kind, const std::string& name, const char* action,
                const google::protobuf::Message* before = nullptr,
                const google::protobuf::Message* after = nullptr) {
    auto* item = plan_.result.add_items();
    item->set_kind(kind);
    item->set_name(name);
    item->set_action(action);
    if (dry_run_ && (before != nullptr || after != nullptr)) {
      std::string path = kind;
      std::erase(path, ' ');
      path += "/" + name;
      item->set_diff(unified_diff(before != nullptr ? render_declaration(*before) : "",
                                  after != nullptr ? render_declaration(*after) : "",
                                  "live/" + path, "merged/" + path));
    }
  }

  // Deletes a stored object (at the version it was read at) and says so.
  template <class T>
  void erase(const char* kind, const std::string& key, const T& stored, const char* action) {
    expect(key, stored.metadata().resource_version());
    plan_.writes.push_back({Write::Type::erase, key, {}});
    erased_.emplace(key, action);
    add_item(kind, stored.metadata().name(), action, &stored, nullptr);
  }

  template <class T>
  void plan_object(const char* kind, const char* prefix, T object, const std::string& field) {
    auto* meta = object.mutable_metadata();
    const std::string key = prefix + meta->name();
    if (!touched_.insert(key).second) {
      throw Error(errc::invalid_spec, "duplicate name \"" + meta->name() + "\"", field);
    }
    const StoredObject* existing = find(key);
    expect(key, existing != nullptr ? existing->resource_version : 0);
    T stored;
    // A corrupt stored object compares unequal and is overwritten: applying again repairs it.
    if (existing != nullptr) (void)stored.ParseFromString(existing->value);
    if (mode_ == ApplyMode::remove) {
      if (existing == nullptr) {
        throw Error(errc::not_found, std::string(kind) + " \"" + meta->name() + "\" not found",
                    field);
      }
      stored.mutable_metadata()->set_name(meta->name());
      stored.mutable_metadata()->set_resource_version(existing->resource_version);
      erase(kind, key, stored, "deleted");
      return;
    }
    if (existing != nullptr && mode_ == ApplyMode::create) {
      throw Error(errc::already_exists,
                  std::string(kind) + " \"" + meta->name() + "\" already exists", field);
    }
    // Status is observed, not declared; store-owned metadata comes from the key's revisions.
    object.clear_status();
    meta->clear_resource_version();
    meta->clear_create_revision();
    const char* action = "created";
    if (existing != nullptr) {
      *meta->mutable_created_at() = stored.metadata().created_at();
      if (same_declaration(object, stored)) {
        add_item(kind, meta->name(), "unchanged");
        return;
      }
      action = "configured";
    } else {
      *meta->mutable_created_at() = now_;
    }
    plan_.writes.push_back({Write::Type::put, key, object.SerializeAsString()});
    add_item(kind, meta->name(), action, existing != nullptr ? &stored : nullptr, &object);
  }

  const v1::ObjectSet& set_;
  ApplyMode mode_;
  bool prune_;
  bool dry_run_;
  const std::string& stack_;
  const Snapshot& stored_;
  const google::protobuf::Timestamp& now_;
  std::map<std::string, v1::Trigger> existing_triggers_;
  std::set<std::string> touched_;              // keys planned once already
  std::set<std::string> expected_;             // keys with an expectation already
  std::map<std::string, std::string> erased_;  // keys deleted -> the action reported
  ApplyPlan plan_;
};

}  // namespace

PreparedApply prepare_apply(const v1::ObjectSet& set, const detail::ApplyOptions& options) {
  PreparedApply prepared{set, options.mode, options.prune, options.dry_run, set.stack()};
  if (!options.stack.empty()) {
    if (!is_valid_name(options.stack)) {
      throw Error(errc::invalid_spec,
                  "invalid stack name \"" + options.stack +
                      "\": use at most 63 lowercase letters, digits and '-'",
                  "stack");
    }
    if (!set.stack().empty() && set.stack() != options.stack) {
      throw Error(errc::invalid_spec,
                  "the manifest's Platform is \"" + set.stack() + "\", not the stack \"" +
                      options.stack + "\" given",
                  "stack");
    }
    prepared.stack = options.stack;
  }
  if (options.prune && prepared.stack.empty()) {
    throw Error(errc::invalid_spec,
                "prune needs a stack, to know what is ours to delete: apply a Platform (its "
                "metadata.name) or name the stack (--stack NAME)",
                "stack");
  }
  if (options.mode != ApplyMode::remove) {
    validate_object_set(prepared.set);
    if (!options.stack.empty()) {
      // A plain list of objects joins the stack named for it (before inline triggers are
      // expanded, which inherit their function's).
      auto stamp = [&](auto& objects) {
        for (auto& o : objects) o.mutable_metadata()->set_stack(prepared.stack);
      };
      stamp(*prepared.set.mutable_functions());
      stamp(*prepared.set.mutable_vms());
      stamp(*prepared.set.mutable_triggers());
      stamp(*prepared.set.mutable_queues());
      stamp(*prepared.set.mutable_storage_pools());
      stamp(*prepared.set.mutable_networks());
    }
    expand_inline_triggers(prepared.set);
  }
  return prepared;
}

SnapshotQuery snapshot_query(const PreparedApply& prepared) {
  const auto& set = prepared.set;
  std::set<std::string> keys;
  for (const auto& f : set.functions()) keys.insert(k_functions_prefix + f.metadata().name());
  for (const auto& v : set.vms()) keys.insert(k_vms_prefix + v.metadata().name());
  for (const auto& p : set.storage_pools())
    keys.insert(k_storage_pools_prefix + p.metadata().name());
  if (prepared.mode != ApplyMode::remove) {
    for (const auto& t : set.triggers()) keys.insert(k_functions_prefix + t.spec().function());
    for (const auto& v : set.vms()) {
      const auto& pool = v.spec().storage().pool();
      if (!pool.empty()) keys.insert(k_storage_pools_prefix + pool);
      if (!v.spec().network().empty()) keys.insert(k_networks_prefix + v.spec().network());
    }
  }
  for (const auto& n : set.networks()) keys.insert(k_networks_prefix + n.metadata().name());
  SnapshotQuery query{{keys.begin(), keys.end()}, {}};
  if (prepared.prune) {
    // The whole stack, whatever its kinds, and what tells whether a pool or network may go.
    for (const char* prefix :
         {k_functions_prefix, k_networks_prefix, k_queues_prefix, k_storage_pools_prefix,
          k_triggers_prefix, k_vms_prefix, k_volumes_prefix}) {
      query.prefixes.emplace_back(prefix);
    }
    return query;
  }
  // Pools or networks removed: which VMs (and volumes) use them.
  if (prepared.mode == ApplyMode::remove &&
      (set.storage_pools_size() > 0 || set.networks_size() > 0)) {
    query.prefixes.emplace_back(k_vms_prefix);
    query.prefixes.emplace_back(k_volumes_prefix);
  }
  // Triggers: the set's own, those its functions own, and every HTTP path in use; queues: those
  // the set declares, its triggers read, or a deleted trigger had created.
  if (set.functions_size() > 0 || set.triggers_size() > 0) {
    query.prefixes.emplace_back(k_triggers_prefix);
  }
  if (set.functions_size() > 0 || set.triggers_size() > 0 || set.queues_size() > 0) {
    query.prefixes.emplace_back(k_queues_prefix);
  }
  return query;
}

ApplyPlan plan_apply(const PreparedApply& prepared, const Snapshot& stored,
                     const google::protobuf::Timestamp& now) {
  return Planner(prepared, stored, now).run();
}

}  // namespace blixard::api
