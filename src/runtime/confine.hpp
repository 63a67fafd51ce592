// Confinement: what a new instance process does to itself, after its namespaces exist and before
// it runs the handler, so that it holds even when the agent is root (DESIGN §5):
//   - joins its cgroups (memory, pids) while it may still write to them;
//   - a root built for it: a small tmpfs holding read-only binds of the system dirs (/usr, /etc,
//     the /bin /lib... links), of its code, the handler runtime and the interpreter, a /dev of
//     five devices, its own /proc with the kernel's knobs read-only or masked, and a size-limited
//     tmpfs at /tmp (its scratch, charged to its memory cgroup); no data dir, /root, /home, host
//     /tmp or /etc/shadow; pivot_root into it, the host's tree detached;
//   - as an unprivileged host uid and gid of its own, in a user namespace of its own that maps it
//     to 0, or to nobody for a VM replica (when the agent is root; an unprivileged agent's
//     instances are in its user namespace);
//   - every capability dropped (bounding and ambient sets too), no_new_privs, a seccomp filter.
//
// Two callers share this one implementation: spawn.cpp's clone child (native and fresh Python
// instances) and the Python zygote's forked child, which loads it from libblixard-confine.so
// through ctypes (the driver writes the library out at start, as it does the handler runtime).
// Both pass the plan as "key=value" strings, parsed without allocating: the clone child shares
// the agent's memory until it execs.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace blixard::runtime {

struct Confinement {
  // An empty directory on the host where the new root is mounted before pivot_root. Empty: no new
  // root (the namespaces were refused; only the limits and the lockdown apply).
  std::string root;
  // Host directories bound read-only at the same path in the new root (code, runtime, the
  // interpreter's prefix). Paths under a system dir already bound are skipped.
  std::vector<std::string> keep;
  // The agent's runtime files (handler runtime), bound read-only at k_runtime_mount, so no path
  // of the agent's data dir shows inside.
  std::string runtime_dir;
  // The function's code (a node keeps it under its data dir), bound read-only at k_code_mount
  // for the same reason.
  std::string code_dir;
  // A VM replica's volume: the host directory bound writable (nosuid, nodev) at the mount point.
  std::string volume_dir, volume_mount;
  std::uint64_t scratch_bytes = 64ull << 20;  // the tmpfs at /tmp
  std::vector<std::string> cgroup_join;       // files to write "0" to (InstanceCgroup::join_files)
  std::uint64_t address_space_limit = 0;      // RLIMIT_AS in bytes, 0: none
  bool loopback = false;                      // bring up `lo` (a new network namespace)
  // Any port may be bound without privilege (a VM replica in a network namespace of its own).
  bool low_ports = false;
  // Host ids the instance runs as, mapped to 0 in a user namespace of its own. Only a root agent
  // may change ids; -1: keep the caller's (an unprivileged agent's user namespace already maps it).
  long uid = -1, gid = -1;
  // The uid and gid it has inside that user namespace: 0, or 65534 for a VM replica (nobody, as a
  // guest's workload runs; a program such as PostgreSQL refuses to run as root).
  long inner_id = 0;
  // SIGKILLed when the thread that spawned it ends (PR_SET_PDEATHSIG): every instance, but a VM
  // replica its driver may leave running for the next agent (docs/vms.md, "Agent restarts").
  bool die_with_agent = true;
  // Extra namespaces to unshare first (CLONE_NEW* flags): the zygote's child, which is forked
  // rather than cloned into them.
  int unshare_flags = 0;
};

// Where an instance sees Confinement::runtime_dir.
inline constexpr const char* k_runtime_mount = "/run/blixard";
// Where an instance sees its code, Confinement::code_dir (Lambda's place for it).
inline constexpr const char* k_code_mount = "/var/task";

// The plan as the confine entry points read it: "key=value" strings.
std::vector<std::string> confinement_args(const Confinement& c);

// The seccomp filter every instance gets (a BPF program: sock_filter entries), built once with
// libseccomp. Denies with EPERM at least what Docker's default profile denies: mount and the new
// mount API, umount, pivot_root, chroot, ptrace and process_vm_*, kexec, module loading, bpf,
// keyctl/add_key/request_key, setns, unshare and clone with namespace flags (clone3: ENOSYS, so
// the C library falls back to clone), open_by_handle_at, perf_event_open, userfaultfd, swapon,
// reboot, the clock setters, acct, quotactl, iopl/ioperm, syslog. Other architectures' system
// calls kill the process.
const std::string& instance_seccomp_filter();

}  // namespace blixard::runtime

extern "C" {
// Applies the plan in `args` (count strings, see confinement_args) and the seccomp program
// (`bpf_len` bytes of sock_filter; none when 0) to the calling process, which must be single-
// threaded. Returns 0, or -1 with a message (stage and errno) in `error`. Async-signal-safe.
int blixard_confine(const char* const* args, std::size_t count, const void* bpf,
                    std::size_t bpf_len, char* error, std::size_t error_len);
}
