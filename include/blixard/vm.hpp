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
  void remove() const;

 private:
  std::shared_ptr<detail::Backend> backend_;
  std::string name_;
};

}  // namespace blixard
