// blixard::Trigger: a handle on one trigger (HTTP path, queue, event) of a cluster.
#pragma once

#include <memory>
#include <string>

#include "blixard/detail/backend.hpp"
#include "blixard/v1/trigger.pb.h"

namespace blixard {

class Trigger {
 public:
  Trigger(std::shared_ptr<detail::Backend> backend, std::string name)
      : backend_(std::move(backend)), name_(std::move(name)) {}

  const std::string& name() const noexcept { return name_; }
  v1::Trigger get() const;
  void remove() const;

 private:
  std::shared_ptr<detail::Backend> backend_;
  std::string name_;
};

}  // namespace blixard
