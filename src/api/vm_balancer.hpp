// The server's load balancer for VM sets (DESIGN §6): a TCP proxy per declared port of each set,
// on the server's address, each new connection sent round robin to the set's ready replicas
// (control::VmSets::endpoints). The replica list is read per connection, so a scale, a failure
// or a rollout changes where the next connection goes and never touches a connection in
// progress; a replica that refuses the connection is skipped for the next one. Where a port is
// served shows in `vm status` (VmStatus.endpoints).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace spdlog {
class logger;
}

namespace blixard::control {
class VmSets;
}

namespace blixard::api {

struct VmBalancerOptions {
  std::string address = "127.0.0.1";  // where the listeners bind
  // How often new sets' ports get a listener and deleted ones lose theirs.
  std::chrono::milliseconds refresh{200};
  // Connections open at once across every listener; more wait in the kernel's backlog.
  std::size_t max_connections = 10000;
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(2)};
};

class VmBalancer {
 public:
  // `sets` must outlive the balancer.
  VmBalancer(control::VmSets& sets, VmBalancerOptions options,
             std::shared_ptr<spdlog::logger> logger);
  ~VmBalancer();
  VmBalancer(const VmBalancer&) = delete;
  VmBalancer& operator=(const VmBalancer&) = delete;

  // Closes every listener and connection. Idempotent.
  void stop();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace blixard::api
