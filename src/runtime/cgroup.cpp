// Per-instance cgroups (see cgroup.hpp).
#include "runtime/cgroup.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace blixard::runtime {
namespace fs = std::filesystem;
namespace {

constexpr long k_cgroup2_magic = 0x63677270;

bool write_file(const fs::path& path, const std::string& text, std::string* why = nullptr) {
  std::ofstream out(path);
  if (out) out << text << std::flush;
  if (!out) {
    if (why != nullptr) *why = "writing " + path.string() + ": " + std::strerror(errno);
    return false;
  }
  return true;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The value of "key N" in a flat-keyed file (memory.events, memory.oom_control).
std::uint64_t keyed_value(const fs::path& path, const std::string& key) {
  std::istringstream in(read_file(path));
  std::string k;
  std::uint64_t v = 0;
  while (in >> k >> v) {
    if (k == key) return v;
  }
  return 0;
}

std::vector<pid_t> procs(const fs::path& dir) {
  std::istringstream in(read_file(dir / "cgroup.procs"));
  std::vector<pid_t> out;
  for (pid_t pid; in >> pid;) out.push_back(pid);
  return out;
}

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
  if (v2_) return keyed_value(dirs_[0] / "memory.events", "oom_kill") > 0;
  // v1: oom_kill is reported since Linux 4.13; a hit limit is the older hint.
  if (keyed_value(dirs_[0] / "memory.oom_control", "oom_kill") > 0) return true;
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
  for (auto it = dirs_.rbegin(); it != dirs_.rend(); ++it) {
    // A killed process leaves its cgroup a moment after it is reaped: retry briefly. This is the
    // plain-process fallback's path; with a PID namespace the group is empty once init is reaped.
    for (int attempt = 0; attempt < 100; ++attempt) {
      if (::rmdir(it->c_str()) == 0 || errno == ENOENT) break;
      if (errno != EBUSY) break;
      for (pid_t pid : procs(*it)) ::kill(pid, SIGKILL);
      ::poll(nullptr, 0, 2);
    }
  }
  dirs_.clear();
}

CgroupManager::CgroupManager(std::string parent, fs::path root) {
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
    mode_ = Mode::v2;
    return;
  }
  if (fs::exists(root / "memory" / "memory.limit_in_bytes")) {
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
    mode_ = Mode::v1;
    return;
  }
  reason_ = "no cgroup memory controller under " + root.string();
}

std::unique_ptr<InstanceCgroup> CgroupManager::create(const std::string& name,
                                                      std::uint64_t memory_bytes,
                                                      std::uint64_t pids_max,
                                                      std::string* why) const {
  std::string local_why;
  if (why == nullptr) why = &local_why;
  if (mode_ == Mode::none) {
    *why = reason_;
    return nullptr;
  }
  std::vector<fs::path> dirs{memory_parent_ / name};
  if (!pids_parent_.empty()) dirs.push_back(pids_parent_ / name);
  for (const auto& d : dirs) {
    if (::mkdir(d.c_str(), 0755) != 0 && errno != EEXIST) {
      *why = "cannot create " + d.string() + ": " + std::strerror(errno);
      for (const auto& made : dirs) ::rmdir(made.c_str());
      return nullptr;
    }
  }
  auto cg = std::make_unique<InstanceCgroup>(mode_ == Mode::v2, dirs);
  const fs::path& mem = dirs[0];
  bool ok = true;
  if (mode_ == Mode::v2) {
    if (memory_bytes != 0) {
      ok = write_file(mem / "memory.max", std::to_string(memory_bytes), why);
      if (ok && fs::exists(mem / "memory.swap.max")) write_file(mem / "memory.swap.max", "0");
    }
    if (ok && pids_max != 0 && fs::exists(mem / "pids.max")) {
      ok = write_file(mem / "pids.max", std::to_string(pids_max), why);
    }
  } else {
    if (memory_bytes != 0) {
      ok = write_file(mem / "memory.limit_in_bytes", std::to_string(memory_bytes), why);
      // Swap would let the group outgrow its limit instead of being OOM-killed.
      if (ok && fs::exists(mem / "memory.memsw.limit_in_bytes")) {
        write_file(mem / "memory.memsw.limit_in_bytes", std::to_string(memory_bytes));
      }
    }
    if (ok && pids_max != 0 && dirs.size() > 1) {
      ok = write_file(dirs[1] / "pids.max", std::to_string(pids_max), why);
    }
  }
  if (!ok) return nullptr;  // the destructor removes the directories
  return cg;
}

}  // namespace blixard::runtime
