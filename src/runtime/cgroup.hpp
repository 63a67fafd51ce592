// Per-instance cgroups for the sandbox driver: memory and pid limits, OOM detection and
// kill-everything. Pure cgroup v2 where /sys/fs/cgroup is cgroup2, the v1 memory and pids
// controllers on hybrid hosts, nothing (the caller falls back to RLIMIT_AS) elsewhere.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace blixard::runtime {

class InstanceCgroup {
 public:
  InstanceCgroup(bool v2, std::vector<std::filesystem::path> dirs)
      : v2_(v2), dirs_(std::move(dirs)) {}
  InstanceCgroup(const InstanceCgroup&) = delete;
  InstanceCgroup& operator=(const InstanceCgroup&) = delete;
  ~InstanceCgroup() { remove(); }

  // The files a new, still single-threaded process writes "0" to, to join.
  std::vector<std::string> join_files() const;
  // The kernel OOM-killed a process of this cgroup.
  bool oom_killed() const;
  // SIGKILLs every process in the cgroup.
  void kill_all() const;
  // Kills what is left and removes the directories; idempotent.
  void remove();
  const std::vector<std::filesystem::path>& dirs() const noexcept { return dirs_; }

 private:
  bool v2_;
  std::vector<std::filesystem::path> dirs_;  // v2: one; v1: memory then pids
};

class CgroupManager {
 public:
  enum class Mode { none, v1, v2 };
  // `parent`: relative path under the hierarchy root(s); empty means "blixard".
  explicit CgroupManager(std::string parent, std::filesystem::path root = "/sys/fs/cgroup");

  Mode mode() const noexcept { return mode_; }
  // Why mode() is none, for the log.
  const std::string& reason() const noexcept { return reason_; }
  // nullptr when cgroups are unavailable or the group cannot be created (the caller falls back).
  std::unique_ptr<InstanceCgroup> create(const std::string& name, std::uint64_t memory_bytes,
                                         std::uint64_t pids_max, std::string* why = nullptr) const;

 private:
  Mode mode_ = Mode::none;
  std::string reason_;
  std::filesystem::path memory_parent_;  // v2: the parent; v1: under the memory controller
  std::filesystem::path pids_parent_;    // v1 only, empty when there is no pids controller
};

}  // namespace blixard::runtime
