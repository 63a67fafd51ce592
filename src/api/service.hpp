// The control plane's API semantics, independent of transport: validation, one-transaction apply,
// reads with resource versions, and invocation through the node's driver. The embedded Cluster
// calls it directly; the HTTP server exposes it as /v1.
#pragma once

#include <atomic>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "blixard/detail/backend.hpp"
#include "control/local_node.hpp"
#include "store/store.hpp"

namespace spdlog {
class logger;
}

namespace blixard::api {

class Service final : public detail::Backend {
 public:
  Service(std::shared_ptr<store::Store> store, std::shared_ptr<control::LocalNode> node,
          std::shared_ptr<spdlog::logger> logger);
  ~Service() override;

  v1::ApplyResult apply(const v1::ObjectSet& set, detail::ApplyMode mode) override;
  v1::Function get_function(const std::string& name) override;
  v1::Vm get_vm(const std::string& name) override;
  v1::Trigger get_trigger(const std::string& name) override;
  v1::FunctionList list_functions() override;
  v1::VmList list_vms() override;
  v1::TriggerList list_triggers() override;
  v1::NodeList list_nodes() override;
  v1::InvokeResponse invoke(const v1::InvokeRequest& request) override;
  v1::ServerInfo info() override;

  // Stops running handlers and the node's heartbeat; later calls fail with `unavailable`.
  void shutdown();

 private:
  // Admission against concurrentExecutions; released when the returned guard dies.
  std::shared_ptr<void> admit(const std::string& function, std::uint32_t limit);

  std::shared_ptr<store::Store> store_;
  std::shared_ptr<control::LocalNode> node_;
  std::shared_ptr<spdlog::logger> logger_;
  std::atomic<bool> closed_{false};
  std::mutex in_flight_mutex_;
  std::map<std::string, std::uint32_t> in_flight_;
};

struct LocalServiceOptions {
  std::string node_name = "local";
  std::string python = "python3";
  std::shared_ptr<spdlog::logger> logger;
};

// Server + agent on one machine: the SQLite store under `dir`, the sandbox driver, this node.
// Holds an exclusive lock on `dir`; throws Error(unavailable) naming the dir when it is not
// writable or already in use by another process.
std::shared_ptr<Service> open_local_service(const std::filesystem::path& dir,
                                            const LocalServiceOptions& options);

}  // namespace blixard::api
