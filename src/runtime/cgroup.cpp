// Per-instance cgroups (see cgroup.hpp).
#include "runtime/cgroup.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <optional>
#include <sstream>
#include <string_view>

namespace blixard::runtime {
namespace fs = std::filesystem;
namespace {

constexpr long k_cgroup2_magic = 0x63677270;

// Raw syscalls rather than streams: these run on every instance start, and errno must be the
// kernel's (EBUSY from a memory limit below what the group cannot reclaim).
bool write_file(const fs::path& path, std::string_view text, std::string* why = nullptr,
                int* error = nullptr) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  const bool ok =
      fd >= 0 && ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  const int err = ok ? 0 : errno;
  if (fd >= 0) ::close(fd);
  if (error != nullptr) *error = err;
  if (!ok && why != nullptr) *why = "writing " + path.string() + ": " + std::strerror(err);
  return ok;
}

// nullopt when the file cannot be opened (the group is gone).
std::optional<std::string> try_read_file(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string out;
  std::array<char, 4096> buf{};
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf.data(), static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}

std::string read_file(const fs::path& path) { return try_read_file(path).value_or(""); }

// The value of "key N" in a flat-keyed file (memory.events, memory.oom_control); nullopt when
// the key is not there.
std::optional<std::uint64_t> keyed_value(const fs::path& path, const std::string& key) {
  std::istringstream in(read_file(path));
  std::string k;
  std::uint64_t v = 0;
  while (in >> k >> v) {
    if (k == key) return v;
  }
  return std::nullopt;
}

std::vector<pid_t> procs(const fs::path& dir) {
  std::istringstream in(read_file(dir / "cgroup.procs"));
  std::vector<pid_t> out;
  for (pid_t pid; in >> pid;) out.push_back(pid);
  return out;
}

// The file holding the OOM-kill count: v2 memory.events, v1 memory.oom_control (Linux 4.13+).
fs::path oom_file(bool v2, const fs::path& memory_dir) {
  return memory_dir / (v2 ? "memory.events" : "memory.oom_control");
}

// Kills what is left in the directories and removes them, last first (v1: pids, then memory).
void kill_and_remove(const std::vector<fs::path>& dirs) {
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    // A killed process leaves its cgroup a moment after it is reaped: retry briefly. This is the
    // plain-process fallback's path; with a PID namespace the group is empty once init is reaped.
    for (int attempt = 0; attempt < 100; ++attempt) {
      if (::rmdir(it->c_str()) == 0 || errno == ENOENT) break;
      if (errno != EBUSY) break;
      for (pid_t pid : procs(*it)) ::kill(pid, SIGKILL);
      ::poll(nullptr, 0, 2);
    }
  }
}

bool all_empty(const std::vector<fs::path>& dirs) {
  for (const auto& d : dirs) {
    // An unreadable cgroup.procs (the group is gone) is not an empty group.
    const auto text = try_read_file(d / "cgroup.procs");
    if (!text || text->find_first_not_of(" \n") != std::string::npos) return false;
  }
  return true;
}

// Field 22 of /proc/PID/stat (start time in clock ticks since boot): with the pid, it names one
// process for as long as the machine is up. Empty when there is no such process, or only its
// zombie (an agent killed with -9 whose parent does not reap it: a container's PID 1, say).
std::string start_time(const std::string& pid) {
  const std::string stat = read_file("/proc/" + pid + "/stat");
  const auto paren = stat.rfind(')');
  if (paren == std::string::npos) return {};
  std::istringstream in(stat.substr(paren + 1));
  std::string field;
  for (int i = 3; i <= 22 && in >> field; ++i) {
    if (i == 3 && (field == "Z" || field == "X")) return {};
    if (i == 22) return field;
  }
  return {};
}

const std::string& self_pid() {
  static const std::string pid = std::to_string(::getpid());
  return pid;
}

const std::string& self_start_time() {
  static const std::string t = start_time(self_pid());
  return t;
}

// "idle-PID-START.SEQ": an idle group of the process PID started at START. The '.' never appears
// in an instance name (sandbox_driver's sanitize()), so no instance group looks idle; the
// "-PID-" is what cluster_test's leak check looks for.
struct IdleName {
  std::string pid, start;
};
std::optional<IdleName> parse_idle(const std::string& name) {
  auto digits = [](std::string_view s) {
    return !s.empty() && s.find_first_not_of("0123456789") == std::string_view::npos;
  };
  if (name.rfind("idle-", 0) != 0) return std::nullopt;
  const std::string_view rest = std::string_view(name).substr(5);
  const auto dash = rest.find('-');
  const auto dot = rest.find('.');
  if (dash == std::string_view::npos || dot == std::string_view::npos || dot < dash) {
    return std::nullopt;
  }
  const auto pid = rest.substr(0, dash);
  const auto start = rest.substr(dash + 1, dot - dash - 1);
  if (!digits(pid) || !digits(start) || !digits(rest.substr(dot + 1))) return std::nullopt;
  return IdleName{std::string(pid), std::string(start)};
}

// Idle names are unique across the managers of one process (tests run several drivers on one
// parent).
std::atomic<std::uint64_t> g_idle_seq{0};

}  // namespace

std::vector<std::string> InstanceCgroup::join_files() const {
  std::vector<std::string> out;
  // v1: the `tasks` file, which moves just the writing thread (the whole of a process that has
  // not started threads yet) without the global threadgroup lock whose RCU grace period makes a
  // `cgroup.procs` write take 7-20 ms after an idle spell (0.5 ms this way; bench/RESULTS.md).
  for (const auto& d : dirs_) out.push_back((d / (v2_ ? "cgroup.procs" : "tasks")).string());
  return out;
}

bool InstanceCgroup::oom_killed() const {
  if (dirs_.empty()) return false;
  // The count carries the kills of the group's earlier instances: compare with its value when
  // this one took the group.
  if (auto kills = keyed_value(oom_file(v2_, dirs_[0]), "oom_kill")) {
    return *kills > oom_baseline_;
  }
  // v1 before Linux 4.13 has no oom_kill count: a hit limit is the hint (reset on reuse). Not
  // used where the count exists: a reused group's leftover page cache can make an instance hit
  // its limit and reclaim, which is no OOM.
  if (v2_) return false;
  return std::stoull("0" + read_file(dirs_[0] / "memory.failcnt")) > 0;
}

void InstanceCgroup::kill_all() const {
  if (dirs_.empty()) return;
  if (v2_ && fs::exists(dirs_[0] / "cgroup.kill")) {
    write_file(dirs_[0] / "cgroup.kill", "1");
    return;
  }
  for (const auto& d : dirs_) {
    for (pid_t pid : procs(d)) ::kill(pid, SIGKILL);
  }
}

void InstanceCgroup::remove() {
  kill_and_remove(dirs_);
  dirs_.clear();
}

CgroupManager::CgroupManager(std::string parent, const fs::path& root) {
  while (!parent.empty() && parent.front() == '/') parent.erase(0, 1);
  if (parent.empty()) parent = "blixard";
  struct statfs st {};
  std::error_code ec;
  if (::statfs(root.c_str(), &st) == 0 && st.f_type == k_cgroup2_magic) {
    // Pure v2: enable memory and pids for the children along the way down to the parent.
    const std::string controllers = read_file(root / "cgroup.controllers");
    if (controllers.find("memory") == std::string::npos) {
      reason_ = "cgroup v2 without the memory controller";
      return;
    }
    const bool pids = controllers.find("pids") != std::string::npos;
    const std::string enable = pids ? "+memory +pids" : "+memory";
    fs::path dir = root;
    write_file(dir / "cgroup.subtree_control", enable);
    for (const auto& part : fs::path(parent)) {
      dir /= part;
      fs::create_directory(dir, ec);
      if (ec) {
        reason_ = "cannot create " + dir.string() + ": " + ec.message();
        return;
      }
      if (!write_file(dir / "cgroup.subtree_control", enable, &reason_)) return;
    }
    memory_parent_ = dir;
    // The parent is not the root, so it has the files its children get.
    has_swap_limit_ = fs::exists(dir / "memory.swap.max");
    has_pids_ = pids && fs::exists(dir / "pids.max");
    mode_ = Mode::v2;
  } else if (fs::exists(root / "memory" / "memory.limit_in_bytes")) {
    memory_parent_ = root / "memory" / parent;
    fs::create_directories(memory_parent_, ec);
    if (ec) {
      reason_ = "cannot create " + memory_parent_.string() + ": " + ec.message();
      return;
    }
    if (fs::exists(root / "pids" / "cgroup.procs")) {
      pids_parent_ = root / "pids" / parent;
      fs::create_directories(pids_parent_, ec);
      if (ec) pids_parent_.clear();
    }
    has_swap_limit_ = fs::exists(memory_parent_ / "memory.memsw.limit_in_bytes");
    mode_ = Mode::v1;
    // v1 only: cgroupfs v2 has no rename (EPERM), and an instance's group must carry its name.
    reuse_ = true;
  } else {
    reason_ = "no cgroup memory controller under " + root.string();
    return;
  }
  adopt_stale();
  if (reuse_) precreate();
}

CgroupManager::~CgroupManager() { close(); }

std::unique_ptr<InstanceCgroup> CgroupManager::existing(const std::string& name,
                                                        std::uint64_t oom_baseline) {
  if (mode_ == Mode::none || name.empty() || name.find('/') != std::string::npos ||
      name.rfind("idle-", 0) == 0 || name == "." || name == "..") {
    return nullptr;
  }
  auto dirs = dirs_named(name);
  for (const auto& d : dirs) {
    struct stat st {};
    if (::lstat(d.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return nullptr;
  }
  return std::make_unique<InstanceCgroup>(mode_ == Mode::v2, std::move(dirs), oom_baseline);
}

std::vector<std::string> CgroupManager::names(const std::string& prefix) const {
  std::vector<std::string> out;
  if (mode_ == Mode::none) return out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(memory_parent_, ec)) {
    std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) == 0 && entry.is_directory(ec)) out.push_back(std::move(name));
  }
  return out;
}

std::vector<fs::path> CgroupManager::dirs_named(const std::string& name) const {
  std::vector<fs::path> dirs{memory_parent_ / name};
  if (!pids_parent_.empty()) dirs.push_back(pids_parent_ / name);
  return dirs;
}

std::string CgroupManager::idle_name() {
  return "idle-" + self_pid() + "-" + self_start_time() + "." + std::to_string(++g_idle_seq);
}

std::unique_ptr<InstanceCgroup> CgroupManager::create(const std::string& name,
                                                      std::uint64_t memory_bytes,
                                                      std::uint64_t pids_max, std::string* why) {
  std::string local_why;
  if (why == nullptr) why = &local_why;
  if (mode_ == Mode::none) {
    *why = reason_;
    return nullptr;
  }
  const std::vector<fs::path> dirs = dirs_named(name);
  const CgroupLimits want{memory_bytes, pids_max};
  for (;;) {
    Idle idle;
    {
      std::lock_guard lock(mutex_);
      if (idle_.empty()) break;
      idle = std::move(idle_.back());
      idle_.pop_back();
    }
    // In-use groups carry the instance's name (leak checks and operators look for it).
    std::size_t renamed = 0;
    while (renamed < dirs.size() &&
           ::rename(idle.dirs[renamed].c_str(), dirs[renamed].c_str()) == 0) {
      ++renamed;
    }
    if (renamed < dirs.size()) {
      // Taken by another process's adoption (ENOENT), or `name` exists (EEXIST): drop this one.
      const int err = errno;
      for (std::size_t i = 0; i < dirs.size(); ++i) {
        ::rmdir(i < renamed ? dirs[i].c_str() : idle.dirs[i].c_str());
      }
      if (err == EEXIST || err == ENOTEMPTY) break;
      continue;
    }
    auto cg = std::make_unique<InstanceCgroup>(mode_ == Mode::v2, dirs, idle.oom_baseline);
    cg->limits_ = want;
    if (set_limits(dirs, idle.limits, want, true, why)) return cg;
    // v1 could not reclaim the group's leftover page cache below the new limit: a fresh group.
    break;  // `cg` removes itself
  }
  for (const auto& d : dirs) {
    if (::mkdir(d.c_str(), 0755) != 0 && errno != EEXIST) {
      *why = "cannot create " + d.string() + ": " + std::strerror(errno);
      for (const auto& made : dirs) ::rmdir(made.c_str());
      return nullptr;
    }
  }
  auto cg = std::make_unique<InstanceCgroup>(mode_ == Mode::v2, dirs);
  cg->limits_ = want;
  if (!set_limits(dirs, CgroupLimits{}, want, false, why)) return nullptr;  // `cg` removes it
  return cg;
}

bool CgroupManager::set_limits(const std::vector<fs::path>& dirs, const CgroupLimits& now,
                               const CgroupLimits& want, bool reused, std::string* why) const {
  const fs::path& mem = dirs[0];
  if (mode_ == Mode::v2) {  // always a new group (see reuse_)
    if (want.memory_bytes != 0) {
      if (!write_file(mem / "memory.max", std::to_string(want.memory_bytes), why)) return false;
      if (has_swap_limit_) write_file(mem / "memory.swap.max", "0");
    }
    if (want.pids_max != 0 && has_pids_) {
      return write_file(mem / "pids.max", std::to_string(want.pids_max), why);
    }
    return true;
  }
  if (want.memory_bytes != now.memory_bytes) {
    const std::string limit = want.memory_bytes == 0 ? "-1" : std::to_string(want.memory_bytes);
    auto set_memory = [&] {
      int err = 0;
      if (write_file(mem / "memory.limit_in_bytes", limit, why, &err)) return true;
      if (err != EBUSY || !reused) return false;
      // Page cache of earlier instances over the new limit that reclaim did not drop: an empty
      // group can have it all reclaimed at once.
      write_file(mem / "memory.force_empty", "0");
      return write_file(mem / "memory.limit_in_bytes", limit, why);
    };
    // v1 keeps memory.limit_in_bytes <= memory.memsw.limit_in_bytes: raise memsw first, lower it
    // last. Swap would let the group outgrow its limit instead of being OOM-killed.
    const bool raise =
        want.memory_bytes == 0 || (now.memory_bytes != 0 && want.memory_bytes > now.memory_bytes);
    if (raise) {
      if (has_swap_limit_ && !write_file(mem / "memory.memsw.limit_in_bytes", limit, why)) {
        return false;
      }
      if (!set_memory()) return false;
    } else {
      if (!set_memory()) return false;
      if (has_swap_limit_) write_file(mem / "memory.memsw.limit_in_bytes", limit);
    }
  }
  if (want.pids_max != now.pids_max && dirs.size() > 1) {
    return write_file(dirs[1] / "pids.max",
                      want.pids_max == 0 ? "max" : std::to_string(want.pids_max), why);
  }
  return true;
}

void CgroupManager::release(std::unique_ptr<InstanceCgroup> group) {
  if (!group || group->dirs_.empty()) return;
  if (!reuse_) return group->remove();
  std::vector<fs::path> dirs = std::move(group->dirs_);
  group->dirs_.clear();  // its destructor has nothing left to remove
  park(std::move(dirs), group->limits_);
}

void CgroupManager::park(std::vector<fs::path> dirs, std::optional<CgroupLimits> limits) {
  // A process still inside (a plain-process fallback's stray child, something stuck in the
  // kernel) must not end up in another instance's group.
  bool keep = all_empty(dirs);
  if (keep) {
    std::lock_guard lock(mutex_);
    keep = !closed_ && idle_.size() < k_max_idle;
  }
  // The limits stay (set_limits changes only what differs); what the next instance could misread
  // as its own goes: the failure count (the OOM hint of kernels without oom_kill) and the peak.
  // (v1 only: see reuse_.)
  const fs::path& mem = dirs[0];
  Idle idle;
  if (keep && limits) {
    idle.limits = *limits;
  } else if (keep) {
    // Unknown limits: none, as a new group has (memsw first: it may not go below the limit).
    keep = (!has_swap_limit_ || write_file(mem / "memory.memsw.limit_in_bytes", "-1")) &&
           write_file(mem / "memory.limit_in_bytes", "-1") &&
           (dirs.size() < 2 || write_file(dirs[1] / "pids.max", "max"));
  }
  if (keep) {
    write_file(mem / "memory.failcnt", "0");
    write_file(mem / "memory.max_usage_in_bytes", "0");
    // The group is empty, so its OOM-kill count stays put until the next instance takes it.
    idle.oom_baseline = keyed_value(oom_file(false, mem), "oom_kill").value_or(0);
    idle.dirs = dirs_named(idle_name());
    std::size_t renamed = 0;
    while (renamed < dirs.size() &&
           ::rename(dirs[renamed].c_str(), idle.dirs[renamed].c_str()) == 0) {
      ++renamed;
    }
    for (std::size_t i = 0; i < renamed; ++i) dirs[i] = idle.dirs[i];
    keep = renamed == dirs.size();
  }
  if (keep) {
    std::lock_guard lock(mutex_);
    if (!closed_ && idle_.size() < k_max_idle) {
      idle_.push_back(std::move(idle));
      return;
    }
  }
  kill_and_remove(dirs);
}

void CgroupManager::precreate() {
  for (std::size_t i = idle_count(); i < k_precreated; ++i) {  // adopted groups count
    Idle idle;
    idle.dirs = dirs_named(idle_name());
    std::size_t made = 0;
    while (made < idle.dirs.size() && ::mkdir(idle.dirs[made].c_str(), 0755) == 0) ++made;
    if (made < idle.dirs.size()) {
      for (std::size_t j = 0; j < made; ++j) ::rmdir(idle.dirs[j].c_str());
      return;  // create() will say why, when an instance needs a group
    }
    std::lock_guard lock(mutex_);
    idle_.push_back(std::move(idle));
  }
}

void CgroupManager::adopt_stale() {
  // Only groups whose process is gone: another live manager (of this process or another agent on
  // the same parent) owns the rest.
  auto stale = [](const std::string& name) {
    const auto idle = parse_idle(name);
    if (!idle) return false;
    if (idle->pid == self_pid()) return idle->start != self_start_time();
    return start_time(idle->pid) != idle->start;
  };
  std::error_code ec;
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(memory_parent_, ec)) {
    const std::string name = entry.path().filename().string();
    if (stale(name)) names.push_back(name);
  }
  for (const auto& name : names) {
    // Renamed first: of several processes adopting at once, one wins each group.
    const std::vector<fs::path> old_dirs = dirs_named(name);
    if (!all_empty({old_dirs[0]})) continue;  // not ours to kill what someone put there
    const std::vector<fs::path> dirs = dirs_named(idle_name());
    if (::rename(old_dirs[0].c_str(), dirs[0].c_str()) != 0) continue;
    if (dirs.size() > 1 && ::rename(old_dirs[1].c_str(), dirs[1].c_str()) != 0 &&
        ::mkdir(dirs[1].c_str(), 0755) != 0) {
      ::rmdir(dirs[0].c_str());
      continue;
    }
    park(dirs, std::nullopt);
  }
  // Instance groups ("<function>-PID-N") of an agent that died (kill -9): its instances died with
  // it (their PID namespaces' init got SIGKILL), their groups stay. Removed, and anything left in
  // them killed.
  auto dead_instance = [this](const std::string& name) {
    if (name.rfind(k_kept_prefix, 0) == 0) return false;
    const auto last = name.rfind('-');
    if (last == std::string::npos || last == 0 || name.rfind("idle-", 0) == 0) return false;
    const auto before = name.rfind('-', last - 1);
    if (before == std::string::npos) return false;
    const std::string pid = name.substr(before + 1, last - before - 1);
    const std::string seq = name.substr(last + 1);
    auto digits = [](const std::string& t) {
      return !t.empty() && t.find_first_not_of("0123456789") == std::string::npos;
    };
    return digits(pid) && digits(seq) && pid != self_pid() && start_time(pid).empty();
  };
  names.clear();
  for (const auto& entry : fs::directory_iterator(memory_parent_, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && dead_instance(name)) names.push_back(name);
  }
  for (const auto& name : names) kill_and_remove(dirs_named(name));
  // Pids groups whose memory group is gone.
  if (pids_parent_.empty()) return;
  std::vector<fs::path> orphans;
  for (const auto& entry : fs::directory_iterator(pids_parent_, ec)) {
    const std::string name = entry.path().filename().string();
    if (stale(name) || (entry.is_directory() && dead_instance(name)))
      orphans.push_back(entry.path());
  }
  for (const auto& p : orphans) ::rmdir(p.c_str());
}

void CgroupManager::close() {
  std::vector<Idle> idle;
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
    idle.swap(idle_);
  }
  for (const auto& g : idle) kill_and_remove(g.dirs);
}

std::size_t CgroupManager::idle_count() const {
  std::lock_guard lock(mutex_);
  return idle_.size();
}

}  // namespace blixard::runtime
