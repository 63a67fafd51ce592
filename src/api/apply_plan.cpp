// apply's planning over a snapshot (see apply_plan.hpp).
#include "api/apply_plan.hpp"

#include <set>
#include <utility>

#include <google/protobuf/util/message_differencer.h>

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
// where the manifest was read from (source) are not part of it.
template <class T>
bool same_declaration(const T& a, const T& b) {
  return a.metadata().stack() == b.metadata().stack() && same_labels(a.metadata(), b.metadata()) &&
         google::protobuf::util::MessageDifferencer::Equals(a.spec(), b.spec());
}

class Planner {
 public:
  Planner(const PreparedApply& prepared, const Snapshot& stored,
          const google::protobuf::Timestamp& now)
      : set_(prepared.set), mode_(prepared.mode), stored_(stored), now_(now) {}

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
    for (int i = 0; i < set_.vms_size(); ++i) {
      plan_object("vm", k_vms_prefix, set_.vms(i), "vms[" + std::to_string(i) + "].metadata.name");
    }
    if (mode_ == ApplyMode::remove) {
      check_pools_unused();
      check_networks_unused();
    } else {
      check_references();
    }

    std::set<std::string> applied_functions;
    for (const auto& f : set_.functions()) applied_functions.insert(f.metadata().name());
    std::set<std::string> declared_triggers;
    for (const auto& t : set_.triggers()) declared_triggers.insert(t.metadata().name());
    const auto existing_triggers = stored_all<v1::Trigger>(k_triggers_prefix);

    // Triggers a function owned but no longer declares go with the new version of the function.
    for (const auto& [key, t] : existing_triggers) {
      auto owner = t.metadata().labels().find(k_owner_label);
      if (owner == t.metadata().labels().end() || applied_functions.count(owner->second) == 0) {
        continue;
      }
      if (mode_ != ApplyMode::remove && declared_triggers.count(t.metadata().name()) != 0) {
        continue;
      }
      if (!touched_.insert(key).second) continue;
      expect(key, t.metadata().resource_version());
      plan_.writes.push_back({Write::Type::erase, key, {}});
      add_item("trigger", t.metadata().name(), "deleted");
    }

    if (mode_ != ApplyMode::remove) {
      // A trigger needs its function, and an HTTP path belongs to one trigger.
      std::map<std::string, std::string> paths;
      for (const auto& [key, t] : existing_triggers) {
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
    }
    for (int i = 0; i < set_.triggers_size(); ++i) {
      plan_object("trigger", k_triggers_prefix, set_.triggers(i),
                  "triggers[" + std::to_string(i) + "].metadata.name");
    }
    return std::move(plan_);
  }

 private:
  // Every stored object of a kind by key (the snapshot's order, the store's).
  template <class T>
  std::map<std::string, T> stored_all(const std::string& prefix) const {
    std::map<std::string, T> out;
    for (auto it = stored_.lower_bound(prefix);
         it != stored_.end() && it->first.starts_with(prefix); ++it) {
      T object;
      if (!object.ParseFromString(it->second.value)) {
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

  // A network goes only once no VM names it.
  void check_networks_unused() {
    if (set_.networks_size() == 0) return;
    for (const auto& [key, vm] : stored_all<v1::Vm>(k_vms_prefix)) {
      for (const auto& network : set_.networks()) {
        if (vm.spec().network() == network.metadata().name() && !touched_.contains(key)) {
          throw Error(errc::conflict, "network \"" + network.metadata().name() +
                                          "\" is used by vm \"" + vm.metadata().name() +
                                          "\": delete the vm first");
        }
      }
      expect(key, vm.metadata().resource_version());
    }
  }

  // A pool goes only once no VM names it and it holds no volume.
  void check_pools_unused() {
    if (set_.storage_pools_size() == 0) return;
    const auto vms = stored_all<v1::Vm>(k_vms_prefix);
    const auto volumes = stored_all<v1::Volume>(k_volumes_prefix);
    for (int i = 0; i < set_.storage_pools_size(); ++i) {
      const std::string& name = set_.storage_pools(i).metadata().name();
      for (const auto& [key, vm] : vms) {
        if (vm.spec().storage().pool() == name && !touched_.contains(key)) {
          throw Error(errc::conflict, "storage pool \"" + name + "\" is used by vm \"" +
                                          vm.metadata().name() + "\": delete the vm first");
        }
        expect(key, vm.metadata().resource_version());
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

  void add_item(const char* kind, const std::string& name, const char* action) {
    auto* item = plan_.result.add_items();
    item->set_kind(kind);
    item->set_name(name);
    item->set_action(action);
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
    if (mode_ == ApplyMode::remove) {
      if (existing == nullptr) {
        throw Error(errc::not_found, std::string(kind) + " \"" + meta->name() + "\" not found",
                    field);
      }
      plan_.writes.push_back({Write::Type::erase, key, {}});
      add_item(kind, meta->name(), "deleted");
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
      T stored;
      // A corrupt stored object compares unequal and is overwritten: applying again repairs it.
      (void)stored.ParseFromString(existing->value);
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
    add_item(kind, meta->name(), action);
  }

  const v1::ObjectSet& set_;
  ApplyMode mode_;
  const Snapshot& stored_;
  const google::protobuf::Timestamp& now_;
  std::set<std::string> touched_;   // keys planned once already
  std::set<std::string> expected_;  // keys with an expectation already
  ApplyPlan plan_;
};

}  // namespace

PreparedApply prepare_apply(const v1::ObjectSet& set, ApplyMode mode) {
  PreparedApply prepared{set, mode};
  if (mode != ApplyMode::remove) {
    validate_object_set(prepared.set);
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
  // Pools or networks removed: which VMs (and volumes) use them.
  if (prepared.mode == ApplyMode::remove &&
      (set.storage_pools_size() > 0 || set.networks_size() > 0)) {
    query.prefixes.emplace_back(k_vms_prefix);
    query.prefixes.emplace_back(k_volumes_prefix);
  }
  // Triggers: the set's own, those its functions own, and every HTTP path in use.
  if (set.functions_size() > 0 || set.triggers_size() > 0) {
    query.prefixes.emplace_back(k_triggers_prefix);
  }
  return query;
}

ApplyPlan plan_apply(const PreparedApply& prepared, const Snapshot& stored,
                     const google::protobuf::Timestamp& now) {
  return Planner(prepared, stored, now).run();
}

}  // namespace blixard::api
