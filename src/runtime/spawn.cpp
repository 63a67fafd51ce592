// Sandboxed process creation (see spawn.hpp). Everything the child needs is prepared in the parent;
// between clone and execve the child only makes raw system calls (async-signal-safe), because it
// shares the parent's memory until it execs.
#include "runtime/spawn.hpp"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "blixard/error.hpp"

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif

namespace blixard::runtime {
namespace {

// Setup steps, in order; the child reports the one that failed.
enum Stage : int {
  stage_none = 0,
  stage_user_map,
  stage_cgroup,
  stage_mount,
  stage_readonly,
  stage_rlimit,
  stage_fds,
  stage_cwd,
  stage_exec,
};

const char* stage_name(int stage) {
  switch (stage) {
    case stage_user_map:
      return "writing the user namespace maps";
    case stage_cgroup:
      return "joining the cgroup";
    case stage_mount:
      return "making mounts private";
    case stage_readonly:
      return "making the host read-only";
    case stage_rlimit:
      return "setting resource limits";
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
  const char* scratch_dir = nullptr;           // bound over /tmp, with the rest read-only
  const char* const* keep = nullptr;           // host dirs under /tmp bound back in
  const char* const* keep_fd_paths = nullptr;  // "/proc/self/fd/N" for each
  std::size_t keep_count = 0;
  const char* const* mkdirs = nullptr;  // mount points to create in the new /tmp, parents first
  std::size_t mkdir_count = 0;
  const char* const* cgroup_join = nullptr;
  std::size_t cgroup_count = 0;
  std::uint64_t address_space_limit = 0;
  bool mount_ns = false, user_ns = false, uts_ns = false, net_ns = false;
  const char* uid_map = nullptr;
  const char* gid_map = nullptr;
  // Written by the child (shared memory), read by the parent once clone returns.
  volatile int failed_stage = stage_none;
  volatile int failed_errno = 0;
};

bool write_all(const char* path, const char* text) {
  const int fd = ::open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const std::size_t n = std::strlen(text);
  const bool ok = ::write(fd, text, n) == static_cast<ssize_t>(n);
  ::close(fd);
  return ok;
}

constexpr std::size_t k_max_keep = 8;
constexpr int k_keep_fd_base = 900;

// mount_setattr(2) (Linux 5.12) changes a whole mount tree at once; glibc 2.36 has no wrapper.
struct MountAttr {
  std::uint64_t attr_set, attr_clr, propagation, userns_fd;
};
constexpr std::uint64_t k_mount_attr_rdonly = 0x1, k_mount_attr_nosuid = 0x2,
                        k_mount_attr_nodev = 0x4;
constexpr unsigned k_at_recursive = 0x8000;

int set_mount_attr(const char* path, unsigned flags, std::uint64_t set, std::uint64_t clear) {
  MountAttr attr{set, clear, 0, 0};
  return static_cast<int>(::syscall(SYS_mount_setattr, AT_FDCWD, path, flags, &attr, sizeof attr));
}

// The host's tree read-only (every submount too), the scratch dir writable over /tmp. Host dirs
// under /tmp the instance needs (its code, the handler runtime) are bound back, read-only.
bool read_only_host(const ChildPlan& plan) {
  int held[k_max_keep];
  for (std::size_t i = 0; i < plan.keep_count; ++i) {
    const int fd = ::open(plan.keep[i], O_PATH | O_DIRECTORY | O_CLOEXEC);
    held[i] = fd < 0 ? -1 : ::fcntl(fd, F_DUPFD_CLOEXEC, k_keep_fd_base + static_cast<int>(i));
    if (held[i] != k_keep_fd_base + static_cast<int>(i) && held[i] >= 0) {
      ::close(held[i]);
      held[i] = -1;
    }
    if (fd >= 0) ::close(fd);
  }
  if (::mount(plan.scratch_dir, "/tmp", nullptr, MS_BIND, nullptr) != 0) return false;
  for (std::size_t i = 0; i < plan.mkdir_count; ++i) ::mkdir(plan.mkdirs[i], 0755);
  for (std::size_t i = 0; i < plan.keep_count; ++i) {
    if (held[i] < 0) continue;
    if (::mount(plan.keep_fd_paths[i], plan.keep[i], nullptr, MS_BIND | MS_REC, nullptr) != 0) {
      return false;
    }
    ::close(held[i]);
  }
  if (set_mount_attr("/", k_at_recursive, k_mount_attr_rdonly | k_mount_attr_nosuid, 0) != 0) {
    if (errno != ENOSYS) return false;
    // Older kernels: just the root mount itself.
    return ::mount(nullptr, "/", nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr) == 0;
  }
  return set_mount_attr("/tmp", 0, k_mount_attr_nosuid | k_mount_attr_nodev, k_mount_attr_rdonly) ==
         0;
}

// A new network namespace has only a loopback, and it is down.
void loopback_up() {
  const int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return;
  struct ifreq ifr {};
  std::memcpy(ifr.ifr_name, "lo", 3);
  if (::ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
    ::ioctl(s, SIOCSIFFLAGS, &ifr);
  }
  ::close(s);
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
    // An unprivileged process may map just its own ids, after giving up setgroups.
    write_all("/proc/self/setgroups", "deny");
    if (!write_all("/proc/self/uid_map", plan.uid_map)) child_fail(plan, stage_user_map);
    if (!write_all("/proc/self/gid_map", plan.gid_map)) child_fail(plan, stage_user_map);
  }
  ::setsid();
  // Dies with the agent (note: with the thread that spawned it, which outlives the instance).
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);

  for (std::size_t i = 0; i < plan.cgroup_count; ++i) {
    if (!write_all(plan.cgroup_join[i], "0")) child_fail(plan, stage_cgroup);
  }
  if (plan.mount_ns) {
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      child_fail(plan, stage_mount);
    }
    // Our own /proc shows only the namespace's processes; not fatal where it is refused.
    ::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
    if (plan.scratch_dir != nullptr && !read_only_host(plan)) {
      child_fail(plan, stage_readonly);
    }
  }
  if (plan.uts_ns) ::sethostname("blixard", 7);
  if (plan.net_ns) loopback_up();

  struct rlimit no_core {
    0, 0
  };
  if (::setrlimit(RLIMIT_CORE, &no_core) != 0) child_fail(plan, stage_rlimit);
  if (plan.address_space_limit != 0) {
    struct rlimit as {
      plan.address_space_limit, plan.address_space_limit
    };
    if (::setrlimit(RLIMIT_AS, &as) != 0) child_fail(plan, stage_rlimit);
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
  std::vector<const char*> procs;
  for (const auto& p : request.cgroup_join) procs.push_back(p.c_str());

  const bool root = ::geteuid() == 0;
  const std::string uid_map = "0 " + std::to_string(::geteuid()) + " 1";
  const std::string gid_map = "0 " + std::to_string(::getegid()) + " 1";

  ChildPlan plan;
  plan.path = request.argv[0].c_str();
  plan.argv = argv.data();
  plan.envp = envp.data();
  plan.cwd = request.cwd.empty() ? nullptr : request.cwd.c_str();
  plan.request_fd = request.request_fd;
  plan.response_fd = request.response_fd;
  plan.stdout_fd = request.stdout_fd;
  plan.stderr_fd = request.stderr_fd;
  plan.scratch_dir = request.scratch_dir.empty() ? nullptr : request.scratch_dir.c_str();
  // Host dirs under /tmp that the new /tmp would hide, and the mount points they need.
  std::vector<std::string> keep, keep_fd_paths, mkdirs;
  for (const auto& d : request.keep_dirs) {
    std::string path = std::filesystem::path(d).lexically_normal().string();
    while (path.size() > 1 && path.back() == '/') path.pop_back();
    if (path.rfind("/tmp/", 0) != 0 || keep.size() == k_max_keep) continue;
    keep_fd_paths.push_back("/proc/self/fd/" + std::to_string(k_keep_fd_base + keep.size()));
    keep.push_back(path);
    for (std::size_t pos = 5; pos != std::string::npos;) {
      pos = path.find('/', pos + 1);
      mkdirs.push_back(path.substr(0, pos));
    }
  }
  std::vector<const char*> keep_c, keep_fd_c, mkdirs_c;
  for (const auto& k : keep) keep_c.push_back(k.c_str());
  for (const auto& k : keep_fd_paths) keep_fd_c.push_back(k.c_str());
  for (const auto& k : mkdirs) mkdirs_c.push_back(k.c_str());
  plan.keep = keep_c.data();
  plan.keep_fd_paths = keep_fd_c.data();
  plan.keep_count = keep_c.size();
  plan.mkdirs = mkdirs_c.data();
  plan.mkdir_count = mkdirs_c.size();
  plan.cgroup_join = procs.data();
  plan.cgroup_count = procs.size();
  plan.address_space_limit = request.address_space_limit;
  plan.uid_map = uid_map.c_str();
  plan.gid_map = gid_map.c_str();

  Spawned out;
  int pidfd = -1;
  pid_t pid = -EPERM;
  if (request.namespaces) {
    int ns = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS;
    if (!root) ns |= CLONE_NEWUSER;
    if (request.isolate_network) ns |= CLONE_NEWNET;
    plan.mount_ns = plan.uts_ns = true;
    plan.net_ns = request.isolate_network;
    plan.user_ns = !root;
    pid = clone_child(plan, ns, &pidfd);
    // A failure inside the namespaces (say a refused mount) also means: not here, go plain.
    if (pid > 0 && plan.failed_stage != stage_none && plan.failed_stage <= stage_readonly &&
        plan.failed_stage != stage_cgroup) {
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
    plan.mount_ns = plan.uts_ns = plan.user_ns = plan.net_ns = false;
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
    throw Error(errc::handler_failed, std::string("cannot start handler '") + request.argv[0] +
                                          "': " + stage_name(plan.failed_stage) + ": " +
                                          std::strerror(plan.failed_errno));
  }
  out.pid = pid;
  out.pidfd = pidfd;
  return out;
}

}  // namespace blixard::runtime
