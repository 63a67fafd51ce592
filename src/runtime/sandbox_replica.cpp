// VM replicas as sandboxed processes (see sandbox_replica.hpp).
#include "runtime/sandbox_replica.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <thread>

#include "blixard/error.hpp"
#include "common/health_check.hpp"
#include "net/links.hpp"
#include "runtime/console.hpp"
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

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  State state_ = State::starting;
  bool requested_ = false;
  bool kill_requested_ = false;
  bool marker_seen_ = false;
  bool exiting_ = false;  // its process is gone, its exit being reported
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

  auto out_pipe = make_pipe();
  auto err_pipe = make_pipe();
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
  if (context_.cgroups != nullptr) {
    cgroup_ =
        context_.cgroups->create(context_.root.filename().string(), memory_bytes, k_replica_pids);
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
    std::rethrow_exception(spawn_error);
  }
  thread_started_ = true;
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
}

void SandboxReplica::run() {
  // Console lines until both pipes close (every process of the replica is gone or closed them).
  const std::array<const char*, 2> streams{"stdout", "stderr"};
  read_console({out_.get(), err_.get()},
               [&](std::size_t which, std::string text) { line(streams[which], std::move(text)); });
  siginfo_t info{};
  while (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd_.get()), &info,
                  WEXITED) != 0 &&
         errno == EINTR) {
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
                    : describe_exit(info);
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

}  // namespace blixard::runtime
