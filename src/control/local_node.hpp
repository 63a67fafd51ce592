// This machine as a node of the cluster: its Node object (kept alive by a store lease) and the
// driver that runs its instances. The many-node agent channel replaces the direct driver calls
// later; the contract (run this invocation on that node) stays.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "blixard/v1/node.pb.h"
#include "runtime/driver.hpp"
#include "store/store.hpp"

namespace blixard::control {

inline constexpr const char* k_nodes_prefix = "/registry/nodes/";

class LocalNode {
 public:
  LocalNode(std::shared_ptr<store::Store> store, std::unique_ptr<runtime::Driver> driver,
            std::string name);
  ~LocalNode();

  const std::string& name() const noexcept { return name_; }
  runtime::Driver& driver() noexcept { return *driver_; }
  // Kills running instances and stops the heartbeat.
  void shutdown();

 private:
  void register_node();
  void heartbeat_loop();

  std::shared_ptr<store::Store> store_;
  std::unique_ptr<runtime::Driver> driver_;
  std::string name_;
  v1::Node node_;
  std::int64_t lease_ = 0;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread heartbeat_;
};

// Capacity and detected labels (arch, kvm) of this machine.
v1::Node describe_this_machine(const std::string& name);

}  // namespace blixard::control
