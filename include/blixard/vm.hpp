// blixard::Vm: a handle on one replicated VM set of a cluster.
#pragma once

#include <memory>
#include <string>

#include "blixard/detail/backend.hpp"
#include "blixard/v1/vm.pb.h"

namespace blixard {

class Vm {
 public:
  Vm(std::shared_ptr<detail::Backend> backend, std::string name)
      : backend_(std::move(backend)), name_(std::move(name)) {}

  const std::string& name() const noexcept { return name_; }
  v1::Vm get() const;
  v1::VmStatus status() const { return get().status(); }
  // The set's wanted replicas (1 or more), placed by the scheduler; returns the set as stored.
  // Throws Error(invalid_spec, field "replicas") for 0 or more than the limit.
  v1::Vm scale(std::uint32_t replicas) const;
  // A new spec for the set (its update strategy rolls it out); `replicas` 0 keeps the set's
  // count, and whether it is stopped is kept, as are its storage (volumes) and network unless
  // the spec names others. Returns the set as stored.
  v1::Vm update(v1::VmSpec spec) const;
  // Rolls the set back to a kept revision's spec (status().revisions(); 0: the one before the
  // newest) as a new revision. Throws not_found for a revision no longer kept, invalid_spec when
  // there is none before.
  v1::Vm rollback(std::int64_t revision = 0) const;
  // Makes `replica` ("postgres-2", a running standby) the primary of a set with a
  // primaryElectionPolicy: the old primary stops cleanly, then `replica` is fenced in and
  // promoted (status().failover() times the steps). Returns the set as stored; the switchover
  // happens after. Throws Error(invalid_spec, field "primary") for a set without a primary or a
  // name that is none of its replicas.
  v1::Vm switchover(const std::string& replica) const;
  // Runs the set's replicas again after stop().
  v1::Vm start() const;
  // Stops every replica; the set, its spec and its volumes stay.
  v1::Vm stop() const;
  void remove() const;

 private:
  std::shared_ptr<detail::Backend> backend_;
  std::string name_;
};

}  // namespace blixard
