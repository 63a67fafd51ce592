// VM sets' volumes in the store (DESIGN §6): each replica of a set with storage has one volume,
// "<vm>-<ordinal>", made from the set's pool (or a pool serving its class) the first time the
// replica starts and kept across its restarts, rollouts, scale-downs and the set's deletion until
// deleted on purpose (as a StatefulSet keeps its claims). The record says where it lives (a dir
// pool's node: the replica goes back there), what the node made it as, and who writes to it with
// which fencing epoch. The data itself is the node's (runtime/volume.hpp). A set with a primary
// has one volume instead, "<vm>-data", on a pool every node reaches, attached to its primary only.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "blixard/v1/volume.pb.h"
#include "common/registry.hpp"
#include "store/store.hpp"

namespace blixard::control {

// What a replica's start needs of its volume: what to send the node, and the node it must run on
// (a dir pool's volume, once made; empty: any).
struct VolumeClaim {
  v1::VolumeAttachment attachment;
  std::string node;
  std::string pool;
};

class Volumes {
 public:
  explicit Volumes(std::shared_ptr<store::Store> store);

  // The volume of replica `ordinal` of `vm`, recorded if new. Throws invalid_spec (field
  // storage.pool or storage.class) when no pool fits, saying how to make one.
  VolumeClaim claim(const std::string& vm, int ordinal, const v1::StorageSpec& storage);
  // The one volume of a set with a primary, "<vm>-data", which follows the primary. Throws as
  // claim(), and invalid_spec when its pool is node-local (dir).
  VolumeClaim claim_primary(const std::string& vm, const v1::StorageSpec& storage);
  // `run` started with it on `node` under `epoch`, the node holding it as `format`.
  void attached(const std::string& volume, const std::string& node, const std::string& run,
                std::int64_t epoch, const std::string& format);
  // `run` is gone: the volume has no writer (unless another run attached it since).
  void detached(const std::string& volume, const std::string& run);

  // The pool `storage` names, or the first (by name) serving its class; throws as claim().
  v1::StoragePool resolve(const v1::StorageSpec& storage, const std::string& field);
  // The stored pool, or nothing.
  std::optional<v1::StoragePool> pool(const std::string& name);
  // What a node needs to remove `volume`'s data (and where: a dir pool's node, empty: any).
  VolumeClaim removal(const v1::Volume& volume);

 private:
  VolumeClaim claim(const std::string& name, const std::string& vm, int ordinal,
                    const v1::StorageSpec& storage);
  // Read-modify-write of a volume's record with compare-and-swap (retried on a conflict).
  template <class Change>
  void change(const std::string& volume, Change&& change);

  std::shared_ptr<store::Store> store_;
};

}  // namespace blixard::control
