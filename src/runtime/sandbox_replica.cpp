// VM replicas as sandboxed processes (see sandbox_replica.hpp).
#include "runtime/sandbox_replica.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "blixard/error.hpp"
#include "common/health_check.hpp"
#include "net/links.hpp"
#include "runtime/console.hpp"
#include "runtime/kept_record.hpp"
#include "runtime/port_forward.hpp"
#include "runtime/process.hpp"
#include "runtime/replica_network.hpp"
#include "runtime/spawn.hpp"
#include "runtime/volume.hpp"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

namespace blixard::runtime {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr std::uint64_t k_replica_pids = 1024;
constexpr long k_nobody = 65534;
constexpr std::uint64_t k_max_scratch = 256ULL << 20;
constexpr milliseconds k_ready_poll{20};
constexpr milliseconds k_check_timeout{1000};

// A console stream of a replica that may outlive its agent (SandboxReplicaContext::consoles): a
// FIFO the replica holds open for reading and writing (as containerd's shim holds its FIFOs), so
// that it never meets a pipe without a reader (SIGPIPE) while no agent reads, and what it writes
// meanwhile waits in the pipe (a full pipe blocks it, as a slow agent always did) for the next
// agent, which opens the FIFO again. No file it could grow or forge: a FIFO holds no data on disk.
struct ConsoleFifo {
  std::filesystem::path path;
  UniqueFd fd;  // the agent's read end, non-blocking
  std::string partial;
};

constexpr int k_console_pipe = 1 << 20;  // its pipe's capacity: a restart's worth of lines

// Opens a console FIFO an earlier agent made, to read on. Only the agent's own FIFO (the
// directory is its only; the replica holds the pipe, never a path to it).
UniqueFd open_kept_console(const std::filesystem::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC));
  struct stat st {};
  if (fd.get() < 0 || ::fstat(fd.get(), &st) != 0 || !S_ISFIFO(st.st_mode) ||
      st.st_uid != ::geteuid() || (st.st_mode & 077) != 0) {
    throw Error(errc::unavailable, "its console " + path.string() + " is not the agent's FIFO");
  }
  return fd;
}

// Whether process `pid` is in a cgroup named `name` (a line of /proc/PID/cgroup ending so).
bool in_cgroup(int pid, const std::string& name) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cgroup");
  const std::string tail = "/" + name;
  for (std::string line; std::getline(in, line);) {
    if (line.size() >= tail.size() &&
        line.compare(line.size() - tail.size(), tail.size(), tail) == 0) {
      return true;
    }
  }
  return false;
}

// The process a record names, held as a pidfd: opened first, checked second (its start time, its
// cgroup), and still alive third, since a pid checked and then opened could name another
// process by then, and one that ended meanwhile may have freed its pid for another. An invalid
// fd, and why, when the pid is not (or no longer) the record's process.
UniqueFd hold_kept_process(const v1::KeptReplica& kept, std::string* why) {
  const int pid = kept.pid();
  UniqueFd fd;
  if (pid > 1) fd.reset(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (fd.get() < 0) {
    *why = "its process " + std::to_string(pid) + " is gone";
    return fd;
  }
  std::string other;
  if (const auto started = process_start_time(pid);
      kept.start_time() == 0 || started != kept.start_time()) {
    other = "started at " + std::to_string(started) + ", not " + std::to_string(kept.start_time());
  } else if (!kept.cgroup().empty() && !in_cgroup(pid, kept.cgroup())) {
    other = "not in cgroup " + kept.cgroup();
  } else if (::syscall(SYS_pidfd_send_signal, fd.get(), 0, nullptr, 0) != 0) {
    other = "ended meanwhile";
  }
  if (!other.empty()) {
    *why = "pid " + std::to_string(pid) + " is another process now (" + other + ")";
    fd.reset();
  }
  return fd;
}

// Whether process `pid` has a handler for `sig` (SigCgt in its status).
bool catches(pid_t pid, int sig) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("SigCgt:", 0) != 0) continue;
    const std::uint64_t mask = std::stoull(line.substr(7), nullptr, 16);
    return (mask >> (sig - 1) & 1U) != 0;
  }
  return true;  // unknown: ask politely
}

// The directories a program needs beside the system's: its own, and its prefix (a pyenv or venv
// interpreter lives outside /usr).
std::vector<std::string> program_dirs(const fs::path& program) {
  std::vector<std::string> out{program.parent_path().string()};
  const fs::path real(resolved_path(program.string()));
  out.push_back(real.parent_path().filename() == "bin" ? real.parent_path().parent_path().string()
                                                       : real.parent_path().string());
  return out;
}

class SandboxReplica final : public Replica, public std::enable_shared_from_this<SandboxReplica> {
 public:
  SandboxReplica(ReplicaOptions options, SandboxReplicaContext context)
      : options_(std::move(options)), context_(std::move(context)) {}
  ~SandboxReplica() override {
    // A replica left running keeps it: its root is mounted on it in its own namespace.
    if (left_) return;
    std::error_code ec;
    fs::remove(context_.root, ec);
  }

  const std::string& name() const override { return options_.name; }
  bool alive() const override {
    std::lock_guard lock(mutex_);
    return state_ == State::ready && !kill_requested_ && !exiting_;
  }
  std::map<std::uint32_t, std::uint32_t> ports() const override { return ports_; }
  std::chrono::microseconds start_duration() const override { return started_in_; }
  int fence_pid() const override {
    std::lock_guard lock(mutex_);
    return state_ == State::exited ? 0 : pid_;
  }
  bool outlives_agent() const override {
    std::lock_guard lock(mutex_);
    return keep_ && state_ == State::ready && !primary();
  }
  void adopted(std::int64_t epoch) override {
    {
      std::lock_guard lock(mutex_);
      if (state_ != State::ready) return;
      options_.epoch = epoch;
    }
    keep_record(!primary());
  }
  // leave_sandbox_replica().
  bool leave() {
    {
      std::lock_guard lock(mutex_);
      if (!keep_ || state_ != State::ready || exiting_ || kill_requested_ || leaving_ ||
          primary()) {
        return false;
      }
      leaving_ = true;
    }
    const std::uint64_t one = 1;
    if (::write(wake_.get(), &one, sizeof one) != sizeof one) return false;
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return state_ == State::exited; });
    return true;
  }
  void take_back(const v1::KeptReplica& kept);
  // take_back(), with context.done run here when it fails (as start() does).
  void adopt(const v1::KeptReplica& kept) {
    try {
      take_back(kept);
    } catch (...) {
      if (!thread_started_ && context_.done) context_.done();
      throw;
    }
  }

  void stop(milliseconds grace) override {
    {
      std::lock_guard lock(mutex_);
      if (state_ == State::exited) return;
      requested_ = true;
    }
    // As PID 1 of its namespace it ignores a SIGTERM it does not catch, where any other process
    // would die of it: then SIGKILL is the same ending, without waiting out the grace.
    signal(catches(pid_, SIGTERM) ? SIGTERM : SIGKILL);
    std::unique_lock lock(mutex_);
    if (!changed_.wait_for(lock, grace, [&] { return state_ == State::exited; })) {
      lock.unlock();
      kill();
      lock.lock();
      changed_.wait(lock, [&] { return state_ == State::exited; });
    }
  }

  void kill() override {
    {
      std::lock_guard lock(mutex_);
      if (state_ == State::exited) return;
      requested_ = kill_requested_ = true;
    }
    signal(SIGKILL);
    std::lock_guard lock(mutex_);  // the replica's thread releases the cgroup under it
    if (cgroup_) cgroup_->kill_all();
  }

  // Spawns, starts the thread, waits until ready. context.done runs once either way: from the
  // thread, or here when it fails before the thread starts.
  void start() {
    keep_ = !context_.kept_dir.empty();
    try {
      launch();
    } catch (...) {
      if (!thread_started_ && context_.done) context_.done();
      throw;
    }
  }

 private:
  enum class State { starting, ready, exited };

  void signal(int sig) const { ::syscall(SYS_pidfd_send_signal, pidfd_.get(), sig, nullptr, 0); }
  void launch();
  void run();
  // Keepable: reads the console FIFOs until the process ends (false) or the replica is left for
  // the next agent (true).
  bool watch_console();
  // Reads what the FIFO holds; false at its end (every writer gone).
  bool drain(std::size_t which);
  // Its thread's end when it is left running (leave()).
  void left();
  // `adoptable`: ready and no primary (KeptReplica.adoptable).
  void keep_record(bool adoptable) const;
  // Started under its set's fencing epoch: never kept (its set fails over at once, and the fence
  // watchdog kills it should the agent die).
  bool primary() const { return options_.volume && options_.volume->writer_epoch() > 0; }
  std::string cgroup_name() const {
    return context_.cgroup_name.empty() ? context_.root.filename().string() : context_.cgroup_name;
  }
  fs::path record_path() const { return kept_record_path(context_.kept_dir, options_.name); }
  void remove_kept_files() const {
    std::error_code ignored;
    fs::remove(record_path(), ignored);
    for (const auto& f : files_) fs::remove(f.path, ignored);
  }
  void line(const std::string& stream, std::string text);
  // The spec's readiness (proto Readiness), in words and checked once.
  std::string readiness() const;
  bool ready_now();

  ReplicaOptions options_;
  SandboxReplicaContext context_;
  std::map<std::uint32_t, std::uint32_t> ports_;
  std::string address_;                       // on its network, if it has one
  std::unique_ptr<PortForwarder> forwarder_;  // its host ports, when on a network
  std::unique_ptr<NetworkMembership> network_;
  std::unique_ptr<InstanceCgroup> cgroup_;
  UniqueFd pidfd_, out_, err_;
  pid_t pid_ = -1;
  std::chrono::microseconds started_in_{0};
  bool thread_started_ = false;
  bool keep_ = false;        // it may outlive its agent (SandboxReplicaContext::kept_dir)
  bool taken_back_ = false;  // from an earlier agent: not this process's child
  std::uint64_t start_time_ = 0;
  std::array<ConsoleFifo, 2> files_;  // keepable: its stdout and stderr
  UniqueFd wake_;                     // keepable: leave() wakes its thread
  std::atomic<bool> left_{false};

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  State state_ = State::starting;
  bool requested_ = false;
  bool kill_requested_ = false;
  bool marker_seen_ = false;
  bool exiting_ = false;  // its process is gone, its exit being reported
  bool leaving_ = false;  // left running for the next agent (leave())
  std::string exit_reason_;
  ConsoleTail tail_;
};

void SandboxReplica::line(const std::string& stream, std::string text) {
  const auto& marker = options_.spec.readiness().console_marker();
  const bool is_marker = !marker.empty() && text.find(marker) != std::string::npos;
  tail_.add(stream, text);
  // The line goes out before the replica is ready by it: its log never trails its readiness.
  if (options_.on_log) options_.on_log(options_.name, stream, std::move(text));
  if (is_marker) {
    std::lock_guard lock(mutex_);
    marker_seen_ = true;
    changed_.notify_all();
  }
}

std::string SandboxReplica::readiness() const {
  const auto& r = options_.spec.readiness();
  if (!r.console_marker().empty()) return "a console line with \"" + r.console_marker() + "\"";
  if (ports_.empty()) return "at once";
  const std::uint32_t declared = !r.http_path().empty()
                                     ? (r.http_port() != 0 ? r.http_port() : ports_.begin()->first)
                                 : r.tcp_port() != 0 ? r.tcp_port()
                                                     : ports_.begin()->first;
  const std::string where = "port " + std::to_string(declared) + " (host port " +
                            std::to_string(ports_.at(declared)) + ")";
  return !r.http_path().empty() ? "GET " + r.http_path() + " on " + where + " answering 2xx/3xx"
                                : where + " accepting connections";
}

bool SandboxReplica::ready_now() {
  const auto& r = options_.spec.readiness();
  if (!r.console_marker().empty()) {
    std::lock_guard lock(mutex_);
    return marker_seen_;
  }
  if (ports_.empty()) return true;
  // On a network: the replica itself, not the relay in front of it (which accepts regardless).
  const auto port = [&](std::uint32_t declared) {
    return address_.empty() ? ports_.at(declared) : declared;
  };
  if (!r.http_path().empty()) {
    const std::uint32_t declared = r.http_port() != 0 ? r.http_port() : ports_.begin()->first;
    return http_ok(address_, port(declared), r.http_path(), k_check_timeout);
  }
  const std::uint32_t declared = r.tcp_port() != 0 ? r.tcp_port() : ports_.begin()->first;
  return tcp_accepts(address_, port(declared), k_check_timeout);
}

void SandboxReplica::launch() {
  const auto& spec = options_.spec;
  if (!spec.untranslated().empty() && spec.command_size() == 0) {
    throw Error(errc::invalid_spec, spec.untranslated(), "config");
  }
  if (spec.command_size() == 0 || spec.command(0).empty()) {
    throw Error(errc::invalid_spec,
                "the sandbox driver runs a VM's `command`, and " + options_.vm + " gives none",
                "command");
  }
  if (spec.files_size() > 0) {
    throw Error(errc::invalid_spec,
                "vm " + options_.vm +
                    " runs services from its config, which need a real guest: start the agent "
                    "with --vm-driver libvirt (or set `driver: libvirt`)",
                "files");
  }
  std::vector<std::string> argv(spec.command().begin(), spec.command().end());
  fs::path program = argv[0];
  if (!program.is_absolute()) {
    auto found = find_executable(argv[0]);
    if (!found) {
      throw Error(errc::invalid_spec, "cannot find the command '" + argv[0] + "' on PATH",
                  "command");
    }
    program = *found;
  } else if (::access(program.c_str(), X_OK) != 0) {
    throw Error(errc::invalid_spec, "the command " + program.string() + " is not executable here",
                "command");
  }
  argv[0] = program.string();

  std::vector<std::string> env{
      "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      "HOME=/tmp",
      "TMPDIR=/tmp",
      "LANG=C.UTF-8",
      "BLIXARD_VM=" + options_.vm,
      "BLIXARD_REPLICA=" + (options_.slot.empty() ? options_.name : options_.slot)};
  for (const auto port : spec.ports()) {
    const std::uint32_t host = free_port();
    // Where it listens: the host port on the host's network; on a network of its own, the
    // declared port itself (the host port is relayed to it), as in a guest.
    const std::uint32_t listen = options_.network ? port : host;
    if (ports_.empty()) env.push_back("PORT=" + std::to_string(listen));
    ports_[port] = host;
    env.push_back("PORT_" + std::to_string(port) + "=");
    env.back() += std::to_string(listen);
  }
  for (const auto& [key, value] : spec.env())
    env.push_back(std::string(key).append("=").append(value));
  std::string bridge;
  if (options_.network) {
    address_ = replica_address(*options_.network).first.to_string();
    network_ = std::make_unique<NetworkMembership>(*options_.network);
    bridge = network_->bridge();
    env.push_back("BLIXARD_ADDRESS=" + address_);
  }
  std::string volume_dir;
  if (options_.volume) {
    volume_dir = prepare_volume_directory(*options_.volume, context_.uid, context_.gid).string();
    env.push_back("BLIXARD_VOLUME=" + options_.volume->mount_point());
  }

  std::pair<UniqueFd, UniqueFd> out_pipe, err_pipe;
  if (keep_) {
    // FIFOs it holds both ends of, not pipes: a pipe's reader ends with the agent, and the replica
    // would die of SIGPIPE (ConsoleFifo).
    if (options_.name.empty() || options_.name.find('/') != std::string::npos ||
        options_.name.front() == '.') {
      throw Error(errc::invalid_spec, "replica name " + options_.name + " is no file name");
    }
    wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    for (std::size_t i = 0; i < 2; ++i) {
      auto& f = files_[i];
      f.path = context_.consoles / (options_.name + (i == 0 ? ".out" : ".err"));
      ::unlink(f.path.c_str());  // an earlier start's that never got ready
      UniqueFd write_end;
      if (::mkfifo(f.path.c_str(), 0600) == 0) {
        write_end.reset(::open(f.path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
        f.fd.reset(::open(f.path.c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC));
      }
      if (write_end.get() >= 0) ::fcntl(write_end.get(), F_SETPIPE_SZ, k_console_pipe);
      if (write_end.get() < 0 || f.fd.get() < 0 || wake_.get() < 0) {
        throw Error(errc::unavailable, "cannot make the console file " + f.path.string() + ": " +
                                           std::strerror(errno));
      }
      (i == 0 ? out_pipe : err_pipe).second = std::move(write_end);
    }
  } else {
    out_pipe = make_pipe();
    err_pipe = make_pipe();
  }
  // (Named, not structured bindings: the spawning thread below captures the write ends.)
  UniqueFd& out_read = out_pipe.first;
  UniqueFd& out_write = out_pipe.second;
  UniqueFd& err_read = err_pipe.first;
  UniqueFd& err_write = err_pipe.second;
  UniqueFd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  SpawnRequest req;
  req.argv = argv;
  req.env = env;
  req.cwd = "/tmp";
  req.request_fd = null.get();
  req.response_fd = null.get();
  req.stdout_fd = out_write.get();
  req.stderr_fd = err_write.get();
  req.namespaces = context_.namespaces;
  // On a network: a namespace of its own there (its host ports are relayed into it). Otherwise
  // the host's: its ports are host ports.
  req.new_network = options_.network.has_value();
  req.seccomp = context_.seccomp;
  Confinement& confine = req.confinement;
  confine.root = context_.root.string();
  confine.keep = program_dirs(program);
  confine.volume_dir = volume_dir;
  confine.low_ports = options_.network.has_value();
  if (options_.volume) confine.volume_mount = options_.volume->mount_point();
  const std::uint64_t memory_bytes = spec.memory_mib() << 20;
  confine.scratch_bytes =
      std::min<std::uint64_t>(k_max_scratch, memory_bytes != 0 ? memory_bytes : k_max_scratch);
  confine.uid = context_.uid;
  confine.gid = context_.gid;
  // Nobody in its namespace, as a guest's workload is (PostgreSQL refuses to run as root).
  confine.inner_id = k_nobody;
  // A keepable replica outlives the agent's thread (its primary, or one not ready yet, is
  // killed still: by the fence watchdog, or by the next agent's adopt()).
  confine.die_with_agent = !keep_;
  if (context_.cgroups != nullptr) {
    cgroup_ = context_.cgroups->create(cgroup_name(), memory_bytes, k_replica_pids);
    if (cgroup_) confine.cgroup_join = cgroup_->join_files();
  }
  std::error_code ec;
  fs::create_directories(context_.root, ec);
  const auto began = Clock::now();
  // The replica's own thread spawns it, reads its console and reaps it: PR_SET_PDEATHSIG follows
  // the spawning thread, so the replica must not outlive it (a caller's thread may end at once).
  out_ = std::move(out_read);
  err_ = std::move(err_read);
  std::exception_ptr spawn_error;
  bool spawned = false;
  std::thread([self = shared_from_this(), &req, &out_write, &err_write, &spawn_error, &spawned] {
    bool ok = true;
    try {
      Spawned child = spawn_sandboxed(req);
      self->pid_ = child.pid;
      self->pidfd_.reset(child.pidfd);
      // (Its child, not reaped yet: the pid is its.)
      if (self->keep_) self->start_time_ = process_start_time(child.pid);
    } catch (...) {
      spawn_error = std::current_exception();
      ok = false;
    }
    out_write.reset();
    err_write.reset();
    {
      // The caller's stack (req, spawn_error) is not touched after this.
      std::lock_guard lock(self->mutex_);
      spawned = true;
      self->changed_.notify_all();
    }
    if (ok) self->run();
  }).detach();
  {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return spawned; });
  }
  if (spawn_error) {
    if (cgroup_ && context_.cgroups != nullptr) context_.cgroups->release(std::move(cgroup_));
    std::error_code ignored;
    fs::remove(context_.root, ignored);
    remove_kept_files();
    std::rethrow_exception(spawn_error);
  }
  thread_started_ = true;
  if (keep_) {
    // From now on the next agent kills it should this one end before it is ready (no
    // PR_SET_PDEATHSIG does).
    keep_record(false);
    if (context_.spawned) context_.spawned(shared_from_this());
  }
  if (options_.network) {
    // Its interface on the network, then the host ports: set up while it starts (a workload
    // binding 0.0.0.0 at once is served; one connecting out in its first milliseconds may not be).
    try {
      const auto [address, subnet] = replica_address(*options_.network);
      UniqueFd netns(
          ::open(("/proc/" + std::to_string(pid_) + "/ns/net").c_str(), O_RDONLY | O_CLOEXEC));
      if (netns.get() < 0) throw Error(errc::unavailable, "its network namespace is gone");
      net::connect_netns(bridge, veth_name(options_.name), netns.get(), "eth0", address, subnet);
      if (!ports_.empty()) {
        auto forwarder = std::make_unique<PortForwarder>(ports_, address_);
        std::lock_guard lock(mutex_);
        if (!exiting_) forwarder_ = std::move(forwarder);
      }
    } catch (const Error& e) {
      kill();
      throw Error(e.code(), "replica " + options_.name + " cannot join network " +
                                options_.network->network() + ": " + e.what());
    }
  }

  // Ready by the spec's readiness (readiness()), within the driver's time or the spec's shorter
  // one (a rollout's healthyDeadline, control/vm_sets.cpp).
  auto ready_timeout = context_.ready_timeout;
  if (const auto& t = options_.spec.readiness().timeout(); t.seconds() > 0 || t.nanos() > 0) {
    ready_timeout =
        std::min(ready_timeout, milliseconds(t.seconds() * 1000 + t.nanos() / 1'000'000));
  }
  const auto deadline = began + ready_timeout;
  for (;;) {
    std::string exited;
    {
      std::lock_guard lock(mutex_);
      if (exiting_ || state_ == State::exited) exited = exit_reason_;
    }
    if (!exited.empty()) {
      throw Error(errc::handler_failed, "replica " + options_.name + " " + exited +
                                            " before it was ready" + tail_.describe());
    }
    if (ready_now()) break;
    if (Clock::now() >= deadline) {
      kill();
      throw Error(errc::timeout, "replica " + options_.name + " was not ready (" + readiness() +
                                     ") within " + std::to_string(ready_timeout.count()) + " ms" +
                                     tail_.describe());
    }
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, k_ready_poll, [&] { return state_ == State::exited || marker_seen_; });
  }
  started_in_ = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - began);
  std::string gone;
  {
    std::lock_guard lock(mutex_);
    // Its process may have ended since the check: then it never was ready (no exit follows).
    if (exiting_ || state_ == State::exited) {
      gone = exit_reason_;
    } else {
      state_ = State::ready;
    }
  }
  if (!gone.empty()) {
    throw Error(errc::handler_failed,
                "replica " + options_.name + " " + gone + " as it became ready" + tail_.describe());
  }
  if (keep_) keep_record(!primary());
}

bool SandboxReplica::drain(std::size_t which) {
  static const std::array<const char*, 2> streams{"stdout", "stderr"};
  auto& f = files_[which];
  if (f.fd.get() < 0) return false;
  const auto emit = [&](std::string text) {
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (text.size() > k_max_console_line) text.resize(k_max_console_line);
    line(streams[which], std::move(text));
  };
  std::array<char, 16384> buf{};
  for (;;) {
    const ssize_t n = ::read(f.fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return true;  // EAGAIN: all read for now
    if (n == 0) {
      if (!f.partial.empty()) emit(std::exchange(f.partial, {}));
      f.fd.reset();
      return false;
    }
    f.partial.append(buf.data(), static_cast<std::size_t>(n));
    std::size_t from = 0;
    for (std::size_t nl; (nl = f.partial.find('\n', from)) != std::string::npos; from = nl + 1) {
      emit(f.partial.substr(from, nl - from));
    }
    f.partial.erase(0, from);
    if (f.partial.size() > k_max_console_line) emit(std::exchange(f.partial, {}));
  }
}

bool SandboxReplica::watch_console() {
  for (;;) {
    std::array<pollfd, 4> p{{{files_[0].fd.get(), POLLIN, 0},
                             {files_[1].fd.get(), POLLIN, 0},
                             {pidfd_.get(), POLLIN, 0},
                             {wake_.get(), POLLIN, 0}}};
    if (::poll(p.data(), p.size(), -1) < 0 && errno != EINTR) return false;
    if (p[3].revents != 0) {
      std::lock_guard lock(mutex_);
      if (leaving_) return true;
    }
    bool open = false;
    for (std::size_t i = 0; i < 2; ++i) {
      open = (p[i].revents == 0 ? files_[i].fd.get() >= 0 : drain(i)) || open;
    }
    // Ended: every writer gone, or its init (its namespace's processes die with it).
    if (!open) return false;
    if (p[2].revents != 0) {
      const std::array<const char*, 2> streams{"stdout", "stderr"};
      for (std::size_t i = 0; i < 2; ++i) {
        drain(i);
        if (!files_[i].partial.empty()) line(streams[i], std::exchange(files_[i].partial, {}));
      }
      return false;
    }
  }
}

void SandboxReplica::left() {
  std::unique_ptr<PortForwarder> forwarder;
  {
    std::lock_guard lock(mutex_);
    forwarder = std::move(forwarder_);
    if (cgroup_) cgroup_->forget();  // its processes run on in it
    cgroup_.reset();
  }
  forwarder.reset();  // its host ports: the next agent listens on them
  // Its bridge stays for it: this membership is counted in this process, which is ending.
  static_cast<void>(network_.release());
  left_ = true;
  {
    std::lock_guard lock(mutex_);
    state_ = State::exited;
  }
  changed_.notify_all();
  if (context_.done) context_.done();
}

void SandboxReplica::keep_record(bool adoptable) const {
  v1::KeptReplica kept;
  {
    std::lock_guard lock(mutex_);
    kept = kept_record_of(options_);
    if (cgroup_) {
      kept.set_cgroup(cgroup_name());
      kept.set_oom_baseline(cgroup_->oom_baseline());
    }
  }
  for (const auto& [port, host] : ports_) (*kept.mutable_ports())[port] = host;
  kept.set_start_us(started_in_.count());
  kept.set_pid(pid_);
  kept.set_start_time(start_time_);
  kept.set_root(context_.root.string());
  kept.set_adoptable(adoptable);
  if (!write_kept_record(record_path(), kept) && options_.on_log) {
    options_.on_log(options_.name, "blixard",
                    std::string("blixard: cannot keep this replica's record (") +
                        std::strerror(errno) + "): an agent restarted will not take it back");
  }
}

void SandboxReplica::take_back(const v1::KeptReplica& kept) {
  keep_ = true;
  // Until it is taken back its root is none of this object's to remove (the driver removes it
  // once what runs on it is killed).
  left_ = true;
  const int pid = kept.pid();
  std::string why;
  pidfd_ = hold_kept_process(kept, &why);
  if (pidfd_.get() < 0) throw Error(errc::not_found, why);
  const std::string& cgroup = kept.cgroup();
  pid_ = pid;
  start_time_ = kept.start_time();
  taken_back_ = true;
  try {
    if (!cgroup.empty()) {
      if (context_.cgroups != nullptr)
        cgroup_ = context_.cgroups->existing(cgroup, kept.oom_baseline());
      if (!cgroup_) throw Error(errc::unavailable, "its cgroup " + cgroup + " is gone");
    }
    wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (wake_.get() < 0) throw Error(errc::unavailable, "no eventfd");
    for (std::size_t i = 0; i < 2; ++i) {
      auto& f = files_[i];
      f.path = context_.consoles / (options_.name + (i == 0 ? ".out" : ".err"));
      f.fd = open_kept_console(f.path);  // what it wrote meanwhile waits in the pipe
    }
    for (const auto& [port, host] : kept.ports()) ports_[port] = host;
    started_in_ = std::chrono::microseconds(kept.start_us());
    if (options_.network) {
      address_ = replica_address(*options_.network).first.to_string();
      network_ = std::make_unique<NetworkMembership>(*options_.network);
      // The same host ports as before (the balancer's targets): relayed again.
      if (!ports_.empty()) forwarder_ = std::make_unique<PortForwarder>(ports_, address_);
    }
  } catch (const std::exception& e) {
    signal(SIGKILL);  // it is the record's process (checked above): nothing else can reach it
    if (cgroup_) cgroup_->kill_all();
    throw Error(errc::unavailable, std::string("cannot take it back: ") + e.what());
  }
  left_ = false;
  state_ = State::ready;  // it was when its record was written; the server checks its health
  std::thread([self = shared_from_this()] { self->run(); }).detach();
  thread_started_ = true;
}

void SandboxReplica::run() {
  if (keep_) {
    if (watch_console()) {
      left();
      return;
    }
  } else {
    // Console lines until both pipes close (every process of the replica is gone or closed them).
    const std::array<const char*, 2> streams{"stdout", "stderr"};
    read_console({out_.get(), err_.get()}, [&](std::size_t which, std::string text) {
      line(streams[which], std::move(text));
    });
  }
  siginfo_t info{};
  // Taken back, it is no child of this process (unless this process started it: a test's two
  // drivers): its status went to whoever reaped it.
  bool status_known = !taken_back_;
  while (!taken_back_ &&
         ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd_.get()), &info,
                  WEXITED) != 0 &&
         errno == EINTR) {
  }
  if (taken_back_) {
    status_known = ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd_.get()), &info,
                            WEXITED | WNOHANG) == 0 &&
                   info.si_pid != 0;
  }
  bool oom = false;
  std::unique_ptr<InstanceCgroup> cgroup;
  std::unique_ptr<PortForwarder> forwarder;  // its host ports close with it
  {
    std::lock_guard lock(mutex_);  // kill() may be using it
    cgroup = std::move(cgroup_);
    forwarder = std::move(forwarder_);
  }
  forwarder.reset();
  network_.reset();  // (set before this thread started)
  if (cgroup) {
    cgroup->kill_all();  // what it left behind
    oom = cgroup->oom_killed();
    if (context_.cgroups != nullptr) context_.cgroups->release(std::move(cgroup));
  }
  ReplicaExit exit;
  exit.replica = options_.name;
  exit.oom = oom;
  exit.reason = oom ? "ran out of memory (" + std::to_string(options_.spec.memory_mib()) + " MiB)"
                : status_known
                    ? describe_exit(info)
                    : "ended (taken back from an earlier agent: its exit status is not known)";
  bool was_ready = false;
  {
    std::lock_guard lock(mutex_);
    exit.requested = requested_;
    exit_reason_ = exit.reason;
    was_ready = state_ == State::ready;
    exiting_ = true;
  }
  // Its root's mount point goes before the driver hears it is done (the driver may be destroyed
  // right after, and this object later).
  std::error_code ignored;
  fs::remove(context_.root, ignored);
  if (keep_) remove_kept_files();
  // Its exit is reported before stop() returns. A replica that never got ready was a failed
  // start: its caller got the error instead.
  if (was_ready && options_.on_exit) options_.on_exit(exit);
  {
    std::lock_guard lock(mutex_);
    state_ = State::exited;
  }
  changed_.notify_all();
  if (context_.done) context_.done();
}

}  // namespace

std::shared_ptr<Replica> start_sandbox_replica(const ReplicaOptions& options,
                                               SandboxReplicaContext context) {
  auto replica = std::make_shared<SandboxReplica>(options, std::move(context));
  replica->start();
  return replica;
}

std::shared_ptr<Replica> adopt_sandbox_replica(const v1::KeptReplica& record,
                                               const ReplicaOptions& options,
                                               SandboxReplicaContext context) {
  auto replica = std::make_shared<SandboxReplica>(options, std::move(context));
  replica->adopt(record);
  return replica;
}

bool kill_kept_process(const v1::KeptReplica& record) {
  std::string why;
  const UniqueFd fd = hold_kept_process(record, &why);
  return fd.get() >= 0 && ::syscall(SYS_pidfd_send_signal, fd.get(), SIGKILL, nullptr, 0) == 0;
}

bool leave_sandbox_replica(Replica& replica) {
  auto* sandboxed = dynamic_cast<SandboxReplica*>(&replica);
  return sandboxed != nullptr && sandboxed->leave();
}

std::uint64_t process_start_time(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  std::getline(in, stat);
  // After its name, which the process chose (it may hold spaces and parentheses): the last ')'.
  const auto close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(stat.substr(close + 1));
  std::string field;
  // Fields 3 (state) to 22 (starttime).
  for (int i = 3; i <= 22; ++i) {
    if (!(fields >> field)) return 0;
  }
  try {
    return std::stoull(field);
  } catch (...) {
    return 0;
  }
}

}  // namespace blixard::runtime
