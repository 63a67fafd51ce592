// A VM replica as a sandboxed process (DESIGN §6: the sandbox driver runs a VM's `command` where
// no hypervisor exists, and for fast tests): confined as a function instance is (its own PID,
// mount, IPC and UTS namespaces, an unprivileged id, no capabilities, seccomp, a read-only root
// with scratch, memory and pid cgroups) but on the host's network, where its declared ports are
// host ports the driver allocates, passed as PORT (the first) and PORT_<declared port>. Ready
// once its first port accepts connections (at once when it declares none).
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "runtime/cgroup.hpp"
#include "runtime/replica.hpp"

namespace blixard::runtime {

// What the sandbox driver lends a replica.
struct SandboxReplicaContext {
  std::filesystem::path root;  // an empty directory the replica's root is mounted on
  CgroupManager* cgroups = nullptr;
  const std::string* seccomp = nullptr;
  long uid = -1, gid = -1;  // host ids (a root agent), -1: the agent's
  bool namespaces = true;
  std::chrono::milliseconds ready_timeout{60'000};
  // Called once the replica's thread is done with the context (after its exit was reported).
  std::function<void()> done;
};

// Starts the replica and returns once it is ready. Throws Error(invalid_spec) for a spec it
// cannot run (no command, a command not found), Error(handler_failed) when the process ends
// before it is ready (its last log lines in the message), Error(timeout) when not ready in time.
std::shared_ptr<Replica> start_sandbox_replica(const ReplicaOptions& options,
                                               SandboxReplicaContext context);

}  // namespace blixard::runtime
