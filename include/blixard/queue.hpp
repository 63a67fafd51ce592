// blixard::Queue: a handle on one durable queue of a cluster (docs/queues.md). A message is on
// the server's disk before send() returns; queue triggers deliver it to their function at least
// once, or a consumer takes it with receive() and acknowledges it.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "blixard/detail/backend.hpp"
#include "blixard/v1/queue.pb.h"

namespace blixard {

class Queue {
 public:
  Queue(std::shared_ptr<detail::Backend> backend, std::string name)
      : backend_(std::move(backend)), name_(std::move(name)) {}

  const std::string& name() const noexcept { return name_; }
  // Spec and status (depth, in flight, age of the oldest message).
  v1::Queue get() const;
  // Appends one message (any text; JSON by convention) and returns its id.
  std::string send(const std::string& body) const;
  // Appends several in one durable write; their ids.
  std::vector<std::string> send(const std::vector<std::string>& bodies) const;
  // Takes up to `max` messages, hidden for `visibility` (0: the queue's own) until acknowledged;
  // waits up to `wait` (at most 20 s) for the first.
  std::vector<v1::QueueMessage> receive(std::uint32_t max = 1, std::chrono::milliseconds wait = {},
                                        std::chrono::milliseconds visibility = {}) const;
  // What receive() could take now, without taking it.
  std::vector<v1::QueueMessage> peek(std::uint32_t max = 10) const;
  // Processed: these deliveries (QueueMessage::receipt) are gone. How many were acknowledged.
  std::uint64_t acknowledge(const std::vector<std::string>& receipts) const;
  // Removes every message; how many.
  std::uint64_t purge() const;
  void remove() const;

 private:
  std::shared_ptr<detail::Backend> backend_;
  std::string name_;
};

}  // namespace blixard
