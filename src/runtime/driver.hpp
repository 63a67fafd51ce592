// The agent-side runtime: a Driver runs function instances (and later VM replicas) on this node.
// An instance is a long-lived handler process: start it (returns once it said ready), send it any
// number of invocations (several at once when the function's targetConcurrency > 1, multiplexed by
// request id), stop it. Drivers: sandbox (namespaces + cgroups, here), libvirt (later).
#pragma once

#include <chrono>
#include <exception>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/any_io_executor.hpp>

#include "runtime/instance.hpp"
#include "runtime/replica.hpp"
#include "runtime/volume.hpp"

namespace blixard::runtime {

class Driver {
 public:
  virtual ~Driver() = default;
  virtual std::string name() const = 0;
  // Starts an instance and returns once it is ready. Throws blixard::Error: handler_failed (exit
  // before ready, with the reason and last log lines), timeout (not ready in time),
  // invalid_spec, unavailable (shut down, no resources).
  virtual std::shared_ptr<Instance> start(const InstanceOptions& options) = 0;
  // One invocation on a fresh instance (start, call, stop): a cold start every time.
  virtual InvocationResult invoke(const Invocation& invocation) = 0;
  // Starts a VM replica (runtime/replica.hpp) and returns once it is ready. Throws as start()
  // does; Error(unavailable) from a driver that runs no VMs.
  virtual std::shared_ptr<Replica> start_replica(const ReplicaOptions& options) {
    throw Error(errc::unavailable,
                "the " + name() + " driver runs no VM replica (" + options.name + ")");
  }
  // Takes back the replicas an earlier agent's driver on this node left running (its guests
  // outlive the agent), each with `on_log` and `on_exit` as its callbacks; destroys the rest of
  // what it left. Once, before the first start_replica. Default: none taken back.
  virtual std::vector<AdoptedReplica> adopt(
      const ReplicaOptions::LogCallback& on_log,
      const std::function<void(const ReplicaExit&)>& on_exit) {
    (void)on_log;
    (void)on_exit;
    return {};
  }
  // Removes a volume's data from the node (runtime/volume.hpp); idempotent.
  virtual void remove_volume(const v1::VolumeAttachment& volume) { remove_volume_data(volume); }
  // Kills every instance this driver started; later starts fail with unavailable.
  virtual void shutdown() = 0;
  // As shutdown(), but what outlives its agent (Replica::outlives_agent) is left running for
  // the next agent's adopt() (an agent upgraded in place). Default: shutdown().
  virtual void detach() { shutdown(); }
};

struct SandboxOptions {
  // The agent's runtime files (runtime/) and the instances' mount points (instances/) live here.
  std::filesystem::path work_dir;
  // Interpreter for runtime "python".
  std::string python = "python3";
  // Parent cgroup under which each instance gets its own (v2 or v1 memory/pids); empty: auto.
  std::string cgroup_parent;
  // Most processes (and threads) one instance may have.
  std::uint64_t pids_max = 256;
  // Fork Python instances from a pre-initialised interpreter (runtime/zygote.hpp) where it may
  // create namespaces (as root); otherwise, or when off, each starts a fresh interpreter.
  bool python_zygote = true;
  // Host ids for instances (uid = gid), one per instance in turn: unprivileged ids no file on the
  // host belongs to. Used when the agent is root.
  std::uint32_t uid_base = 1'900'000'000;
  std::uint32_t uid_count = 65'536;
  // VM replicas may outlive the agent as guests do (Replica::outlives_agent; a joined agent's):
  // started so (no PR_SET_PDEATHSIG, consoles the next agent reopens, a kept record), left
  // running by detach() and taken back by the next driver's adopt() on the same work_dir.
  bool keep_replicas = false;
};

std::unique_ptr<Driver> make_sandbox_driver(SandboxOptions options);

}  // namespace blixard::runtime
