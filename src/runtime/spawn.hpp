// Starting a handler process in a sandbox: clone(CLONE_VM | CLONE_VFORK) straight into new PID,
// mount, IPC and UTS namespaces (plus a user namespace when not root, a network namespace on
// request), as posix_spawn does, so it is safe from a multi-threaded agent and cheap however large
// the agent's address space is. Inside, the host's file system is read-only but for the scratch
// dir, which is the instance's /tmp.
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
  int stdout_fd = -1;             // becomes stdout; stdin is /dev/null
  int stderr_fd = -1;             // becomes stderr
  bool namespaces = true;         // try the namespaces
  bool isolate_network = false;   // also a network namespace (loopback only)
  // With namespaces: the whole host is mounted read-only and this directory (writable) is
  // mounted over /tmp. Empty: the mounts are only made private.
  std::string scratch_dir;
  // Host directories the new /tmp would hide (code, the handler runtime): bound back, read-only.
  std::vector<std::string> keep_dirs;
  // Files the child writes "0" to before exec, to join its cgroups (InstanceCgroup::join_files),
  // so every byte it allocates is charged.
  std::vector<std::string> cgroup_join;
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
