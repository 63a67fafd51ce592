// Per-instance cgroups for the sandbox driver: memory and pid limits, OOM detection and
// kill-everything. Pure cgroup v2 where /sys/fs/cgroup is cgroup2, the v1 memory and pids
// controllers on hybrid hosts, nothing (the caller falls back to RLIMIT_AS) elsewhere.
//
// On v1, instance groups are reused: an emptied group goes back to its manager, which renames it
// to an idle name and hands it to a later instance under that one's name. Creating a memory cgroup
// is a good part of a native cold start, and every removed one lingers as a "dying" memcg while
// page cache is charged to it, which makes each later mkdir slower. cgroupfs v2 refuses rename(2)
// (EPERM), so v2 groups are still made and removed per instance.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace blixard::runtime {

// What a group's limit files hold; 0 is unlimited.
struct CgroupLimits {
  std::uint64_t memory_bytes = 0;
  std::uint64_t pids_max = 0;
};

class InstanceCgroup {
 public:
  // `oom_baseline`: the group's OOM-kill count when this instance took it (the count cannot be
  // reset, and a reused group carries its earlier instances' kills).
  InstanceCgroup(bool v2, std::vector<std::filesystem::path> dirs, std::uint64_t oom_baseline = 0)
      : v2_(v2), dirs_(std::move(dirs)), oom_baseline_(oom_baseline) {}
  InstanceCgroup(const InstanceCgroup&) = delete;
  InstanceCgroup& operator=(const InstanceCgroup&) = delete;
  ~InstanceCgroup() { remove(); }

  // The files a new, still single-threaded process writes "0" to, to join.
  std::vector<std::string> join_files() const;
  // The kernel OOM-killed a process of this cgroup since this instance took it.
  bool oom_killed() const;
  // SIGKILLs every process in the cgroup.
  void kill_all() const;
  // Kills what is left and removes the directories; idempotent.
  void remove();
  // Lets the group be, its processes running on (a replica left for the next agent, which takes
  // the group back with CgroupManager::existing).
  void forget() noexcept { dirs_.clear(); }
  std::uint64_t oom_baseline() const noexcept { return oom_baseline_; }
  const std::vector<std::filesystem::path>& dirs() const noexcept { return dirs_; }

 private:
  friend class CgroupManager;
  bool v2_;
  std::vector<std::filesystem::path> dirs_;  // v2: one; v1: memory then pids
  std::uint64_t oom_baseline_;
  CgroupLimits limits_;  // what create() wrote, kept with the group when it is idle
};

class CgroupManager {
 public:
  enum class Mode { none, v1, v2 };
  // Groups named so hold VM replicas that outlive their agent ("kept.<agent's hash>-..."; the
  // '.' is in no instance's name): no agent removes one at its start, whichever agent made it,
  // since agents on one host share the parent. The agent that made it takes it back or kills it.
  static constexpr std::string_view k_kept_prefix = "kept.";
  // `parent`: relative path under the hierarchy root(s); empty means "blixard".
  explicit CgroupManager(std::string parent, const std::filesystem::path& root = "/sys/fs/cgroup");
  // Removes the idle groups (close()).
  ~CgroupManager();
  CgroupManager(const CgroupManager&) = delete;
  CgroupManager& operator=(const CgroupManager&) = delete;

  Mode mode() const noexcept { return mode_; }
  // Why mode() is none, for the log.
  const std::string& reason() const noexcept { return reason_; }
  // An idle group renamed to `name`, or a new one; with the limits set (0: none). nullptr when
  // cgroups are unavailable or the group cannot be created (the caller falls back). Thread-safe.
  std::unique_ptr<InstanceCgroup> create(const std::string& name, std::uint64_t memory_bytes,
                                         std::uint64_t pids_max, std::string* why = nullptr);
  // Takes back an instance's group once its processes are gone: kept for reuse (v1) when it is
  // empty and there is room, otherwise killed and removed. Thread-safe.
  void release(std::unique_ptr<InstanceCgroup> group);
  // Removes the idle groups; groups released later are removed rather than kept.
  void close();
  // An in-use group an earlier manager on the same parent created as `name` (its instance left
  // running, InstanceCgroup::forget), or nullptr when there is none.
  std::unique_ptr<InstanceCgroup> existing(const std::string& name, std::uint64_t oom_baseline);
  // The in-use groups under the parent whose names start with `prefix`.
  std::vector<std::string> names(const std::string& prefix) const;
  // Idle groups kept, for tests and the log.
  std::size_t idle_count() const;

  // Idle groups kept at most; more are removed.
  static constexpr std::size_t k_max_idle = 32;
  // Groups made when the manager starts (v1), so a driver's first instances need no mkdir.
  static constexpr std::size_t k_precreated = 2;

 private:
  struct Idle {
    std::vector<std::filesystem::path> dirs;
    std::uint64_t oom_baseline = 0;
    CgroupLimits limits;  // kept from its last instance: the next one with the same writes none
  };

  std::vector<std::filesystem::path> dirs_named(const std::string& name) const;
  // Changes a group's limits from `now` to `want`; for a reused v1 group, reclaims its leftover
  // page cache when the new memory limit is below it.
  bool set_limits(const std::vector<std::filesystem::path>& dirs, const CgroupLimits& now,
                  const CgroupLimits& want, bool reused, std::string* why) const;
  // An empty group, its counters reset, renamed to an idle name and kept (or removed when closed
  // or full). `limits`: what it holds; nullopt (a stale group) resets them to none.
  void park(std::vector<std::filesystem::path> dirs, std::optional<CgroupLimits> limits);
  void precreate();
  // Idle groups of a process that is gone (same parent, same naming): adopted or removed.
  void adopt_stale();
  std::string idle_name();

  Mode mode_ = Mode::none;
  std::string reason_;
  std::filesystem::path memory_parent_;  // v2: the parent; v1: under the memory controller
  std::filesystem::path pids_parent_;    // v1 only, empty when there is no pids controller
  bool has_swap_limit_ = false;          // v1 memory.memsw.*, v2 memory.swap.max
  bool has_pids_ = false;                // v2: pids.max in the group itself
  bool reuse_ = false;                   // groups are kept and renamed (v1)

  mutable std::mutex mutex_;
  std::vector<Idle> idle_;  // most recently released last: its cache is the warmest
  bool closed_ = false;
};

}  // namespace blixard::runtime
