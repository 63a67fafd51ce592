// Confinement (see confine.hpp). The applying half runs between clone and execve in a child that
// shares the agent's memory, or in a forked Python child: raw system calls and fixed buffers only.
#include "runtime/confine.hpp"

#include <fcntl.h>
#include <linux/capability.h>
#include <linux/futex.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <csignal>

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/securebits.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

// Fixed buffers and tables for raw system calls, in a child that may not allocate.
// NOLINTBEGIN(modernize-avoid-c-arrays)
namespace {

constexpr std::size_t k_max_binds = 24;
constexpr std::size_t k_max_links = 8;
constexpr std::size_t k_max_masks = 8;
constexpr std::size_t k_max_cgroups = 4;
constexpr std::size_t k_path_max = 4096;

// The plan, pointing into the caller's strings.
struct Plan {
  const char* root = nullptr;
  const char* runtime = nullptr;  // bound at k_runtime_mount
  const char* code = nullptr;     // bound at k_code_mount
  const char* volume = nullptr;   // "HOST_DIR=MOUNT_POINT", bound writable
  const char* binds[k_max_binds]{};
  std::size_t bind_count = 0;
  const char* links[k_max_links]{};  // "PATH=TARGET"
  std::size_t link_count = 0;
  const char* masks[k_max_masks]{};
  std::size_t mask_count = 0;
  const char* cgroups[k_max_cgroups]{};
  std::size_t cgroup_count = 0;
  const char* scratch = "67108864";
  std::uint64_t address_space = 0;
  bool loopback = false;
  bool low_ports = false;  // its own network: any port is its to bind
  bool die_with_agent = true;
  long uid = -1, gid = -1;
  long inner = 0;  // the ids inside the user namespace
  int unshare_flags = 0;
};

// A message for the caller: "stage: strerror" (strerror is not async-signal-safe; the few errno
// values a setup step meets are named here).
struct Failure {
  const char* stage = nullptr;
  int err = 0;
};

const char* errno_name(int e) {
  switch (e) {
    case EPERM:
      return "Operation not permitted";
    case ENOENT:
      return "No such file or directory";
    case EACCES:
      return "Permission denied";
    case EINVAL:
      return "Invalid argument";
    case ENOSPC:
      return "No space left on device";
    case ENOMEM:
      return "Cannot allocate memory";
    case EBUSY:
      return "Device or resource busy";
    case ENOTDIR:
      return "Not a directory";
    case ENOSYS:
      return "Function not implemented";
    case EEXIST:
      return "File exists";
    case EROFS:
      return "Read-only file system";
    case EUSERS:
      return "Too many users";
    default:
      return "error";
  }
}

bool starts(const char* s, const char* prefix, const char** rest) {
  const std::size_t n = std::strlen(prefix);
  if (std::strncmp(s, prefix, n) != 0) return false;
  *rest = s + n;
  return true;
}

std::uint64_t to_u64(const char* s) {
  std::uint64_t v = 0;
  for (; *s >= '0' && *s <= '9'; ++s) v = v * 10 + static_cast<std::uint64_t>(*s - '0');
  return v;
}

long to_long(const char* s) { return *s == '-' ? -1 : static_cast<long>(to_u64(s)); }

bool parse(const char* const* args, std::size_t count, Plan& p) {
  for (std::size_t i = 0; i < count; ++i) {
    const char* a = args[i];
    const char* v = nullptr;
    if (starts(a, "root=", &v)) {
      p.root = v;
    } else if (starts(a, "runtime=", &v)) {
      p.runtime = v;
    } else if (starts(a, "code=", &v)) {
      p.code = v;
    } else if (starts(a, "volume=", &v)) {
      p.volume = v;
    } else if (starts(a, "bind=", &v)) {
      if (p.bind_count == k_max_binds) return false;
      p.binds[p.bind_count++] = v;
    } else if (starts(a, "link=", &v)) {
      if (p.link_count == k_max_links) return false;
      p.links[p.link_count++] = v;
    } else if (starts(a, "mask=", &v)) {
      if (p.mask_count == k_max_masks) return false;
      p.masks[p.mask_count++] = v;
    } else if (starts(a, "cgroup=", &v)) {
      if (p.cgroup_count == k_max_cgroups) return false;
      p.cgroups[p.cgroup_count++] = v;
    } else if (starts(a, "scratch=", &v)) {
      p.scratch = v;
    } else if (starts(a, "as=", &v)) {
      p.address_space = to_u64(v);
    } else if (starts(a, "lo=", &v)) {
      p.loopback = *v == '1';
    } else if (starts(a, "pdeath=", &v)) {
      p.die_with_agent = *v == '1';
    } else if (starts(a, "lowports=", &v)) {
      p.low_ports = *v == '1';
    } else if (starts(a, "uid=", &v)) {
      p.uid = to_long(v);
    } else if (starts(a, "gid=", &v)) {
      p.gid = to_long(v);
    } else if (starts(a, "inner=", &v)) {
      p.inner = to_long(v);
    } else if (starts(a, "unshare=", &v)) {
      p.unshare_flags = static_cast<int>(to_u64(v));
    } else {
      return false;
    }
  }
  return true;
}

// dst = a + b, false when it does not fit.
bool join(char* dst, const char* a, const char* b) {
  const std::size_t na = std::strlen(a), nb = std::strlen(b);
  if (na + nb + 1 > k_path_max) return false;
  std::memcpy(dst, a, na);
  std::memcpy(dst + na, b, nb);
  dst[na + nb] = '\0';
  return true;
}

// mkdir -p of `path` (absolute, inside the new root: every component is ours to create).
bool make_dirs(char* path) {
  for (char* c = path + 1; *c != '\0'; ++c) {
    if (*c != '/') continue;
    *c = '\0';
    const bool ok = ::mkdir(path, 0755) == 0 || errno == EEXIST;
    *c = '/';
    if (!ok) return false;
  }
  return ::mkdir(path, 0755) == 0 || errno == EEXIST;
}

bool write_text(const char* path, const char* text) {
  const int fd = ::open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const std::size_t n = std::strlen(text);
  const bool ok = ::write(fd, text, n) == static_cast<ssize_t>(n);
  ::close(fd);
  return ok;
}

struct MountAttr {
  std::uint64_t attr_set, attr_clr, propagation, userns_fd;
};
constexpr std::uint64_t k_attr_rdonly = 0x1, k_attr_nosuid = 0x2, k_attr_nodev = 0x4;
constexpr unsigned k_at_recursive = 0x8000;

// A bind (and everything mounted under it) read-only, nosuid, nodev.
bool read_only(const char* path) {
  MountAttr attr{k_attr_rdonly | k_attr_nosuid | k_attr_nodev, 0, 0, 0};
  if (::syscall(SYS_mount_setattr, AT_FDCWD, path, k_at_recursive, &attr, sizeof attr) == 0) {
    return true;
  }
  if (errno != ENOSYS) return false;
  return ::mount(nullptr, path, nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV,
                 nullptr) == 0;
}

bool bind_read_only(const char* source, const char* target) {
  return ::mount(source, target, nullptr, MS_BIND | MS_REC, nullptr) == 0 && read_only(target);
}

// An empty regular file to bind a file or device over.
bool touch(const char* path) {
  const int fd = ::open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return errno == EEXIST;
  ::close(fd);
  return true;
}

// /dev: five devices and the usual links, nothing else of the host's (no disks, no /dev/kvm).
bool build_dev(const char* root, Failure& f) {
  char dev[k_path_max], path[k_path_max];
  f.stage = "building /dev";
  if (!join(dev, root, "/dev") || !make_dirs(dev)) return false;
  if (::mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,nr_inodes=64,mode=755") !=
      0) {
    return false;
  }
  for (const char* name : {"/null", "/zero", "/full", "/random", "/urandom"}) {
    char host[32] = "/dev";
    std::memcpy(host + 4, name, std::strlen(name) + 1);
    if (!join(path, dev, name) || !touch(path)) return false;
    if (::mount(host, path, nullptr, MS_BIND, nullptr) != 0) return false;
  }
  const char* links[][2] = {{"/fd", "/proc/self/fd"},
                            {"/stdin", "/proc/self/fd/0"},
                            {"/stdout", "/proc/self/fd/1"},
                            {"/stderr", "/proc/self/fd/2"}};
  for (const auto& l : links) {
    if (!join(path, dev, l[0]) || ::symlink(l[1], path) != 0) return false;
  }
  // Read-only: nothing can be created in it. The device binds keep working (a write to a
  // character device is not a write to the file system).
  return ::mount(nullptr, dev, nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC,
                 nullptr) == 0;
}

// The instance's own /proc (its PID namespace's), with the kernel's knobs read-only and the
// files that leak host state masked, as container runtimes do.
bool build_proc(const char* root, Failure& f) {
  char proc[k_path_max], path[k_path_max], null[k_path_max];
  f.stage = "mounting /proc";
  if (!join(proc, root, "/proc") || !make_dirs(proc)) return false;
  if (::mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0) return false;
  f.stage = "masking /proc";
  for (const char* name : {"/sys", "/sysrq-trigger", "/irq", "/bus", "/fs"}) {
    if (!join(path, proc, name)) return false;
    if (::mount(path, path, nullptr, MS_BIND | MS_REC, nullptr) != 0) {
      if (errno == ENOENT) continue;
      return false;
    }
    if (!read_only(path)) return false;
  }
  if (!join(null, root, "/dev/null")) return false;
  for (const char* name : {"/kcore", "/keys", "/timer_list", "/sched_debug", "/kallsyms"}) {
    if (!join(path, proc, name)) return false;
    if (::mount(null, path, nullptr, MS_BIND, nullptr) != 0 && errno != ENOENT) return false;
  }
  return true;
}

bool build_root(const Plan& p, Failure& f) {
  char path[k_path_max], data[64];
  f.stage = "mounting the instance's root";
  if (::mount("tmpfs", p.root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=755") !=
      0) {
    return false;
  }
  // First, so the code dirs under the host's /tmp are bound over it, not hidden by it.
  f.stage = "mounting the scratch /tmp";
  if (!join(path, p.root, "/tmp") || !make_dirs(path)) return false;
  const char prefix[] = "mode=1777,nr_inodes=16384,size=";
  const std::size_t n = std::strlen(p.scratch);
  if (sizeof prefix + n > sizeof data) return false;
  std::memcpy(data, prefix, sizeof prefix - 1);
  std::memcpy(data + sizeof prefix - 1, p.scratch, n + 1);
  if (::mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, data) != 0) return false;
  f.stage = "binding the system and code directories";
  for (std::size_t i = 0; i < p.bind_count; ++i) {
    if (!join(path, p.root, p.binds[i]) || !make_dirs(path)) return false;
    if (!bind_read_only(p.binds[i], path)) return false;
  }
  if (p.runtime != nullptr) {
    if (!join(path, p.root, blixard::runtime::k_runtime_mount) || !make_dirs(path)) return false;
    if (!bind_read_only(p.runtime, path)) return false;
  }
  if (p.code != nullptr) {
    if (!join(path, p.root, blixard::runtime::k_code_mount) || !make_dirs(path)) return false;
    if (!bind_read_only(p.code, path)) return false;
  }
  if (p.volume != nullptr) {
    // Writable, but nothing on it runs setuid or opens a device: the files are the replica's.
    f.stage = "binding the volume";
    const char* eq = std::strchr(p.volume, '=');
    if (eq == nullptr || static_cast<std::size_t>(eq - p.volume) >= k_path_max) return false;
    char source[k_path_max];
    std::memcpy(source, p.volume, static_cast<std::size_t>(eq - p.volume));
    source[eq - p.volume] = '\0';
    if (!join(path, p.root, eq + 1) || !make_dirs(path)) return false;
    if (::mount(source, path, nullptr, MS_BIND, nullptr) != 0) return false;
    // mount_setattr changes just these two; a remount would have to repeat the flags the mount
    // has, which a user namespace may not change.
    MountAttr attr{k_attr_nosuid | k_attr_nodev, 0, 0, 0};
    if (::syscall(SYS_mount_setattr, AT_FDCWD, path, 0, &attr, sizeof attr) != 0 &&
        (errno != ENOSYS || ::mount(nullptr, path, nullptr,
                                    MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV, nullptr) != 0)) {
      return false;
    }
  }
  f.stage = "linking the system directories";
  for (std::size_t i = 0; i < p.link_count; ++i) {
    const char* eq = std::strchr(p.links[i], '=');
    if (eq == nullptr || static_cast<std::size_t>(eq - p.links[i]) >= 256) return false;
    char name[256];
    std::memcpy(name, p.links[i], static_cast<std::size_t>(eq - p.links[i]));
    name[eq - p.links[i]] = '\0';
    if (!join(path, p.root, name) || ::symlink(eq + 1, path) != 0) return false;
  }
  if (!build_dev(p.root, f) || !build_proc(p.root, f)) return false;
  f.stage = "masking secrets";
  char null[k_path_max];
  if (!join(null, p.root, "/dev/null")) return false;
  for (std::size_t i = 0; i < p.mask_count; ++i) {
    if (!join(path, p.root, p.masks[i])) return false;
    if (::mount(null, path, nullptr, MS_BIND, nullptr) != 0 && errno != ENOENT) return false;
  }
  // The root itself read-only (its mount points stay as they are), then make it "/".
  f.stage = "entering the instance's root";
  if (::mount(nullptr, p.root, nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV,
              nullptr) != 0) {
    return false;
  }
  if (::chdir(p.root) != 0) return false;
  // pivot_root(".", "."): the old root ends up stacked on "/", and is detached at once.
  if (::syscall(SYS_pivot_root, ".", ".") != 0) return false;
  if (::umount2(".", MNT_DETACH) != 0) return false;
  return ::chdir("/") == 0;
}

// A new network namespace has only a loopback, and it is down.
bool loopback_up() {
  const int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return false;
  struct ifreq ifr {};
  std::memcpy(ifr.ifr_name, "lo", 3);
  bool ok = ::ioctl(s, SIOCGIFFLAGS, &ifr) == 0;
  if (ok) {
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
    ok = ::ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
  }
  ::close(s);
  return ok;
}

// Writes the decimal digits of `value` at `o`; returns the end.
char* put_number(char* o, long value) {
  char digits[24];
  int n = 0;
  auto v = static_cast<unsigned long>(value);
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0) *o++ = digits[--n];
  return o;
}

void format_id_map(char* out, long inner, long id) {
  // "<inner> <id> 1"
  char* o = put_number(out, inner);
  *o++ = ' ';
  o = put_number(o, id);
  std::memcpy(o, " 1", 3);
}

// A child spawned with CLONE_VM shares the agent's mm, and with it the "dumpable" flag: an id
// change resets it, and it decides who owns /proc/self, so who may write its uid_map. Two children
// changing ids at once undo each other's PR_SET_DUMPABLE (uid_map: EACCES), so the id change and
// the maps are one critical section across them: a futex word in the memory they share, holding
// the holder's pid. A waiter that finds the holder gone (killed mid-spawn) takes the word over.
std::atomic<int> g_identity_holder{0};

void lock_identity() {
  const int self = static_cast<int>(::syscall(SYS_gettid));
  for (;;) {
    int holder = 0;
    if (g_identity_holder.compare_exchange_strong(holder, self)) return;
    const timespec wait{0, 1'000'000};
    ::syscall(SYS_futex, reinterpret_cast<int*>(&g_identity_holder), FUTEX_WAIT_PRIVATE, holder,
              &wait, nullptr, 0);
    if (::kill(holder, 0) != 0 && errno == ESRCH) {
      g_identity_holder.compare_exchange_strong(holder, 0);
    }
  }
}

void unlock_identity() {
  const int saved = errno;  // the failure being reported, if any
  g_identity_holder.store(0);
  ::syscall(SYS_futex, reinterpret_cast<int*>(&g_identity_holder), FUTEX_WAKE_PRIVATE, 1, nullptr,
            nullptr, 0);
  errno = saved;
}

bool change_identity_locked(const Plan& p, Failure& f) {
  f.stage = "changing to the instance's ids";
  if (::syscall(SYS_setgroups, 0, nullptr) != 0) return false;
  if (::syscall(SYS_setresgid, p.gid, p.gid, p.gid) != 0) return false;
  if (::syscall(SYS_setresuid, p.uid, p.uid, p.uid) != 0) return false;
  // The id change made us undumpable, which leaves /proc/self root's: the maps below need it ours.
  if (::prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0) return false;
  f.stage = "creating the user namespace";
  if (::unshare(CLONE_NEWUSER) != 0) return false;
  char map[40];
  write_text("/proc/self/setgroups", "deny");
  format_id_map(map, p.inner, p.uid);
  if (!write_text("/proc/self/uid_map", map)) return false;
  format_id_map(map, p.inner, p.gid);
  return write_text("/proc/self/gid_map", map);
}

// Host root -> the instance's own ids, then a user namespace mapping them to 0 (or nobody).
bool change_identity(const Plan& p, Failure& f) {
  lock_identity();
  const bool ok = change_identity_locked(p, f);
  unlock_identity();
  return ok;
}

bool drop_capabilities(Failure& f) {
  f.stage = "dropping capabilities";
  // Locked: a later exec of a setuid program or uid 0 gains nothing.
  const unsigned long bits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
                             SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED;
  if (::prctl(PR_SET_SECUREBITS, bits, 0, 0, 0) != 0) return false;
  for (int cap = 0; cap <= 63; ++cap) {
    if (::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) return false;
  }
  ::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  return ::syscall(SYS_capset, &header, data) == 0;
}

int apply(const Plan& p, const void* bpf, std::size_t bpf_len, Failure& f) {
  if (p.unshare_flags != 0) {
    f.stage = "creating namespaces";
    if (::unshare(p.unshare_flags) != 0) return -1;
  }
  f.stage = "joining the cgroup";
  for (std::size_t i = 0; i < p.cgroup_count; ++i) {
    if (!write_text(p.cgroups[i], "0")) return -1;
  }
  if (p.low_ports) {
    // Before the root is built: its /proc/sys is read-only there. The namespace is its own, so
    // the setting is too (as a guest may serve port 80 as nobody).
    f.stage = "allowing ports below 1024";
    if (!write_text("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")) return -1;
  }
  if (p.root != nullptr) {
    f.stage = "making mounts private";
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return -1;
    if (!build_root(p, f)) return -1;
    ::sethostname("blixard", 7);
  }
  if (p.loopback) {
    f.stage = "bringing up the loopback";
    if (!loopback_up()) return -1;
  }
  f.stage = "setting resource limits";
  struct rlimit no_core {
    0, 0
  };
  if (::setrlimit(RLIMIT_CORE, &no_core) != 0) return -1;
  if (p.address_space != 0) {
    struct rlimit as {
      p.address_space, p.address_space
    };
    if (::setrlimit(RLIMIT_AS, &as) != 0) return -1;
  }
  if (p.uid >= 0 && p.gid >= 0 && !change_identity(p, f)) return -1;
  // Cleared by the id change; the instance still dies with the agent (a keepable replica: set
  // nowhere, spawn.cpp).
  if (p.die_with_agent) ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  if (!drop_capabilities(f)) return -1;
  f.stage = "setting no_new_privs";
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
  if (bpf_len != 0) {
    f.stage = "installing the seccomp filter";
    sock_fprog prog{static_cast<unsigned short>(bpf_len / sizeof(sock_filter)),
                    static_cast<sock_filter*>(const_cast<void*>(bpf))};
    if (::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0) return -1;
  }
  return 0;
}

void put(char*& out, char* end, const char* s) {
  while (*s != '\0' && out + 1 < end) *out++ = *s++;
  *out = '\0';
}

}  // namespace

extern "C" int blixard_confine(const char* const* args, std::size_t count, const void* bpf,
                               std::size_t bpf_len, char* error, std::size_t error_len) {
  Plan plan;
  Failure f;
  int rc = 0;
  if (!parse(args, count, plan)) {
    f.stage = "reading the confinement plan";
    f.err = EINVAL;
    rc = -1;
  } else {
    rc = apply(plan, bpf, bpf_len, f);
    if (rc != 0) f.err = errno;
  }
  if (rc != 0 && error != nullptr && error_len != 0) {
    char* out = error;
    char* end = error + error_len;
    put(out, end, f.stage != nullptr ? f.stage : "confining");
    put(out, end, ": ");
    put(out, end, errno_name(f.err));
    char num[16];
    char* n = num + sizeof num;
    *--n = '\0';
    *--n = ')';
    auto e = static_cast<unsigned>(f.err);
    do {
      *--n = static_cast<char>('0' + e % 10);
      e /= 10;
    } while (e != 0 && n > num + 8);
    put(out, end, " (errno ");
    put(out, end, n);
  }
  if (rc != 0) errno = f.err;
  return rc;
}
// NOLINTEND(modernize-avoid-c-arrays)
