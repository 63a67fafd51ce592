// blixard::Function: a handle on one function of a cluster.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "blixard/detail/backend.hpp"
#include "blixard/v1/function.pb.h"

namespace blixard {

struct InvokeResult {
  // The handler's return value as JSON text.
  std::string result;
  bool cold_start = false;
  std::string node;
  std::string request_id;
  std::chrono::microseconds duration{0};
};

class Function {
 public:
  Function(std::shared_ptr<detail::Backend> backend, std::string name)
      : backend_(std::move(backend)), name_(std::move(name)) {}

  const std::string& name() const noexcept { return name_; }
  // The stored object with its current status.
  v1::Function get() const;
  // Runs the handler on `payload_json` and returns its result; throws blixard::Error
  // (invalid_spec for a payload that is not JSON, timeout, handler_failed, throttled, ...).
  InvokeResult invoke(const std::string& payload_json,
                      std::chrono::milliseconds timeout = std::chrono::milliseconds(0)) const;
  void remove() const;

 private:
  std::shared_ptr<detail::Backend> backend_;
  std::string name_;
};

}  // namespace blixard
