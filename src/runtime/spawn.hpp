// Starting a handler process in a sandbox: clone(CLONE_VM | CLONE_VFORK) straight into new PID,
// mount, IPC and UTS namespaces (plus a user namespace when not root), as posix_spawn does, so it
// is safe from a multi-threaded agent and cheap however large the agent's address space is.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace blixard::runtime {

struct SpawnRequest {
  std::vector<std::string> argv;  // argv[0] is the absolute path executed
  std::vector<std::string> env;   // "KEY=value", the whole environment
  std::string cwd;                // empty: inherit
  int request_fd = -1;            // becomes fd 3 in the child
  int response_fd = -1;           // becomes fd 4
  int log_fd = -1;                // becomes stdout and stderr; stdin is /dev/null
  bool namespaces = true;         // try the namespaces
  // cgroup.procs files the child joins before exec, so every byte it allocates is charged.
  std::vector<std::string> cgroup_procs;
  std::uint64_t address_space_limit = 0;  // RLIMIT_AS in bytes, 0: none
};

struct Spawned {
  pid_t pid = -1;
  int pidfd = -1;  // owned by the caller
  bool namespaced = false;
  // Set when namespaces were asked for but refused (EPERM etc.) and a plain process was started.
  int namespace_errno = 0;
};

// Throws blixard::Error(handler_failed) when the program cannot be executed (the message says
// which setup step failed and why), Error(unavailable) when no process can be created.
Spawned spawn_sandboxed(const SpawnRequest& request);

}  // namespace blixard::runtime
