// The agent's half of confinement (see confine.hpp): the plan as strings and the seccomp filter.
#include <sched.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "blixard/error.hpp"
#include "runtime/confine.hpp"

namespace blixard::runtime {
namespace fs = std::filesystem;
namespace {
// NOLINTBEGIN(modernize-avoid-c-arrays): constant tables and readlink's buffer
// What every instance sees of the host, read-only. On a merged-/usr host the top-level ones are
// symlinks into /usr and are made as links.
constexpr const char* k_system_dirs[] = {"/usr", "/etc",   "/bin",   "/sbin",
                                         "/lib", "/lib32", "/lib64", "/libx32"};
// Files under /etc that no instance reads: /dev/null over them.
constexpr const char* k_masked_files[] = {"/etc/shadow", "/etc/gshadow", "/etc/shadow-",
                                          "/etc/gshadow-"};

bool under(const std::string& path, const std::string& dir) {
  return path == dir || (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
                         path[dir.size()] == '/');
}

std::string normal(const std::string& path) {
  std::string out = fs::path(path).lexically_normal().string();
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}
// NOLINTEND(modernize-avoid-c-arrays)

}  // namespace

std::vector<std::string> confinement_args(const Confinement& c) {
  std::vector<std::string> out;
  if (!c.root.empty()) {
    out.push_back("root=" + c.root);
    std::vector<std::string> bound;
    for (const char* dir : k_system_dirs) {
      struct stat st {};
      if (::lstat(dir, &st) != 0) continue;
      if (S_ISLNK(st.st_mode)) {
        std::string target(4096, '\0');
        const ssize_t n = ::readlink(dir, target.data(), target.size() - 1);
        if (n <= 0) continue;
        target.resize(static_cast<std::size_t>(n));
        out.push_back(std::string("link=") + dir + "=" + target);
        // What is under it is under its target, bound already (/bin/sh: /usr/bin/sh).
        bound.emplace_back(dir);
      } else if (S_ISDIR(st.st_mode)) {
        out.push_back(std::string("bind=") + dir);
        bound.emplace_back(dir);
      }
    }
    for (const auto& k : c.keep) {
      if (k.empty()) continue;
      const std::string path = normal(k);
      bool covered = false;
      for (const auto& b : bound) covered = covered || under(path, b);
      struct stat st {};
      if (covered || path == "/" || ::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        continue;
      }
      out.push_back("bind=" + path);
      bound.push_back(path);
    }
    if (!c.runtime_dir.empty()) out.push_back("runtime=" + normal(c.runtime_dir));
    if (!c.code_dir.empty()) out.push_back("code=" + normal(c.code_dir));
    if (!c.volume_dir.empty()) {
      out.push_back("volume=" + normal(c.volume_dir) + "=" + normal(c.volume_mount));
    }
    for (const char* f : k_masked_files) {
      if (::access(f, F_OK) == 0) out.push_back(std::string("mask=") + f);
    }
    out.push_back("scratch=" + std::to_string(c.scratch_bytes));
  }
  for (const auto& f : c.cgroup_join) out.emplace_back("cgroup=" + f);
  if (c.address_space_limit != 0) out.push_back("as=" + std::to_string(c.address_space_limit));
  if (c.loopback) out.emplace_back("lo=1");
  if (c.low_ports) out.emplace_back("lowports=1");
  if (!c.die_with_agent) out.emplace_back("pdeath=0");
  if (c.uid >= 0 && c.gid >= 0) {
    out.push_back("uid=" + std::to_string(c.uid));
    out.push_back("gid=" + std::to_string(c.gid));
  }
  if (c.inner_id != 0) out.push_back("inner=" + std::to_string(c.inner_id));
  if (c.unshare_flags != 0) out.push_back("unshare=" + std::to_string(c.unshare_flags));
  return out;
}

namespace {

std::string build_filter() {
  scmp_filter_ctx ctx = ::seccomp_init(SCMP_ACT_ALLOW);
  if (ctx == nullptr) throw Error(errc::unavailable, "seccomp_init failed");
  struct Guard {
    scmp_filter_ctx c;
    ~Guard() { ::seccomp_release(c); }
  } guard{ctx};
  const auto deny = SCMP_ACT_ERRNO(EPERM);
  for (const char* name : {"mount",
                           "umount",
                           "umount2",
                           "pivot_root",
                           "chroot",
                           "fsopen",
                           "fsconfig",
                           "fsmount",
                           "fspick",
                           "move_mount",
                           "open_tree",
                           "mount_setattr",
                           "ptrace",
                           "process_vm_readv",
                           "process_vm_writev",
                           "kcmp",
                           "kexec_load",
                           "kexec_file_load",
                           "init_module",
                           "finit_module",
                           "delete_module",
                           "create_module",
                           "bpf",
                           "keyctl",
                           "add_key",
                           "request_key",
                           "setns",
                           "unshare",
                           "open_by_handle_at",
                           "name_to_handle_at",
                           "perf_event_open",
                           "userfaultfd",
                           "swapon",
                           "swapoff",
                           "reboot",
                           "settimeofday",
                           "clock_settime",
                           "clock_adjtime",
                           "adjtimex",
                           "stime",
                           "acct",
                           "quotactl",
                           "quotactl_fd",
                           "iopl",
                           "ioperm",
                           "syslog",
                           "lookup_dcookie",
                           "nfsservctl",
                           "uselib",
                           "vhangup",
                           "get_kernel_syms",
                           "query_module",
                           "_sysctl",
                           "fanotify_init",
                           "mbind",
                           "migrate_pages",
                           "move_pages",
                           "set_mempolicy"}) {
    const int nr = ::seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;  // not on this architecture
    if (::seccomp_rule_add(ctx, deny, nr, 0) != 0) {
      throw Error(errc::unavailable, std::string("seccomp: cannot deny ") + name);
    }
  }
  // New namespaces through clone: denied flag by flag (rules on one call are or-ed). clone3
  // passes its flags in memory a filter cannot read: ENOSYS makes the C library use clone.
  for (const std::uint64_t flag :
       {std::uint64_t{CLONE_NEWNS}, std::uint64_t{CLONE_NEWUTS}, std::uint64_t{CLONE_NEWIPC},
        std::uint64_t{CLONE_NEWUSER}, std::uint64_t{CLONE_NEWPID}, std::uint64_t{CLONE_NEWNET},
        std::uint64_t{CLONE_NEWCGROUP}, std::uint64_t{0x80} /* CLONE_NEWTIME */}) {
    const scmp_arg_cmp has_flag{0, SCMP_CMP_MASKED_EQ, flag, flag};  // (flags & flag) == flag
    if (::seccomp_rule_add(ctx, deny, SCMP_SYS(clone), 1, has_flag) != 0) {
      throw Error(errc::unavailable, "seccomp: cannot filter clone");
    }
  }
  if (::seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0) != 0) {
    throw Error(errc::unavailable, "seccomp: cannot filter clone3");
  }
  // The program as bytes: exported to a memory file and read back.
  const int fd = ::memfd_create("blixard-seccomp", MFD_CLOEXEC);
  if (fd < 0) throw Error(errc::unavailable, std::string("memfd_create: ") + std::strerror(errno));
  std::string out;
  if (::seccomp_export_bpf(ctx, fd) == 0) {
    const off_t size = ::lseek(fd, 0, SEEK_END);
    out.resize(size > 0 ? static_cast<std::size_t>(size) : 0);
    if (::pread(fd, out.data(), out.size(), 0) != static_cast<ssize_t>(out.size())) out.clear();
  }
  ::close(fd);
  if (out.empty()) throw Error(errc::unavailable, "seccomp: cannot export the filter");
  return out;
}

}  // namespace

const std::string& instance_seccomp_filter() {
  static std::once_flag once;
  static std::string program;
  std::call_once(once, [] { program = build_filter(); });
  return program;
}

}  // namespace blixard::runtime
