// VM sets' volumes in the store (see volumes.hpp).
#include "control/volumes.hpp"

#include "blixard/error.hpp"

namespace blixard::control {
namespace {

constexpr int k_attempts = 5;

template <class T>
std::optional<T> read(store::Store& store, const std::string& key) {
  auto kv = store.get(key);
  if (!kv) return std::nullopt;
  T object;
  if (!object.ParseFromString(kv->value)) {
    throw Error(errc::internal, "stored object at " + key + " is corrupt");
  }
  object.mutable_metadata()->set_resource_version(kv->mod_revision);
  return object;
}

v1::VolumeAttachment attachment_of(const v1::Volume& volume, const v1::StoragePool& pool) {
  v1::VolumeAttachment a;
  a.set_name(volume.metadata().name());
  a.set_pool_type(pool.spec().type());
  a.set_pool_path(pool.spec().path());
  a.set_size_mib(volume.spec().storage().size_mib());
  a.set_mount_point(volume.spec().storage().mount_point());
  a.set_format(volume.status().format());
  return a;
}

}  // namespace

Volumes::Volumes(std::shared_ptr<store::Store> store) : store_(std::move(store)) {}

std::optional<v1::StoragePool> Volumes::pool(const std::string& name) {
  return read<v1::StoragePool>(*store_, k_storage_pools_prefix + name);
}

v1::StoragePool Volumes::resolve(const v1::StorageSpec& storage, const std::string& field) {
  if (!storage.pool().empty()) {
    if (auto p = pool(storage.pool())) return *p;
    throw Error(errc::invalid_spec,
                "storage pool \"" + storage.pool() +
                    "\" does not exist: create it with `blixard storage pool create " +
                    storage.pool() + " --type dir --path /var/lib/blixard-volumes`",
                field + ".pool");
  }
  for (const auto& kv : store_->list(k_storage_pools_prefix).kvs) {
    v1::StoragePool p;
    if (p.ParseFromString(kv.value) && p.spec().class_() == storage.class_()) return p;
  }
  const std::string type = storage.class_() == "replicated" ? "shared-dir" : "dir";
  throw Error(errc::invalid_spec,
              "no storage pool serves class \"" + storage.class_() +
                  "\": create one with `blixard storage pool create NAME --type " + type +
                  " --path DIR --class " + storage.class_() + "`",
              field + ".class");
}

VolumeClaim Volumes::claim(const std::string& vm, int ordinal, const v1::StorageSpec& storage) {
  return claim(vm + "-" + std::to_string(ordinal), vm, ordinal, storage);
}

VolumeClaim Volumes::claim_primary(const std::string& vm, const v1::StorageSpec& storage) {
  auto claimed = claim(vm + "-data", vm, 0, storage);
  if (claimed.attachment.pool_type() == "dir") {
    throw Error(errc::invalid_spec,
                "storage pool \"" + claimed.pool +
                    "\" is node-local (dir), and a set with a primary keeps one volume that "
                    "follows its primary to any node: use a pool every node reaches (`blixard "
                    "storage pool create NAME --type shared-dir --path DIR`, storage class "
                    "replicated)",
                storage.pool().empty() ? "storage.class" : "storage.pool");
  }
  return claimed;
}

VolumeClaim Volumes::claim(const std::string& name, const std::string& vm, int ordinal,
                           const v1::StorageSpec& storage) {
  const std::string key = k_volumes_prefix + name;
  for (int attempt = 0; attempt < k_attempts; ++attempt) {
    if (auto volume = read<v1::Volume>(*store_, key)) {
      const auto& pool_name = volume->spec().storage().pool();
      auto p = pool(pool_name);
      if (!p) {
        std::string why = "volume " + name;
        why.append(" is in storage pool \"").append(pool_name);
        why.append("\", which no longer exists: create it again, or delete the volume ");
        why.append("(`blixard storage volume delete ").append(name).append("`)");
        throw Error(errc::invalid_spec, why, "storage.pool");
      }
      return {attachment_of(*volume, *p), p->spec().type() == "dir" ? volume->status().node() : "",
              pool_name};
    }
    const auto p = resolve(storage, "storage");
    v1::Volume volume;
    volume.mutable_metadata()->set_name(name);
    auto& spec = *volume.mutable_spec();
    *spec.mutable_storage() = storage;
    spec.mutable_storage()->set_pool(p.metadata().name());
    spec.mutable_storage()->set_class_(p.spec().class_());
    spec.set_vm(vm);
    spec.set_ordinal(static_cast<std::uint32_t>(ordinal));
    volume.mutable_status()->set_phase("Available");
    store::Txn txn;
    txn.compares.push_back(
        {key, store::Compare::Target::create_revision, store::Compare::Op::equal, 0});
    txn.success.push_back({store::Operation::Type::put, key, volume.SerializeAsString(), 0});
    if (store_->txn(txn).succeeded) return {attachment_of(volume, p), "", p.metadata().name()};
  }
  throw Error(errc::conflict, "volume " + name + " kept changing while being claimed");
}

template <class Change>
void Volumes::change(const std::string& volume, Change&& change) {
  const std::string key = k_volumes_prefix + volume;
  for (int attempt = 0; attempt < k_attempts; ++attempt) {
    auto v = read<v1::Volume>(*store_, key);
    if (!v) return;  // deleted meanwhile
    const auto version = v->metadata().resource_version();
    if (!change(*v)) return;
    v->mutable_metadata()->clear_resource_version();
    store::Txn txn;
    txn.compares.push_back(
        {key, store::Compare::Target::mod_revision, store::Compare::Op::equal, version});
    txn.success.push_back({store::Operation::Type::put, key, v->SerializeAsString(), 0});
    if (store_->txn(txn).succeeded) return;
  }
}

void Volumes::attached(const std::string& volume, const std::string& node, const std::string& run,
                       std::int64_t epoch, const std::string& format) {
  change(volume, [&](v1::Volume& v) {
    auto& s = *v.mutable_status();
    s.set_node(node);
    s.set_attached_to(run);
    s.set_phase("Attached");
    s.set_format(format);
    s.set_epoch(epoch);
    return true;
  });
}

void Volumes::detached(const std::string& volume, const std::string& run) {
  change(volume, [&](v1::Volume& v) {
    if (v.status().attached_to() != run) return false;
    v.mutable_status()->clear_attached_to();
    v.mutable_status()->set_phase("Available");
    return true;
  });
}

VolumeClaim Volumes::removal(const v1::Volume& volume) {
  const auto& pool_name = volume.spec().storage().pool();
  auto p = pool(pool_name);
  if (!p) {
    throw Error(errc::conflict, "volume " + volume.metadata().name() + "'s storage pool \"" +
                                    pool_name + "\" no longer exists: its data cannot be reached");
  }
  return {attachment_of(volume, *p), p->spec().type() == "dir" ? volume.status().node() : "",
          pool_name};
}

}  // namespace blixard::control
