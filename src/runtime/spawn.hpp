// Starting a handler process in a sandbox: clone(CLONE_VM | CLONE_VFORK) straight into new PID,
// mount, IPC, UTS and (unless the function asks for the host's) network namespaces, plus a user
// namespace when the agent is not root, as posix_spawn does, so it is safe from a multi-threaded
// agent and cheap however large the agent's address space is. The child then confines itself
// (confine.hpp: its own root, ids, no capabilities, seccomp) and execs.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/confine.hpp"

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
  bool new_network = true;        // a network namespace of its own (loopback only)
  // What the child does to itself before exec (confine.hpp). Its `root` is used only when the
  // namespaces are made; `seccomp` is the instance filter's program (instance_seccomp_filter()).
  Confinement confinement;
  const std::string* seccomp = nullptr;
  // False only for the agent's own helper, the Python zygote, which confines each child itself.
  bool confined = true;
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
