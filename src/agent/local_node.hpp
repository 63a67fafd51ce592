// This machine as a node: a control::Node straight over the Driver it owns. The server's own
// node uses it in-process; a joined agent serves the agent channel with it (agent/session.hpp).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "agent/code_cache.hpp"
#include "blixard/v1/agent.pb.h"
#include "control/node.hpp"
#include "runtime/driver.hpp"

namespace blixard::agent {

class LocalNode final : public control::Node {
 public:
  // An assignment whose spec carries a code digest runs in the directory `code` unpacked it to;
  // without a cache such assignments are refused (a spec's own `code` path is used as it is,
  // for drivers' tests and in-process callers).
  // `vm_driver` (the libvirt driver, where this node runs one) runs VM replicas whose spec does
  // not ask for `driver` by name (control::replica_driver).
  LocalNode(std::string name, v1::NodeSpec spec, std::unique_ptr<runtime::Driver> driver,
            std::shared_ptr<CodeCache> code = nullptr,
            std::unique_ptr<runtime::Driver> vm_driver = nullptr);
  ~LocalNode() override;

  const std::string& name() const override { return name_; }
  v1::NodeSpec describe() const override { return spec_; }
  // Refuses (unavailable) an assignment older than the node's epoch.
  std::shared_ptr<runtime::Instance> start(const control::Assignment& assignment) override;
  // Refuses an assignment older than the node's epoch, and a second replica of one name.
  std::shared_ptr<runtime::Replica> start_replica(
      const control::ReplicaAssignment& assignment) override;
  void remove_volume(const v1::VolumeAttachment& volume) override;
  void overlay_peers(const std::vector<std::string>& addresses) override;
  std::vector<std::string> instances() const override;
  // Kills every instance; later starts fail with unavailable.
  void shutdown() override;
  // As shutdown(), but leaves the guests its VM driver runs for the next agent to take back
  // (runtime::Driver::detach): an agent upgraded in place.
  void detach();

  // The epoch the server gave this node; instances of older epochs are stopped (fenced), except
  // the replicas `adopted` names, which run on under `epoch`.
  void set_epoch(std::int64_t epoch, const std::vector<std::string>& adopted = {});
  // Takes back the replicas an earlier agent's VM driver left running (runtime::Driver::adopt),
  // with these callbacks, under the epochs they were started under; until set_epoch adopts them
  // they run as from before a reconnect.
  std::vector<std::shared_ptr<runtime::Replica>> adopt_leftovers(
      const runtime::ReplicaOptions::LogCallback& on_log,
      const std::function<void(const runtime::ReplicaExit&)>& on_exit);
  // What runs, with the epoch each was assigned under (for the agent's hello).
  std::vector<v1::RunningInstance> running() const;

 private:
  struct Running {
    std::weak_ptr<runtime::Instance> instance;
    std::int64_t epoch = 0;
  };
  struct RunningReplica {
    std::weak_ptr<runtime::Replica> replica;
    std::int64_t epoch = 0;
  };
  void check_epoch(std::int64_t epoch) const;  // mutex_ held
  std::string name_;
  v1::NodeSpec spec_;
  std::unique_ptr<runtime::Driver> driver_;
  std::shared_ptr<CodeCache> code_;
  std::unique_ptr<runtime::Driver> vm_driver_;
  mutable std::mutex mutex_;
  std::int64_t epoch_ = 0;
  std::map<std::string, Running> running_;
  std::map<std::string, RunningReplica> replicas_;
};

// Capacity (memory, vcpus) and detected labels (arch, hostname, kvm) of this machine.
v1::NodeSpec describe_this_machine();

}  // namespace blixard::agent
