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

#include "blixard/v1/agent.pb.h"
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
  // Set: the replica may outlive its agent (docs/vms.md, "Agent restarts"). It does not die with
  // the agent's thread (no PR_SET_PDEATHSIG), its console is two FIFOs in `consoles` the agent
  // reads (not pipes: a pipe's reader dies with the agent), and once ready its record is
  // `kept_dir`/<name>.pb (KeptReplica). Both directories are the root agent's only.
  std::filesystem::path kept_dir, consoles;
  std::string cgroup_name;  // its cgroup's name (empty: root's file name)
  // Called once its process exists, before it is ready: the driver's shutdown() must reach a
  // replica still starting (it does not die with the agent).
  std::function<void(const std::shared_ptr<Replica>&)> spawned;
};

// Starts the replica and returns once it is ready. Throws Error(invalid_spec) for a spec it
// cannot run (no command, a command not found), Error(handler_failed) when the process ends
// before it is ready (its last log lines in the message), Error(timeout) when not ready in time.
std::shared_ptr<Replica> start_sandbox_replica(const ReplicaOptions& options,
                                               SandboxReplicaContext context);

// Takes back the replica an earlier agent's driver left running, from its record (`options`:
// the record's assignment with this agent's callbacks; `context` as for a start, with the
// record's root and cgroup). Its process is held (pidfd_open) before it is checked: the pid must
// name the process the record does (its start time) in the record's cgroup, or nothing is
// taken back and nothing is signalled by pid. Throws Error(not_found) then, Error(unavailable)
// when its console or ports cannot be taken back (its process is killed).
std::shared_ptr<Replica> adopt_sandbox_replica(const v1::KeptReplica& record,
                                               const ReplicaOptions& options,
                                               SandboxReplicaContext context);

// Kills the process a record names (one not to take back: KeptReplica.adoptable unset), once
// it is proven to be that process (as adopt_sandbox_replica checks it); true if it was.
bool kill_kept_process(const v1::KeptReplica& record);

// Leaves a ready replica that may outlive its agent (Replica::outlives_agent) running for the
// next agent: stops watching it without killing it, its record and console kept. Returns false,
// doing nothing, for any other replica.
bool leave_sandbox_replica(Replica& replica);

// The start time of process `pid` (/proc/PID/stat, in clock ticks since boot), 0 when there is
// none. With a pid held open, it tells a reused pid from the process a record names.
std::uint64_t process_start_time(int pid);

}  // namespace blixard::runtime
