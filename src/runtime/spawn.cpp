// Sandboxed process creation (see spawn.hpp). Everything the child needs is prepared in the parent;
// between clone and execve the child only makes raw system calls (async-signal-safe), because it
// shares the parent's memory until it execs.
#include "runtime/spawn.hpp"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "blixard/error.hpp"

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

namespace blixard::runtime {
namespace {

// Setup steps, in order; the child reports the one that failed.
enum Stage : int {
  stage_none = 0,
  stage_user_map,
  stage_confine,
  stage_fds,
  stage_cwd,
  stage_exec,
};

const char* stage_name(int stage) {
  switch (stage) {
    case stage_user_map:
      return "writing the user namespace maps";
    case stage_confine:
      return "confining it";
    case stage_fds:
      return "setting up file descriptors";
    case stage_cwd:
      return "changing to the code directory";
    case stage_exec:
      return "executing";
    default:
      return "starting";
  }
}

// Everything the child reads, as plain pointers: no allocation after clone.
struct ChildPlan {
  const char* path = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  const char* cwd = nullptr;
  int request_fd = -1, response_fd = -1, stdout_fd = -1, stderr_fd = -1;
  const char* const* confine = nullptr;  // confinement_args(), for blixard_confine
  std::size_t confine_count = 0;
  const void* bpf = nullptr;
  std::size_t bpf_len = 0;
  bool user_ns = false;
  bool die_with_agent = true;
  const char* uid_map = nullptr;
  const char* gid_map = nullptr;
  // Written by the child (shared memory), read by the parent once clone returns.
  volatile int failed_stage = stage_none;
  volatile int failed_errno = 0;
  char confine_error[256] = {};
};

bool write_all(const char* path, const char* text) {
  const int fd = ::open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const std::size_t n = std::strlen(text);
  const bool ok = ::write(fd, text, n) == static_cast<ssize_t>(n);
  ::close(fd);
  return ok;
}

[[noreturn]] void child_fail(ChildPlan& plan, int stage) {
  plan.failed_errno = errno;
  plan.failed_stage = stage;
  ::_exit(127);
}

int child_main(void* arg) {
  auto& plan = *static_cast<ChildPlan*>(arg);

  // Parent's handlers must not run here (shared memory): reset them, then unblock everything.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    ::sigaction(sig, &dfl, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);

  if (plan.user_ns) {
    // An unprivileged agent may map just its own ids, after giving up setgroups.
    write_all("/proc/self/setgroups", "deny");
    if (!write_all("/proc/self/uid_map", plan.uid_map)) child_fail(plan, stage_user_map);
    if (!write_all("/proc/self/gid_map", plan.gid_map)) child_fail(plan, stage_user_map);
  }
  ::setsid();
  // Dies with the agent (note: with the thread that spawned it, which outlives the instance),
  // unless it is a replica kept across the agent's restart.
  if (plan.die_with_agent) ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (plan.confine != nullptr &&
      blixard_confine(plan.confine, plan.confine_count, plan.bpf, plan.bpf_len, plan.confine_error,
                      sizeof plan.confine_error) != 0) {
    child_fail(plan, stage_confine);
  }

  // Move the sources above the targets first, so no dup2 clobbers a source.
  const int req = ::fcntl(plan.request_fd, F_DUPFD, 10);
  const int resp = ::fcntl(plan.response_fd, F_DUPFD, 10);
  const int out = ::fcntl(plan.stdout_fd, F_DUPFD, 10);
  const int err = ::fcntl(plan.stderr_fd, F_DUPFD, 10);
  const int null = ::open("/dev/null", O_RDONLY);
  if (req < 0 || resp < 0 || out < 0 || err < 0 || null < 0) child_fail(plan, stage_fds);
  if (::dup2(null, 0) < 0 || ::dup2(out, 1) < 0 || ::dup2(err, 2) < 0 || ::dup2(req, 3) < 0 ||
      ::dup2(resp, 4) < 0) {
    child_fail(plan, stage_fds);
  }
  // Nothing else of the agent's (sockets, other instances' pipes) leaks into the handler.
  if (::syscall(SYS_close_range, 5u, ~0u, 0u) != 0) {
    for (int fd = 5; fd < 1024; ++fd) ::close(fd);
  }

  if (plan.cwd != nullptr && ::chdir(plan.cwd) != 0) child_fail(plan, stage_cwd);
  ::execve(plan.path, plan.argv, plan.envp);
  child_fail(plan, stage_exec);
}

std::vector<char*> c_strings(const std::vector<std::string>& v) {
  std::vector<char*> out;
  out.reserve(v.size() + 1);
  for (const auto& s : v) out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

// clone() on a private stack with every signal blocked meanwhile (the child resets handlers
// before unblocking). Returns the pid or -errno.
pid_t clone_child(ChildPlan& plan, int ns_flags, int* pidfd) {
  constexpr std::size_t stack_size = 256 * 1024;
  void* stack = ::mmap(nullptr, stack_size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) return -errno;
  sigset_t all, old;
  sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  const int flags = CLONE_VM | CLONE_VFORK | CLONE_PIDFD | ns_flags | SIGCHLD;
  const pid_t pid = ::clone(child_main, static_cast<char*>(stack) + stack_size, flags, &plan, pidfd,
                            nullptr, nullptr);
  const int err = errno;
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  ::munmap(stack, stack_size);
  return pid < 0 ? -err : pid;
}

}  // namespace

Spawned spawn_sandboxed(const SpawnRequest& request) {
  if (request.argv.empty()) throw Error(errc::internal, "spawn without argv");
  auto argv = c_strings(request.argv);
  auto envp = c_strings(request.env);

  const bool root = ::geteuid() == 0;
  // An unprivileged agent's user namespace maps its ids to the instance's (0, or a replica's
  // nobody).
  const std::string inner = std::to_string(request.confinement.inner_id);
  const std::string uid_map = inner + " " + std::to_string(::geteuid()) + " 1";
  const std::string gid_map = inner + " " + std::to_string(::getegid()) + " 1";
  // Two plans: in the namespaces (a root of its own), and plain, for an unprivileged agent on a
  // host that refuses them (no root: only the limits and the lockdown).
  Confinement plain_confinement = request.confinement;
  plain_confinement.root.clear();
  plain_confinement.uid = plain_confinement.gid = -1;
  plain_confinement.loopback = false;
  plain_confinement.low_ports = false;  // the host's network: not its to change
  Confinement ns_confinement = request.confinement;
  ns_confinement.loopback = request.new_network;
  if (!root) ns_confinement.uid = ns_confinement.gid = -1;  // its user namespace maps it already
  const auto ns_args = confinement_args(ns_confinement);
  const auto plain_args = confinement_args(plain_confinement);
  std::vector<const char*> ns_c, plain_c;
  for (const auto& a : ns_args) ns_c.push_back(a.c_str());
  for (const auto& a : plain_args) plain_c.push_back(a.c_str());

  ChildPlan plan;
  plan.path = request.argv[0].c_str();
  plan.argv = argv.data();
  plan.envp = envp.data();
  plan.cwd = request.cwd.empty() ? nullptr : request.cwd.c_str();
  plan.request_fd = request.request_fd;
  plan.response_fd = request.response_fd;
  plan.stdout_fd = request.stdout_fd;
  plan.stderr_fd = request.stderr_fd;
  if (request.seccomp != nullptr) {
    plan.bpf = request.seccomp->data();
    plan.bpf_len = request.seccomp->size();
  }
  plan.die_with_agent = request.confinement.die_with_agent;
  plan.uid_map = uid_map.c_str();
  plan.gid_map = gid_map.c_str();

  Spawned out;
  int pidfd = -1;
  pid_t pid = -EPERM;
  if (request.namespaces) {
    int ns = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS;
    if (!root) ns |= CLONE_NEWUSER;
    if (request.new_network) ns |= CLONE_NEWNET;
    plan.user_ns = !root;
    plan.confine = ns_c.data();
    plan.confine_count = ns_c.size();
    pid = clone_child(plan, ns, &pidfd);
    // An unprivileged agent whose namespaces are refused (or half made) runs the plain plan.
    if (!root && pid > 0 && plan.failed_stage == stage_user_map) {
      ::waitpid(pid, nullptr, 0);
      ::close(pidfd);
      pid = -(plan.failed_errno != 0 ? plan.failed_errno : EPERM);
    }
    if (pid > 0) {
      out.namespaced = true;
    } else {
      out.namespace_errno = -pid;
    }
  }
  if (pid < 0) {
    // A root agent never runs an instance outside its namespaces: that would be root on the host.
    if (root && request.namespaces) {
      throw Error(errc::unavailable,
                  std::string("cannot create the instance's namespaces: ") + std::strerror(-pid));
    }
    plan.user_ns = false;
    plan.confine = request.confined ? plain_c.data() : nullptr;
    plan.confine_count = plain_c.size();
    plan.failed_stage = stage_none;
    plan.failed_errno = 0;
    pid = clone_child(plan, 0, &pidfd);
    if (pid < 0) {
      throw Error(errc::unavailable,
                  std::string("cannot create a handler process: ") + std::strerror(-pid));
    }
  }
  if (plan.failed_stage != stage_none) {
    // The child has exited already (vfork semantics): reap it and say what went wrong.
    ::waitpid(pid, nullptr, 0);
    ::close(pidfd);
    const std::string why = plan.failed_stage == stage_confine ? std::string(plan.confine_error)
                                                               : std::strerror(plan.failed_errno);
    throw Error(errc::handler_failed, std::string("cannot start handler '") + request.argv[0] +
                                          "': " + stage_name(plan.failed_stage) + ": " + why);
  }
  out.pid = pid;
  out.pidfd = pidfd;
  return out;
}

}  // namespace blixard::runtime
