// Function instances as stored objects (DESIGN §4): the control plane writes one record per
// running instance under /registry/instances/<function>/<node>/<instance>, so any server can
// answer status from the store and a watch from a store revision sees instances come and go.
//
// What is stored is the lifecycle (an instance became ready, an instance ended), never the
// per-call state (busy, calls in flight): that changes on every call and stays in the pools'
// memory. Writes are queued and committed by one writer thread in batches (the latest state per
// key, one transaction per batch), so a cold start does not wait for the store's fsync; flush()
// waits for what was queued before it, which is how a status read sees its own server's writes.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "blixard/v1/function.pb.h"
#include "store/store.hpp"

namespace spdlog {
class logger;
}

namespace blixard::control {

inline constexpr const char* k_instances_prefix = "/registry/instances/";

class InstanceRecords {
 public:
  InstanceRecords(std::shared_ptr<store::Store> store, std::shared_ptr<spdlog::logger> logger);
  ~InstanceRecords();  // commits what is queued
  InstanceRecords(const InstanceRecords&) = delete;
  InstanceRecords& operator=(const InstanceRecords&) = delete;

  // Queues a put of `instance` (name, function and node set). Never blocks on the store.
  void record(const v1::FunctionInstance& instance);
  // Queues the erase of an instance's record.
  void forget(const std::string& function, const std::string& node, const std::string& name);
  // Erases every record (at start: instances of a previous run are gone, or fenced on rejoin).
  void clear();
  // Returns once everything queued before the call is committed (or failed and was logged).
  void flush();
  // The stored instances of `function`, in key order, after a flush.
  std::vector<v1::FunctionInstance> list(const std::string& function);

  static std::string key(const std::string& function, const std::string& node,
                         const std::string& name);

 private:
  void run();

  std::shared_ptr<store::Store> store_;
  std::shared_ptr<spdlog::logger> logger_;
  std::mutex mutex_;
  std::condition_variable wake_;                               // the writer waits on it
  std::condition_variable written_;                            // flush() waits on it
  std::map<std::string, std::optional<std::string>> pending_;  // key -> value; none: erase
  std::uint64_t queued_ = 0;     // batches handed in (a counter per record/forget call)
  std::uint64_t committed_ = 0;  // of those, the ones the store has
  bool stopping_ = false;
  std::thread writer_;
};

}  // namespace blixard::control
