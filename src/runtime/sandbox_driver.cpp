// The sandbox driver: runs function handlers as namespaced, cgroup-limited processes speaking the
// instance protocol (docs/instance-protocol.md). An instance's life is start -> ready ->
// request/response (any number, several at once, matched by request id) -> stop. Each instance
// has its own thread that spawns it (so PR_SET_PDEATHSIG, which follows the spawning thread, fires
// only when the agent dies), reads its responses and log pipes, and reaps it.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include <spdlog/spdlog.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/strand.hpp>

#include "common/defaults.hpp"
#include "common/sigpipe.hpp"
#include "runtime/cgroup.hpp"
#include "runtime/confine.hpp"
#include "runtime/driver.hpp"
#include "runtime/embedded.hpp"
#include "runtime/frame.hpp"
#include "runtime/kept_record.hpp"
#include "runtime/process.hpp"
#include "runtime/sandbox_replica.hpp"
#include "runtime/spawn.hpp"
#include "runtime/zygote.hpp"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

namespace blixard::runtime {
namespace fs = std::filesystem;
namespace asio = boost::asio;
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds k_default_timeout{30'000};
// A handler gets at least this long to import its code and say ready (as Lambda's init phase).
constexpr milliseconds k_min_start_timeout{10'000};
// Room in a response frame besides the result (ids, error text).
constexpr std::size_t k_frame_overhead = 64 * 1024;
// RLIMIT_AS counts mappings never touched (libraries, arenas, stacks): give them room.
constexpr std::uint64_t k_address_space_headroom = 512ull << 20;
constexpr std::size_t k_log_tail_lines = 20;
constexpr std::size_t k_max_log_line = 16 * 1024;
// How much of the response pipe a caller reads at a time.
constexpr std::size_t k_read_chunk = std::size_t{16} * 1024;
// How long a caller whose call timed out waits for the killed instance to be reaped.
constexpr milliseconds k_reap_wait{10'000};
constexpr milliseconds k_stop_grace{200};
// How long a Python start waits for the zygote to come up (once, after the driver starts).
constexpr milliseconds k_zygote_wait{5'000};
// A zygote that died is started anew by the next Python start, but not more often than this:
// one that dies at once (a broken interpreter) costs a fresh start every few seconds, not a loop.
constexpr std::chrono::seconds k_zygote_restart_gap{5};
constexpr const char* k_confine_library = "libblixard-confine.so";
constexpr const char* k_seccomp_filter = "seccomp.bpf";

std::string format_duration(milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + "s";
  return std::to_string(d.count()) + "ms";
}

std::string sanitize(const std::string& name) {
  std::string out;
  for (char c : name) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '-') ? c : '_';
  return out.empty() ? "fn" : out.substr(0, 48);
}

milliseconds spec_timeout(const v1::FunctionSpec& spec, milliseconds override_timeout) {
  milliseconds t = override_timeout;
  if (t.count() <= 0) {
    t = milliseconds(spec.timeout().seconds() * 1000 + spec.timeout().nanos() / 1'000'000);
  }
  return t.count() > 0 ? t : k_default_timeout;
}

std::uint64_t payload_limit(const v1::FunctionSpec& spec) {
  return spec.max_payload_bytes() != 0 ? spec.max_payload_bytes() : k_default_max_payload_bytes;
}

void check_payload(const Invocation& inv) {
  const std::uint64_t limit = payload_limit(inv.spec);
  if (inv.payload.size() > limit) {
    throw Error(errc::payload_too_large,
                "request payload is " + std::to_string(inv.payload.size()) +
                    " bytes, over the limit of " + std::to_string(limit),
                "payload");
  }
}

// Why the agent ended an instance; decides what its calls in flight are told.
enum class KillReason { none, stopped, timeout, protocol, shutdown };

// " (request ID)" after the phase, before the log lines.
std::string insert_request(const std::string& message, const std::string& id) {
  const std::string mark = "; last log lines:";
  const auto pos = message.find(mark);
  const std::string tag = " (request " + id + ")";
  if (pos == std::string::npos) return message + tag;
  return message.substr(0, pos) + tag + message.substr(pos);
}

Error timeout_error(const std::string& function, milliseconds timeout, const std::string& id) {
  return Error(errc::timeout, "function '" + function + "' timed out after " +
                                  format_duration(timeout) +
                                  (id.empty() ? "" : " (request " + id + ")"));
}

class SandboxDriver;
class SandboxInstance;

// Kept in each io_context that reads instances' response pipes. An instance stays registered with
// the reactor of its last asynchronous call, so a run of calls costs no epoll_ctl each; when that
// context shuts down, the instances still registered let go of it first.
class PipeReaders final : public asio::execution_context::service {
 public:
  using key_type = PipeReaders;
  inline static asio::execution_context::id id;
  explicit PipeReaders(asio::execution_context& context) : service(context) {}
  void add(const std::shared_ptr<SandboxInstance>& instance);
  void remove(const SandboxInstance* instance);

 private:
  void shutdown() override;

  std::mutex mutex_;
  std::map<const SandboxInstance*, std::weak_ptr<SandboxInstance>> instances_;
};

// The io_context behind `executor` (a strand's included), so completions need no strand of a
// caller that may be long gone.
asio::any_io_executor plain(const asio::any_io_executor& executor) {
  if (const auto* strand = executor.target<asio::strand<asio::io_context::executor_type>>()) {
    return strand->get_inner_executor();
  }
  return executor;
}

// One handler process: its pipes, cgroup, scratch dir and the calls in flight on it. Shared by
// the handle the caller holds, the instance thread and the driver's registry.
class SandboxInstance : public std::enable_shared_from_this<SandboxInstance> {
 public:
  enum class State { starting, ready, exited };

  struct Pending {
    bool done = false;
    v1::InstanceResponse response;
    // A call_async() call: no thread waits for it; whoever ends it runs `complete`.
    struct Async {
      CallCompletion complete;
      asio::any_io_executor executor;  // whose reactor may read its answer
      std::string function;
      std::string request_id;
      milliseconds timeout{0};
      Clock::time_point sent;
      Clock::time_point deadline;
    };
    std::unique_ptr<Async> async;
  };

  SandboxInstance(SandboxDriver& driver, InstanceOptions options)
      : driver_(driver), options_(std::move(options)) {}
  ~SandboxInstance() {
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }

  // The instance thread's body: spawn, serve the pipes until the process is gone, reap.
  void run(SpawnRequest request, Clock::time_point start_deadline);

  InvocationResult call(const Invocation& inv);
  bool call_async(const Invocation& inv, const asio::any_io_executor& executor,
                  CallCompletion complete);
  void stop(milliseconds grace);
  void kill(KillReason why);
  // Blocks until the instance started or failed to; throws the start error.
  void wait_ready();

  // False as soon as a kill is decided (timeout, protocol error), before the exit is reaped.
  bool alive() const {
    std::lock_guard lock(mutex_);
    return state_ == State::ready && kill_reason_ == KillReason::none;
  }

  std::string name_;
  fs::path dir_;
  std::uint64_t max_payload_ = 0;
  milliseconds start_timeout_{0};
  Clock::time_point created_ = Clock::now();
  std::chrono::microseconds init_{0};
  std::unique_ptr<InstanceCgroup> cgroup_;
  // MODULE:FUNCTION [CODE_DIR] when the instance is forked from the Python zygote.
  std::vector<std::string> zygote_args_;
  // The zygote that forks it (and reports its exit), kept as long as the instance.
  std::shared_ptr<PythonZygote> zygote_;

 private:
  friend class SandboxDriver;

  void serve_until_exit(Clock::time_point start_deadline, bool& ready_timed_out);
  enum class ReadEnd { answered, timed_out, gone };
  // As the reader (reader_busy_ taken): reads responses until `mine` is answered.
  ReadEnd read_until_answered(const Pending& mine, Clock::time_point deadline);
  // mutex_ held: a call may start (unavailable otherwise), and it is in flight under its id
  // (invalid_spec when the id already is).
  void check_running(const std::string& function) const;
  void add_pending(const std::string& request_id, Pending* pending);
  // The request frame of `inv`, and writing it (false: still not written at `deadline`).
  static std::string request_frame(const Invocation& inv, milliseconds timeout);
  // write_mutex_ held (frames of concurrent calls must not interleave).
  bool write_request(const std::string& bytes, Clock::time_point deadline);
  // What a call gets from its handler's response (throws the handler's error).
  InvocationResult result_of(v1::InstanceResponse& response, const std::string& function,
                             Clock::time_point sent) const;
  // The reader role's holder is done with it (mutex_ held): it goes to a caller waiting for it (or
  // drain()), else to the reactor of a call_async() call in flight, else it is free.
  void hand_over_reader(std::unique_lock<std::mutex>& lock);
  // As the reader, mutex_ held: read the response pipe on `executor`'s reactor.
  void read_async(const asio::any_io_executor& executor);
  void on_async_read(const boost::system::error_code& ec, std::size_t n);
  // mutex_ held: the pipe leaves the reactor it is registered with.
  void drop_registration();
  // That reactor's context shuts down (PipeReaders).
  void forget_reactor(PipeReaders& readers);
  friend class PipeReaders;
  // Runs an ended call_async() call's completion (no lock held).
  void finish_async(std::unique_ptr<Pending> p, std::exception_ptr error);
  // The instance thread, mutex_ held: async calls past their deadline move to timed_out_ (and the
  // instance is to be killed: true); planned_wake_ becomes the next deadline.
  bool expire_async_calls();
  void drain();
  void process_frames();
  void on_output(int stream, const char* data, std::size_t n, bool eof);
  void protocol_failure(std::string what, bool too_large = false);
  void signal_kill();
  // The error calls in flight (or the start) get once the process is gone.
  Error failure(const char* phase) const;
  std::string tail() const;

  SandboxDriver& driver_;
  InstanceOptions options_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  State state_ = State::starting;
  std::optional<Error> start_error_;
  std::map<std::string, Pending*> pending_;
  KillReason kill_reason_ = KillReason::none;
  std::string lost_;  // protocol violation, when that ended it
  bool lost_too_large_ = false;
  std::optional<siginfo_t> exit_;
  bool oom_ = false;
  std::deque<std::string> tail_;
  // Whoever holds this reads the response pipe and hands out what it reads: the instance thread
  // until the handler is ready, then one caller at a time (a caller waiting for its own answer
  // reads it, one wakeup instead of two), and the instance thread's drain() once it is gone.
  bool reader_busy_ = true;
  // Synchronous callers waiting for their answer without the reader role.
  std::size_t role_waiters_ = 0;
  bool draining_ = false;  // the process is gone: drain() wants the reader role
  // call_async() calls in pending_ (heap Pendings it owns), and those past their deadline, told
  // once the instance is gone. The instance thread wakes at planned_wake_ to look for those, or
  // when wake_ (an eventfd) says a call with an earlier deadline came.
  std::size_t async_calls_ = 0;
  std::vector<std::unique_ptr<Pending>> timed_out_;
  Clock::time_point planned_wake_ = Clock::time_point::max();
  UniqueFd wake_;
  // The response pipe as registered with the reactor of the last async reader (registered_with_
  // is that context's PipeReaders), and whether an async read holds the reader role now.
  std::unique_ptr<asio::posix::stream_descriptor> async_reader_;
  PipeReaders* registered_with_ = nullptr;
  bool async_reading_ = false;
  std::unique_ptr<std::array<char, k_read_chunk>> async_buffer_;

  // Touched by the instance thread only (and the fds by writers under write_mutex_).
  pid_t pid_ = -1;
  UniqueFd pidfd_;
  std::mutex write_mutex_;
  UniqueFd request_;                      // our write end (fd 3 in the handler)
  std::size_t request_pipe_size_ = 4096;  // its capacity (F_GETPIPE_SZ; a page if unknown)
  UniqueFd out_, err_;
  // Touched by the reader only (reader_busy_).
  UniqueFd response_;  // our read end (fd 4 in the handler)
  FrameDecoder decoder_{0};
  std::string partial_[2];
  bool namespaced_ = false;
  bool from_zygote_ = false;  // not our child: the zygote reaps it and reports how it ended
};

// The caller's handle: dropping it kills the process.
class SandboxHandle final : public Instance {
 public:
  explicit SandboxHandle(std::shared_ptr<SandboxInstance> s) : s_(std::move(s)) {}
  ~SandboxHandle() override { s_->kill(KillReason::stopped); }
  const std::string& name() const override { return s_->name_; }
  std::chrono::microseconds init_duration() const override { return s_->init_; }
  bool alive() const override { return s_->alive(); }
  InvocationResult call(const Invocation& inv) override { return s_->call(inv); }
  bool call_async(const Invocation& inv, const asio::any_io_executor& executor,
                  CallCompletion complete) override {
    return s_->call_async(inv, executor, std::move(complete));
  }
  void stop(milliseconds grace) override { s_->stop(grace); }
  void kill() override { s_->kill(KillReason::stopped); }

 private:
  std::shared_ptr<SandboxInstance> s_;
};

class SandboxDriver final : public Driver {
 public:
  explicit SandboxDriver(SandboxOptions options)
      : options_(std::move(options)),
        replica_prefix_(replica_prefix(options_)),
        cgroups_(options_.cgroup_parent) {
    std::error_code ec;
    options_.work_dir = fs::absolute(options_.work_dir);
    fs::create_directories(options_.work_dir / "instances", ec);
    if (ec) {
      throw Error(errc::unavailable, "cannot create " + (options_.work_dir / "instances").string() +
                                         ": " + ec.message());
    }
    if (options_.keep_replicas) {
      make_private_dir(kept_dir());
      make_private_dir(consoles_dir());
    }
    reclaim_instance_dirs();
    write_runtime();
    python_ = resolve_python(options_.python);
    if (options_.python_zygote && !python_.empty()) zygote_ = new_zygote();
    if (cgroups_.mode() == CgroupManager::Mode::none) {
      spdlog::warn("sandbox: no cgroups ({}); memory limits fall back to RLIMIT_AS",
                   cgroups_.reason());
    }
  }

  ~SandboxDriver() override {
    shutdown();
    // Instance threads notice their killed process, reap it and end; wait for them all.
    std::unique_lock lock(mutex_);
    drained_.wait(lock, [&] { return threads_ == 0; });
    lock.unlock();
    std::lock_guard zlock(zygote_mutex_);
    zygote_.reset();  // after the instances: their threads learn their exit status from it
  }

  std::string name() const override { return "sandbox"; }

  std::shared_ptr<Instance> start(const InstanceOptions& options) override {
    if (shut_down_) throw Error(errc::unavailable, "the sandbox driver is shut down");
    auto in = std::make_shared<SandboxInstance>(*this, options);
    // The code dir resolved ("..", symlinks): the instance's root holds the directory itself, not
    // the paths that lead to it.
    const std::uint64_t seq = ++counter_;
    v1::FunctionSpec spec = options.spec;
    if (!spec.code().empty()) spec.set_code(resolved_path(spec.code()));
    in->max_payload_ = payload_limit(spec);
    in->start_timeout_ = std::max(spec_timeout(spec, milliseconds(0)), k_min_start_timeout);
    in->name_ =
        sanitize(options.function) + "-" + std::to_string(::getpid()) + "-" + std::to_string(seq);
    in->dir_ = options_.work_dir / "instances" / in->name_;

    SpawnRequest req;
    req.argv = command_for(options.function, spec);
    req.env = environment(options.function, spec, in->name_);
    req.new_network = spec.network() != "host";
    req.seccomp = &seccomp_;
    Confinement& confine = req.confinement;
    confine.root = in->dir_.string();
    // The code is bound at k_code_mount: the instance sees neither the node's path to it (under
    // the data dir) nor the directories on the way. A program inside it is run from there.
    if (!under_dir(req.argv[0], spec.code())) confine.keep = program_dirs(req.argv[0]);
    confine.code_dir = spec.code();
    const std::string code = inside(spec, spec.code());
    for (auto& arg : req.argv) arg = inside(spec, arg);
    req.cwd = code.empty() ? "/tmp" : code;
    confine.runtime_dir = runtime_dir().string();
    if (spec.runtime() == "python") {
      // What the function puts on its module path is the function's to read.
      if (const auto it = spec.env().find("PYTHONPATH"); it != spec.env().end()) {
        std::stringstream dirs(it->second);
        for (std::string dir; std::getline(dirs, dir, ':');) {
          if (!dir.empty() && dir.front() == '/') confine.keep.push_back(resolved_path(dir));
        }
      }
    }
    confine.scratch_bytes = scratch_bytes(spec);
    // Each instance its own host ids: nothing of one (files, signals, limits per user) is
    // another's.
    confine.uid = static_cast<long>(options_.uid_base + seq % options_.uid_count);
    confine.gid = confine.uid;

    std::error_code ec;
    // The parent is made by the constructor: one mkdir, not create_directories' walk up the path.
    // It stays empty: the instance's root is mounted on it inside its own mount namespace.
    if (::mkdir(in->dir_.c_str(), 0755) != 0) fs::create_directories(in->dir_, ec);
    if (ec) {
      throw Error(errc::unavailable, "cannot create " + in->dir_.string() + ": " + ec.message());
    }
    const std::uint64_t memory_bytes = spec.memory_mib() << 20;
    std::string why;
    in->cgroup_ = cgroups_.create(in->name_, memory_bytes, options_.pids_max, &why);
    if (in->cgroup_) {
      confine.cgroup_join = in->cgroup_->join_files();
    } else {
      if (cgroups_.mode() != CgroupManager::Mode::none) {
        warn_once(cgroup_warned_, "sandbox: cannot create an instance cgroup ({}); using RLIMIT_AS",
                  why);
      }
      if (memory_bytes != 0) {
        confine.address_space_limit = memory_bytes + k_address_space_headroom;
      }
    }
    req.namespaces = !namespaces_refused_;
    auto zygote = spec.runtime() == "python" && zygote_can_run(spec) ? current_zygote() : nullptr;
    if (zygote) {
      std::string why;
      if (zygote->ready(k_zygote_wait, &why)) {
        in->zygote_ = std::move(zygote);
        in->zygote_args_ = {spec.handler()};
        if (!code.empty()) in->zygote_args_.push_back(code);
      } else {
        warn_once(zygote_warned_, "sandbox: Python instances start fresh interpreters ({})", why);
      }
    }

    {
      std::lock_guard lock(mutex_);
      ++threads_;
    }
    const auto deadline = in->created_ + in->start_timeout_;
    try {
      std::thread([in, req = std::move(req), deadline]() mutable {
        in->run(std::move(req), deadline);
      }).detach();
    } catch (const std::system_error& e) {
      thread_done(nullptr);
      throw Error(errc::unavailable, std::string("cannot start an instance thread: ") + e.what());
    }
    in->wait_ready();
    return std::make_shared<SandboxHandle>(std::move(in));
  }

  InvocationResult invoke(const Invocation& inv) override {
    if (shut_down_) throw Error(errc::unavailable, "the sandbox driver is shut down");
    check_payload(inv);
    InstanceOptions options;
    options.function = inv.function;
    options.spec = inv.spec;
    auto instance = start(options);
    auto out = instance->call(inv);
    instance->stop(k_stop_grace);
    out.cold_start = true;
    return out;
  }

  std::shared_ptr<Replica> start_replica(const ReplicaOptions& options) override {
    if (shut_down_) throw Error(errc::unavailable, "the sandbox driver is shut down");
    const std::uint64_t seq = ++counter_;
    SandboxReplicaContext context;
    context.root = options_.work_dir / "instances" /
                   (replica_prefix_ + sanitize(options.name) + "-" + std::to_string(::getpid()) +
                    "-" + std::to_string(seq));
    if (options_.keep_replicas) {
      context.kept_dir = kept_dir();
      context.consoles = consoles_dir();
      // Reached by shutdown() while it starts: it does not die with the agent's thread.
      context.spawned = [this](const std::shared_ptr<Replica>& replica) {
        bool kill = false;
        {
          std::lock_guard lock(mutex_);
          replicas_.push_back(replica);
          kill = shut_down_;
        }
        if (kill) replica->kill();
      };
    }
    if (cgroups_.mode() != CgroupManager::Mode::none) context.cgroups = &cgroups_;
    context.seccomp = &seccomp_;
    context.uid = static_cast<long>(options_.uid_base + seq % options_.uid_count);
    context.gid = context.uid;
    context.namespaces = !namespaces_refused_;
    {
      std::lock_guard lock(mutex_);
      ++threads_;
    }
    context.done = [this] { thread_done(nullptr); };
    auto replica = start_sandbox_replica(options, std::move(context));
    std::lock_guard lock(mutex_);
    std::erase_if(replicas_, [](const auto& r) { return r.expired(); });
    replicas_.push_back(replica);
    if (shut_down_) replica->kill();
    return replica;
  }

  std::vector<AdoptedReplica> adopt(
      const ReplicaOptions::LogCallback& on_log,
      const std::function<void(const ReplicaExit&)>& on_exit) override {
    std::vector<AdoptedReplica> adopted;
    if (!options_.keep_replicas) return adopted;
    std::set<std::string> taken;  // their cgroups
    std::set<fs::path> roots;     // their roots' directories
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(kept_dir(), ec)) {
      const fs::path& path = entry.path();
      if (path.extension() != ".pb") continue;
      auto read = read_kept_record(path);
      if (!read || read->pid() <= 1) {
        spdlog::warn("sandbox: ignoring {}: not a record of this agent's", path.string());
        continue;
      }
      const v1::KeptReplica& record = *read;
      const std::string name = record.assignment().replica();
      // Its root and cgroup are this driver's (named so at the start).
      const fs::path root(record.root());
      if (root.parent_path() != options_.work_dir / "instances" ||
          root.filename().string().rfind(replica_prefix_, 0) != 0 ||
          (!record.cgroup().empty() && record.cgroup() != root.filename().string())) {
        spdlog::warn("sandbox: ignoring {}: not a replica of this driver's", path.string());
        continue;
      }
      ReplicaOptions options = kept_replica_options(record, on_log, on_exit);
      if (!record.adoptable()) {
        // Still starting when its agent ended, or a primary: never taken back.
        if (kill_kept_process(record)) {
          spdlog::info("sandbox: killed replica {} an earlier agent left unready", name);
        }
        continue;
      }
      SandboxReplicaContext context = replica_context(record.root());
      context.cgroup_name = record.cgroup();
      try {
        auto replica = adopt_sandbox_replica(record, options, std::move(context));
        adopted.push_back({replica, options.epoch});
        taken.insert(record.cgroup());
        roots.insert(record.root());
        std::lock_guard lock(mutex_);
        replicas_.push_back(replica);
      } catch (const std::exception& e) {
        spdlog::warn("sandbox: not taking back replica {}: {}", name, e.what());
      }
    }
    // The rest an earlier driver left: its replicas not taken back (not ready yet, unreadable
    // records, a pid that is another process's now), killed by their cgroups, never by an
    // unproven pid; then their files.
    if (cgroups_.mode() != CgroupManager::Mode::none) {
      for (const auto& name : cgroups_.names(replica_prefix_)) {
        if (taken.count(name) != 0) continue;
        if (auto group = cgroups_.existing(name, 0)) group->remove();
      }
    }
    for (const auto& dir : {kept_dir(), consoles_dir()}) {
      for (const auto& entry : fs::directory_iterator(dir, ec)) {
        const std::string stem = entry.path().stem().string();
        bool kept = false;
        for (const auto& a : adopted) kept = kept || a.replica->name() == stem;
        std::error_code ignored;
        if (!kept) fs::remove(entry.path(), ignored);
      }
    }
    for (const auto& entry : fs::directory_iterator(options_.work_dir / "instances", ec)) {
      const std::string name = entry.path().filename().string();
      std::error_code ignored;
      if (name.rfind(replica_prefix_, 0) == 0 && roots.count(entry.path()) == 0) {
        fs::remove(entry.path(), ignored);
      }
    }
    return adopted;
  }

  void detach() override {
    if (!options_.keep_replicas) {
      shutdown();
      return;
    }
    std::vector<std::shared_ptr<Replica>> replicas;
    {
      std::lock_guard lock(mutex_);
      for (auto& r : replicas_) {
        if (auto p = r.lock()) replicas.push_back(std::move(p));
      }
    }
    // Ready ones run on for the next agent (their records and consoles kept); shutdown() kills
    // the rest, and every function instance.
    for (auto& r : replicas) leave_sandbox_replica(*r);
    shutdown();
  }

  void shutdown() override {
    shut_down_ = true;
    std::vector<std::shared_ptr<SandboxInstance>> live;
    std::vector<std::shared_ptr<Replica>> replicas;
    {
      std::lock_guard lock(mutex_);
      for (auto* in : live_) {
        if (auto p = in->weak_from_this().lock()) live.push_back(std::move(p));
      }
      for (auto& r : replicas_) {
        if (auto p = r.lock()) replicas.push_back(std::move(p));
      }
    }
    for (auto& in : live) in->kill(KillReason::shutdown);
    for (auto& r : replicas) r->kill();
    // Idle cgroups go now; the killed instances' groups are removed as they exit.
    cgroups_.close();
  }

  // ---- called by instances ----

  void spawned(SandboxInstance* in, const Spawned& child) {
    if (child.namespace_errno != 0) {
      namespaces_refused_ = true;
      warn_once(ns_warned_,
                "sandbox: cannot create namespaces ({}); running handlers as plain processes",
                std::strerror(child.namespace_errno));
    }
    bool kill_it = false;
    {
      std::lock_guard lock(mutex_);
      live_.insert(in);
      kill_it = shut_down_;
    }
    if (kill_it) in->kill(KillReason::shutdown);
  }

  // The instance thread is about to end.
  void thread_done(SandboxInstance* in) {
    std::lock_guard lock(mutex_);
    if (in != nullptr) live_.erase(in);
    --threads_;
    drained_.notify_all();
  }

  bool shut_down() const noexcept { return shut_down_; }

  void release_cgroup(std::unique_ptr<InstanceCgroup> group) { cgroups_.release(std::move(group)); }

  // Forks from `zygote`; nullopt (after a warning) when it cannot, and the caller execs.
  std::optional<Spawned> spawn_from_zygote(PythonZygote& zygote, const SpawnRequest& req,
                                           const std::vector<std::string>& args) {
    try {
      return zygote.spawn(req, args);
    } catch (const Error& e) {
      warn_once(zygote_warned_, "sandbox: Python instances start fresh interpreters ({})",
                e.what());
      return std::nullopt;
    }
  }

 private:
  // ---- what to run ----

  std::vector<std::string> command_for(const std::string& function, const v1::FunctionSpec& spec) {
    if (spec.runtime() == "python") {
      if (spec.handler().empty()) {
        throw Error(errc::invalid_spec, "the python runtime needs a handler MODULE:FUNCTION",
                    "handler");
      }
      if (python_.empty()) {
        throw Error(errc::unavailable, "python interpreter '" + options_.python + "' not found");
      }
      // -S: site's .pth hooks (certifi, setuptools' distutils hack, ...) cost more start-up
      // than the interpreter itself; the runtime puts the site-packages dirs on sys.path without
      // running them. BLIXARD_PYTHON_SITE=1 in the function's env keeps the full `site`.
      std::vector<std::string> argv{python_};
      const auto site = spec.env().find("BLIXARD_PYTHON_SITE");
      if (site == spec.env().end() || site->second.empty() || site->second == "0") {
        argv.emplace_back("-S");
      }
      // Where the instance sees it (confine.hpp), or the host's path outside namespaces.
      argv.push_back((namespaces_refused_ ? runtime_dir() : fs::path(k_runtime_mount)) /
                     "handler_runtime.py");
      argv.push_back(spec.handler());
      if (!spec.code().empty()) argv.push_back(spec.code());
      return argv;
    }
    if (spec.runtime() == "exec") {
      if (spec.command().empty()) {
        throw Error(errc::invalid_spec, "the exec runtime needs a command", "command");
      }
      std::vector<std::string> argv(spec.command().begin(), spec.command().end());
      const fs::path cmd = argv[0];
      const fs::path code = spec.code();
      fs::path resolved;
      if (cmd.is_absolute()) {
        resolved = cmd;
      } else if (cmd.has_parent_path()) {
        resolved = (code.empty() ? fs::current_path() : code) / cmd;
      } else if (!code.empty() && ::access((code / cmd).c_str(), X_OK) == 0) {
        resolved = code / cmd;
      } else if (auto found = find_executable(cmd.string())) {
        resolved = *found;
      } else {
        throw Error(errc::handler_failed,
                    "cannot find the command '" + cmd.string() + "' of '" + function +
                        "' in its code directory or on PATH",
                    "command");
      }
      argv[0] = resolved.string();
      return argv;
    }
    throw Error(errc::invalid_spec, "unknown runtime '" + spec.runtime() + "' (python, exec)",
                "runtime");
  }

  // What a fork of the zygote cannot reproduce: a full `site`, or interpreter start-up settings
  // beyond those the runtime applies itself (PYTHONPATH, PYTHONUNBUFFERED,
  // PYTHONDONTWRITEBYTECODE). Such functions start a fresh interpreter.
  static bool zygote_can_run(const v1::FunctionSpec& spec) {
    for (const auto& [key, value] : spec.env()) {
      if (key == "BLIXARD_PYTHON_SITE" && !value.empty() && value != "0") return false;
      if (key.rfind("PYTHON", 0) == 0 && key != "PYTHONPATH" && key != "PYTHONUNBUFFERED" &&
          key != "PYTHONDONTWRITEBYTECODE") {
        return false;
      }
    }
    return true;
  }

  std::shared_ptr<PythonZygote> new_zygote() {
    auto env = inherited_environment();
    env.push_back("BLIXARD_CONFINE_LIBRARY=" + (runtime_dir() / k_confine_library).string());
    env.push_back("BLIXARD_SECCOMP_FILTER=" + (runtime_dir() / k_seccomp_filter).string());
    return std::make_shared<PythonZygote>(python_, runtime_dir() / "handler_runtime.py",
                                          std::move(env));
  }

  // The zygote to fork Python instances from: the running one, or a new one when it died (its
  // instances keep the old one until they are gone); null when there is none.
  std::shared_ptr<PythonZygote> current_zygote() {
    std::lock_guard lock(zygote_mutex_);
    if (zygote_ && zygote_->gone() && !shut_down_) {
      const auto now = Clock::now();
      if (now - zygote_restarted_ >= k_zygote_restart_gap) {
        spdlog::warn("sandbox: the Python zygote is gone ({}); starting a new one",
                     zygote_->why_gone());
        zygote_restarted_ = now;
        zygote_ = new_zygote();
        zygote_warned_ = false;
      }
    }
    return zygote_;
  }

  // The zygote's own environment: the agent's basics, nothing of any function's.
  static std::vector<std::string> inherited_environment() {
    std::vector<std::string> out;
    for (const char* key : {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ"}) {
      if (const char* v = std::getenv(key)) out.push_back(std::string(key) + "=" + v);
    }
    return out;
  }

  std::vector<std::string> environment(const std::string& function, const v1::FunctionSpec& spec,
                                       const std::string& instance) {
    std::vector<std::pair<std::string, std::string>> vars;
    for (const char* key : {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"}) {
      if (const char* v = std::getenv(key)) vars.emplace_back(key, v);
    }
    if (spec.runtime() == "python") vars.emplace_back("PYTHONUNBUFFERED", "1");
    for (const auto& [k, v] : spec.env()) vars.emplace_back(k, v);
    vars.emplace_back("BLIXARD_PROTOCOL", "1");
    vars.emplace_back("BLIXARD_FUNCTION", function);
    vars.emplace_back("BLIXARD_MEMORY_MIB", std::to_string(spec.memory_mib()));
    vars.emplace_back("BLIXARD_INSTANCE", instance);
    vars.emplace_back("BLIXARD_CONCURRENCY", std::to_string(std::max<std::uint32_t>(
                                                 1, spec.scaling().target_concurrency())));
    // Its scratch is a tmpfs at /tmp (the rest of its root is read-only).
    vars.emplace_back("TMPDIR", "/tmp");
    vars.emplace_back("BLIXARD_REQUEST_FD", "3");
    vars.emplace_back("BLIXARD_RESPONSE_FD", "4");
    // Later entries win, as the spec's env overrides the inherited one.
    std::vector<std::string> out;
    std::set<std::string> seen;
    for (auto it = vars.rbegin(); it != vars.rend(); ++it) {
      if (seen.insert(it->first).second) out.push_back(it->first + "=" + it->second);
    }
    return out;
  }

  fs::path runtime_dir() const { return options_.work_dir / "runtime"; }

  // What instances read from the agent, in a directory of its own (the only part of the work dir
  // an instance sees): the Python handler runtime, the confinement library and seccomp filter
  // the zygote's children apply.
  void write_runtime() {
    std::error_code ec;
    fs::create_directories(runtime_dir(), ec);
    ::chmod(runtime_dir().c_str(), 0755);
    write_file(runtime_dir() / "handler_runtime.py", detail::embedded_handler_runtime());
    write_file(runtime_dir() / k_confine_library, detail::embedded_confine_library());
    write_file(runtime_dir() / k_seccomp_filter, seccomp_);
  }

  static void write_file(const fs::path& target, std::string_view text) {
    {
      std::ifstream in(target, std::ios::binary);
      std::string current((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (in && current == text) return;
    }
    // Written beside and renamed, so a concurrent start never reads half a file.
    const fs::path tmp = target.string() + ".tmp" + std::to_string(::getpid());
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out.write(text.data(), static_cast<std::streamsize>(text.size()));
      if (!out) throw Error(errc::unavailable, "cannot write " + tmp.string());
    }
    ::chmod(tmp.c_str(), 0644);
    std::error_code ec;
    fs::rename(tmp, target, ec);
    if (ec) throw Error(errc::unavailable, "cannot write " + target.string() + ": " + ec.message());
  }

  // A running process (its zombie, which a container's PID 1 may never reap, is not).
  static bool alive(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string text;
    std::getline(stat, text);
    const auto paren = text.rfind(')');
    return paren != std::string::npos && paren + 2 < text.size() && text[paren + 2] != 'Z' &&
           text[paren + 2] != 'X';
  }

  // ---- replicas kept across agent restarts (SandboxOptions::keep_replicas) ----

  fs::path kept_dir() const { return options_.work_dir / "kept"; }
  fs::path consoles_dir() const { return options_.work_dir / "consoles"; }
  // Of its replicas' roots and cgroups. Where they may outlive the agent: the kept groups' prefix
  // (which no agent's start removes) and a hash of the work dir, so that another agent's on the
  // same cgroup parent are never taken for its own.
  static std::string replica_prefix(const SandboxOptions& options) {
    if (!options.keep_replicas) return "vm-";
    std::array<char, 9> hex{};
    std::snprintf(
        hex.data(), hex.size(), "%08x",
        static_cast<unsigned>(std::hash<std::string>{}(fs::absolute(options.work_dir).string())));
    return std::string(CgroupManager::k_kept_prefix) + std::string(hex.data()) + "-";
  }
  // The agent's own directory, no one else's to read or to plant anything in (a symlink, say).
  static void make_private_dir(const fs::path& dir) {
    ::mkdir(dir.c_str(), 0700);
    struct stat st {};
    if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != ::geteuid() ||
        ::chmod(dir.c_str(), 0700) != 0) {
      throw Error(errc::unavailable, "cannot make " + dir.string() + " the agent's own directory");
    }
  }
  SandboxReplicaContext replica_context(const fs::path& root) {
    SandboxReplicaContext context;
    context.root = root;
    if (cgroups_.mode() != CgroupManager::Mode::none) context.cgroups = &cgroups_;
    context.seccomp = &seccomp_;
    context.namespaces = !namespaces_refused_;
    context.kept_dir = kept_dir();
    context.consoles = consoles_dir();
    {
      std::lock_guard lock(mutex_);
      ++threads_;
    }
    context.done = [this] { thread_done(nullptr); };
    return context;
  }

  // Instance dirs left by an agent that died (named <function>-<pid>-<n>, their pid gone): only
  // empty mount points now, since scratch is a tmpfs in the instance's own mount namespace.
  void reclaim_instance_dirs() {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(options_.work_dir / "instances", ec)) {
      const std::string name = entry.path().filename().string();
      // An earlier agent's replica may run on it still: adopt() decides.
      if (options_.keep_replicas && name.rfind(replica_prefix_, 0) == 0) continue;
      const auto last = name.rfind('-');
      const auto before = last == std::string::npos ? last : name.rfind('-', last - 1);
      if (before == std::string::npos) continue;
      const long pid = std::strtol(name.c_str() + before + 1, nullptr, 10);
      if (pid <= 0 || pid == ::getpid() || alive(static_cast<pid_t>(pid))) continue;
      std::error_code ignored;
      fs::remove_all(entry.path(), ignored);
    }
  }

  // The directories a program needs besides the system's: its own, and for one in a bin/ (an
  // interpreter: a pyenv build under /root, say) the prefix holding its lib/, and a venv it
  // runs from.
  static bool under_dir(const std::string& path, const std::string& dir) {
    return !dir.empty() && path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
           path[dir.size()] == '/';
  }

  // Where the instance sees a host path of the function's code (k_code_mount inside its root;
  // the host's path where namespaces were refused); any other path as it is.
  std::string inside(const v1::FunctionSpec& spec, const std::string& path) const {
    const std::string& code = spec.code();
    if (code.empty() || namespaces_refused_) return path;
    if (path == code) return k_code_mount;
    if (under_dir(path, code)) return k_code_mount + path.substr(code.size());
    return path;
  }

  static std::vector<std::string> program_dirs(const std::string& program) {
    std::vector<std::string> out;
    if (program.empty()) return out;
    const fs::path given(program);
    out.push_back(given.parent_path().string());
    if (fs::exists(given.parent_path().parent_path() / "pyvenv.cfg")) {
      out.push_back(given.parent_path().parent_path().string());
    }
    const fs::path real(resolved_path(program));
    out.push_back(real.parent_path().filename() == "bin" ? real.parent_path().parent_path().string()
                                                         : real.parent_path().string());
    return out;
  }

  // The tmpfs at /tmp: the spec's ephemeralStorage (validated: at most its memory, which the
  // tmpfs is charged to), or the same default for a spec that skipped validation.
  static std::uint64_t scratch_bytes(const v1::FunctionSpec& spec) {
    const std::uint64_t memory = spec.memory_mib() == 0 ? 128 : spec.memory_mib();
    const std::uint64_t mib = spec.has_ephemeral_storage_mib()
                                  ? spec.ephemeral_storage_mib()
                                  : std::min<std::uint64_t>(64, memory);
    return std::min(mib, memory) << 20;
  }

  // The interpreter's real binary: pyenv-style shims cost ~300 ms per start, so ask them once.
  static std::string resolve_python(const std::string& python) {
    std::optional<fs::path> found;
    if (python.find('/') != std::string::npos) {
      if (::access(python.c_str(), X_OK) == 0) found = fs::absolute(python);
    } else {
      found = find_executable(python);
    }
    if (!found) return {};
    if (found->string().find("/shims/") == std::string::npos) return found->string();
    const std::string cmd = "'" + found->string() + "' -c 'import sys; print(sys.executable)'";
    std::string out;
    if (FILE* p = ::popen(cmd.c_str(), "r")) {
      char buf[4096];
      while (std::fgets(buf, sizeof buf, p) != nullptr) out += buf;
      ::pclose(p);
    }
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
    return !out.empty() && ::access(out.c_str(), X_OK) == 0 ? out : found->string();
  }

  template <class... Args>
  static void warn_once(std::atomic<bool>& flag, spdlog::format_string_t<Args...> fmt,
                        Args&&... args) {
    if (!flag.exchange(true)) spdlog::warn(fmt, std::forward<Args>(args)...);
  }

  SandboxOptions options_;
  std::string replica_prefix_;  // replica_prefix()
  CgroupManager cgroups_;
  std::string python_;
  std::string seccomp_ = instance_seccomp_filter();
  std::atomic<std::uint64_t> counter_{0};
  std::atomic<bool> shut_down_{false};
  std::atomic<bool> namespaces_refused_{false};
  std::atomic<bool> ns_warned_{false};
  std::atomic<bool> cgroup_warned_{false};
  std::atomic<bool> zygote_warned_{false};
  std::mutex zygote_mutex_;  // guards the two below
  std::shared_ptr<PythonZygote> zygote_;
  Clock::time_point zygote_restarted_{};  // the last time a new one replaced a dead one
  std::mutex mutex_;
  std::condition_variable drained_;
  std::set<SandboxInstance*> live_;
  std::vector<std::weak_ptr<Replica>> replicas_;  // VM replicas started, for shutdown()
  std::size_t threads_ = 0;
};

// ---- the instance thread ----

void SandboxInstance::run(SpawnRequest req, Clock::time_point start_deadline) {
  auto self = shared_from_this();  // outlives everything below
  try {
    wake_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (wake_.get() < 0) {
      throw Error(errc::unavailable,
                  std::string("cannot create an eventfd: ") + std::strerror(errno));
    }
    auto [req_read, req_write] = make_pipe();
    auto [resp_read, resp_write] = make_pipe();
    auto [out_read, out_write] = make_pipe();
    auto [err_read, err_write] = make_pipe();
    req.request_fd = req_read.get();
    req.response_fd = resp_write.get();
    req.stdout_fd = out_write.get();
    req.stderr_fd = err_write.get();
    decoder_ = FrameDecoder(max_payload_ + k_frame_overhead);
    std::optional<Spawned> forked;
    if (zygote_) forked = driver_.spawn_from_zygote(*zygote_, req, zygote_args_);
    from_zygote_ = forked.has_value();
    const Spawned child = forked ? *forked : spawn_sandboxed(req);
    pid_ = child.pid;
    pidfd_ = UniqueFd(child.pidfd);
    namespaced_ = child.namespaced;
    request_ = std::move(req_write);
    response_ = std::move(resp_read);
    out_ = std::move(out_read);
    err_ = std::move(err_read);
    for (int fd : {request_.get(), response_.get(), out_.get(), err_.get()}) set_nonblocking(fd);
    if (const int size = ::fcntl(request_.get(), F_GETPIPE_SZ); size > 0) {
      request_pipe_size_ = static_cast<std::size_t>(size);
    }
    // The child's ends close here: its exit shows as EOF on ours.
    driver_.spawned(this, child);
  } catch (const Error& e) {
    driver_.release_cgroup(std::move(cgroup_));
    zygote_.reset();  // as below
    {
      std::lock_guard lock(mutex_);
      start_error_ = e;
      state_ = State::exited;
    }
    changed_.notify_all();
    driver_.thread_done(nullptr);
    return;
  }

  bool ready_timed_out = false;
  serve_until_exit(start_deadline, ready_timed_out);

  // Gone (or killed): reap, read the verdict, release the cgroup.
  if (!namespaced_) {
    ::kill(-pid_, SIGKILL);  // the leader is unreaped, so its group id is still ours
    if (cgroup_) cgroup_->kill_all();
  }
  siginfo_t info{};
  if (from_zygote_) {
    info = zygote_->wait_exit(pid_);
  } else {
    while (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd_.get()), &info,
                    WEXITED) != 0 &&
           errno == EINTR) {
    }
  }
  // Let go of the zygote before thread_done(): the driver's destructor waits for that and then
  // ends the zygote, which must not outlive the driver because an instance still held it.
  zygote_.reset();
  drain();
  bool oom = false;
  if (cgroup_) {
    oom = cgroup_->oom_killed();
    // Back to the driver's idle groups for a later instance (removed if anything is left in it).
    driver_.release_cgroup(std::move(cgroup_));
  }
  InstanceExit exit;
  exit.instance = name_;
  bool was_ready = false;
  std::vector<std::unique_ptr<Pending>> timed_out, failed;
  std::optional<Error> failed_with;
  {
    std::lock_guard lock(mutex_);
    exit_ = info;
    oom_ = oom;
    was_ready = state_ == State::ready;
    if (!was_ready) {
      start_error_ = ready_timed_out ? Error(errc::timeout, "handler of '" + options_.function +
                                                                "' was not ready after " +
                                                                format_duration(start_timeout_))
                                     : failure("before ready");
    }
    state_ = State::exited;
    exit.requested = kill_reason_ != KillReason::none && kill_reason_ != KillReason::protocol;
    exit.oom = oom;
    exit.reason = oom              ? "ran out of memory"
                  : !lost_.empty() ? "broke the instance protocol: " + lost_
                                   : describe_exit(info);
    // The async calls still in flight end here, as the waiting callers' do when they wake.
    timed_out.swap(timed_out_);
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->second->async) {
        failed.emplace_back(it->second);
        it = pending_.erase(it);
      } else {
        ++it;
      }
    }
    async_calls_ = 0;
    if (!failed.empty()) failed_with = failure("while handling the request");
  }
  changed_.notify_all();
  for (auto& p : timed_out) {
    const auto& a = *p->async;
    Error e = driver_.shut_down() ? Error(errc::unavailable, "the sandbox driver is shut down")
                                  : timeout_error(a.function, a.timeout, a.request_id);
    finish_async(std::move(p), std::make_exception_ptr(std::move(e)));
  }
  for (auto& p : failed) {
    const std::string& id = p->async->request_id;
    Error e = failed_with->code() == errc::handler_failed && !id.empty()
                  ? Error(errc::handler_failed, insert_request(failed_with->message(), id))
                  : *failed_with;
    finish_async(std::move(p), std::make_exception_ptr(std::move(e)));
  }
  {
    std::lock_guard lock(write_mutex_);
    request_.reset();
  }
  std::error_code ec;
  fs::remove_all(dir_, ec);
  if (was_ready && options_.on_exit) options_.on_exit(exit);
  driver_.thread_done(this);
}

void SandboxInstance::serve_until_exit(Clock::time_point start_deadline, bool& ready_timed_out) {
  char buf[64 * 1024];
  bool reading = true;  // the response pipe is this thread's until the handler is ready
  for (;;) {
    pollfd fds[5] = {{pidfd_.get(), POLLIN, 0},
                     {reading ? response_.get() : -1, POLLIN, 0},
                     {out_.get(), POLLIN, 0},
                     {err_.get(), POLLIN, 0},
                     {wake_.get(), POLLIN, 0}};
    bool start_late = false;
    bool expired = false;
    Clock::time_point wake_at = Clock::time_point::max();
    {
      std::lock_guard lock(mutex_);
      if (state_ == State::starting && !ready_timed_out) {
        wake_at = start_deadline;
        start_late = Clock::now() >= start_deadline;
      }
      expired = expire_async_calls();
      wake_at = std::min(wake_at, planned_wake_);
    }
    if (start_late) {
      ready_timed_out = true;
      signal_kill();
      continue;
    }
    if (expired) signal_kill();  // the timed-out calls are told once it is gone
    int wait_ms = -1;
    if (wake_at != Clock::time_point::max()) {
      wait_ms = static_cast<int>(std::clamp<long long>(
          std::chrono::ceil<milliseconds>(wake_at - Clock::now()).count(), 0, 1 << 30));
    }
    const int n = ::poll(fds, 5, wait_ms);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) continue;  // a deadline: looked at above
    if (fds[4].revents != 0) {
      std::uint64_t count = 0;
      [[maybe_unused]] const ssize_t got = ::read(wake_.get(), &count, sizeof count);
    }
    if (fds[1].revents != 0) {
      const ssize_t got = ::read(response_.get(), buf, sizeof buf);
      if (got > 0) {
        decoder_.feed({buf, static_cast<std::size_t>(got)});
        process_frames();
      } else if (got == 0) {
        // It closed its response pipe: it cannot answer any more.
        response_.reset();
        signal_kill();
      }
      std::unique_lock lock(mutex_);
      if (state_ == State::ready && lost_.empty()) {
        reading = false;  // callers read their answers from now on
        hand_over_reader(lock);
      }
    }
    for (int s = 0; s < 2; ++s) {
      UniqueFd& fd = s == 0 ? out_ : err_;
      if (fds[2 + s].revents == 0) continue;
      const ssize_t got = ::read(fd.get(), buf, sizeof buf);
      if (got > 0) {
        on_output(s, buf, static_cast<std::size_t>(got), false);
      } else if (got == 0) {
        on_output(s, nullptr, 0, true);
        fd.reset();
      }
    }
    if (fds[0].revents != 0) {
      if (reading) {
        std::lock_guard lock(mutex_);
        reader_busy_ = false;  // drain() takes it back
      }
      return;
    }
  }
}

// What the process wrote before it ended still counts (a last response, its last log lines).
void SandboxInstance::drain() {
  {
    // A caller reading the pipe sees the exit too and lets go, an async reader is cancelled (its
    // reactor still runs: its calls are in flight); nobody reads after this.
    std::unique_lock lock(mutex_);
    draining_ = true;
    if (async_reading_) {
      boost::system::error_code ignored;
      async_reader_->cancel(ignored);
    }
    changed_.wait(lock, [&] { return !reader_busy_; });
    reader_busy_ = true;
  }
  char buf[64 * 1024];
  for (int i = 0; i < 64 && response_.get() >= 0; ++i) {
    const ssize_t got = ::read(response_.get(), buf, sizeof buf);
    if (got <= 0) break;
    decoder_.feed({buf, static_cast<std::size_t>(got)});
    process_frames();
  }
  for (int s = 0; s < 2; ++s) {
    UniqueFd& fd = s == 0 ? out_ : err_;
    for (int i = 0; i < 64 && fd.get() >= 0; ++i) {
      const ssize_t got = ::read(fd.get(), buf, sizeof buf);
      if (got <= 0) break;
      on_output(s, buf, static_cast<std::size_t>(got), false);
    }
    on_output(s, nullptr, 0, true);
  }
  {
    std::lock_guard lock(mutex_);
    drop_registration();
  }
  response_.reset();
  out_.reset();
  err_.reset();
}

void SandboxInstance::process_frames() {
  v1::InstanceFrame frame;
  for (;;) {
    switch (decoder_.next(frame)) {
      case FrameDecoder::Status::need_more:
        return;
      case FrameDecoder::Status::too_large: {
        const std::uint64_t len = decoder_.rejected_length();
        // A length a little over the limit is a big response; anything wild is garbage.
        if (len <= 16 * decoder_.max_frame_bytes()) {
          return protocol_failure("sent a " + std::to_string(len) + "-byte frame", true);
        }
        return protocol_failure("sent a garbage frame (length prefix " + std::to_string(len) + ")");
      }
      case FrameDecoder::Status::malformed:
        return protocol_failure("sent a malformed frame");
      case FrameDecoder::Status::frame:
        break;
    }
    std::unique_lock lock(mutex_);
    if (!lost_.empty()) return;
    if (state_ == State::starting) {
      if (frame.kind_case() != v1::InstanceFrame::kReady) {
        lock.unlock();
        return protocol_failure("sent a frame other than ready first");
      }
      init_ = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - created_);
      state_ = State::ready;
      lock.unlock();
      changed_.notify_all();
      continue;
    }
    if (frame.kind_case() != v1::InstanceFrame::kResponse) {
      lock.unlock();
      return protocol_failure("sent a frame other than a response");
    }
    auto it = pending_.find(frame.response().request_id());
    if (it == pending_.end()) {
      const std::string id = frame.response().request_id();
      lock.unlock();
      return protocol_failure("answered request '" + id + "', which is not in flight");
    }
    Pending* p = it->second;
    p->response = std::move(*frame.mutable_response());
    p->done = true;
    pending_.erase(it);
    if (p->async) {
      --async_calls_;
      lock.unlock();
      finish_async(std::unique_ptr<Pending>(p), nullptr);
      continue;
    }
    lock.unlock();
    changed_.notify_all();
  }
}

void SandboxInstance::on_output(int stream, const char* data, std::size_t n, bool eof) {
  std::string& partial = partial_[stream];
  auto emit = [&](std::string line) {
    {
      std::lock_guard lock(mutex_);
      tail_.push_back(line);
      if (tail_.size() > k_log_tail_lines) tail_.pop_front();
    }
    if (options_.on_log) options_.on_log(name_, stream == 0 ? "stdout" : "stderr", std::move(line));
  };
  std::size_t begin = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (data[i] != '\n') continue;
    partial.append(data + begin, i - begin);
    emit(std::move(partial));
    partial.clear();
    begin = i + 1;
  }
  if (begin < n) partial.append(data + begin, n - begin);
  while (partial.size() > k_max_log_line) {
    emit(partial.substr(0, k_max_log_line));
    partial.erase(0, k_max_log_line);
  }
  if (eof && !partial.empty()) {
    emit(std::move(partial));
    partial.clear();
  }
}

void SandboxInstance::protocol_failure(std::string what, bool too_large) {
  {
    std::lock_guard lock(mutex_);
    if (!lost_.empty()) return;
    lost_ = std::move(what);
    lost_too_large_ = too_large;
    if (kill_reason_ == KillReason::none) kill_reason_ = KillReason::protocol;
  }
  signal_kill();
}

void SandboxInstance::signal_kill() {
  ::syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
}

// ---- what callers do ----

void SandboxInstance::wait_ready() {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return state_ != State::starting; });
  if (state_ == State::exited) {
    if (start_error_) throw *start_error_;
    throw Error(errc::unavailable, "instance " + name_ + " stopped before it was ready");
  }
}

void SandboxInstance::kill(KillReason why) {
  {
    std::lock_guard lock(mutex_);
    if (state_ == State::exited) return;
    if (kill_reason_ == KillReason::none) kill_reason_ = why;
  }
  // The pidfd lives as long as this object; after the reap the signal is a harmless ESRCH.
  signal_kill();
}

void SandboxInstance::stop(milliseconds grace) {
  {
    std::lock_guard lock(mutex_);
    if (state_ == State::exited) return;
    if (kill_reason_ == KillReason::none) kill_reason_ = KillReason::stopped;
  }
  {
    std::lock_guard lock(write_mutex_);
    request_.reset();  // EOF: "stop" in the protocol
  }
  std::unique_lock lock(mutex_);
  if (!changed_.wait_for(lock, grace, [&] { return state_ == State::exited; })) {
    lock.unlock();
    signal_kill();
    lock.lock();
    changed_.wait(lock, [&] { return state_ == State::exited; });
  }
}

std::string SandboxInstance::request_frame(const Invocation& inv, milliseconds timeout) {
  v1::InstanceFrame frame;
  auto* req = frame.mutable_request();
  req->set_request_id(inv.request_id);
  req->set_payload(inv.payload);
  req->set_function(inv.function);
  req->set_memory_limit_mib(inv.spec.memory_mib());
  req->set_deadline_unix_ms(std::chrono::duration_cast<milliseconds>(
                                (std::chrono::system_clock::now() + timeout).time_since_epoch())
                                .count());
  return encode_frame(frame);
}

bool SandboxInstance::write_request(const std::string& bytes, Clock::time_point deadline) {
  SigpipeGuard guard;
  std::size_t done = 0;
  while (done < bytes.size() && request_.get() >= 0) {
    const ssize_t n = ::write(request_.get(), bytes.data() + done, bytes.size() - done);
    if (n > 0) {
      done += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      const auto left = std::chrono::ceil<milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return false;
      std::array<pollfd, 2> fds{{{request_.get(), POLLOUT, 0}, {pidfd_.get(), POLLIN, 0}}};
      ::poll(fds.data(), fds.size(), static_cast<int>(std::min<long long>(left.count(), 1 << 30)));
      if (fds[1].revents != 0) break;  // it died: the instance thread tells why
      continue;
    }
    if (n < 0 && errno == EPIPE) guard.raised();
    break;  // the instance is gone; the verdict is the instance thread's
  }
  return true;
}

InvocationResult SandboxInstance::result_of(v1::InstanceResponse& response,
                                            const std::string& function,
                                            Clock::time_point sent) const {
  const auto duration = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - sent);
  if (!response.error().empty() || !response.error_type().empty()) {
    const std::string type = response.error_type().empty() ? "Error" : response.error_type();
    throw Error(errc::handler_failed, type + ": " + response.error());
  }
  if (response.result().size() > max_payload_) {
    throw Error(errc::payload_too_large,
                "response of '" + function + "' is " + std::to_string(response.result().size()) +
                    " bytes, over the limit of " + std::to_string(max_payload_));
  }
  InvocationResult out;
  out.result = response.result().empty() ? "null" : std::move(*response.mutable_result());
  out.duration = duration;
  out.cold_start = false;
  return out;
}

void SandboxInstance::check_running(const std::string& function) const {
  if (state_ != State::ready || kill_reason_ != KillReason::none) {
    throw Error(errc::unavailable,
                "instance " + name_ + " of '" + function + "' is no longer running");
  }
}

void SandboxInstance::add_pending(const std::string& request_id, Pending* pending) {
  if (!pending_.emplace(request_id, pending).second) {
    throw Error(errc::invalid_spec, "request id '" + request_id + "' is already in flight",
                "request_id");
  }
}

InvocationResult SandboxInstance::call(const Invocation& inv) {
  check_payload(inv);
  const milliseconds timeout = spec_timeout(inv.spec, inv.timeout);
  Pending pending;
  {
    std::lock_guard lock(mutex_);
    check_running(inv.function);
    add_pending(inv.request_id, &pending);
  }
  const std::string bytes = request_frame(inv, timeout);
  const auto sent = Clock::now();
  const auto deadline = sent + timeout;
  bool timed_out = false;
  {
    std::lock_guard wlock(write_mutex_);
    timed_out = !write_request(bytes, deadline);
  }

  std::unique_lock lock(mutex_);
  ++role_waiters_;
  bool waiting = true;  // counted in role_waiters_
  while (!timed_out && !pending.done && state_ != State::exited) {
    if (!reader_busy_) {
      reader_busy_ = true;
      --role_waiters_;
      waiting = false;
      lock.unlock();
      const ReadEnd end = read_until_answered(pending, deadline);
      lock.lock();
      hand_over_reader(lock);
      if (end == ReadEnd::timed_out) timed_out = !pending.done;
      break;  // answered, timed out, or gone (then the verdict is the instance thread's, below)
    }
    timed_out = !changed_.wait_until(
        lock, deadline, [&] { return pending.done || state_ == State::exited || !reader_busy_; });
  }
  if (waiting) {
    --role_waiters_;
    // Answered (or timed out) while waiting: the role this caller was woken for may now be free
    // with async calls still to read for.
    if (!reader_busy_) {
      reader_busy_ = true;
      hand_over_reader(lock);
    }
  }
  if (!pending.done) {
    pending_.erase(inv.request_id);
    if (timed_out && state_ != State::exited) {
      if (kill_reason_ == KillReason::none) kill_reason_ = KillReason::timeout;
      lock.unlock();
      signal_kill();
      lock.lock();
      // Return only once the whole instance (and whatever it started) is gone.
      changed_.wait_for(lock, k_reap_wait, [&] { return state_ == State::exited; });
    } else if (!timed_out) {
      // Whatever ended the instance, wait for the thread's verdict (the exit status).
      changed_.wait_for(lock, k_reap_wait, [&] { return state_ == State::exited; });
    }
    if (timed_out) {
      if (driver_.shut_down()) throw Error(errc::unavailable, "the sandbox driver is shut down");
      throw timeout_error(inv.function, timeout, inv.request_id);
    }
    Error e = failure("while handling the request");
    if (e.code() == errc::handler_failed && !inv.request_id.empty()) {
      throw Error(errc::handler_failed, insert_request(e.message(), inv.request_id));
    }
    throw e;
  }
  lock.unlock();
  return result_of(pending.response, inv.function, sent);
}

bool SandboxInstance::call_async(const Invocation& inv, const asio::any_io_executor& executor,
                                 CallCompletion complete) {
  check_payload(inv);
  auto owned = std::make_unique<Pending>();
  owned->async = std::make_unique<Pending::Async>();
  Pending::Async& a = *owned->async;
  a.complete = std::move(complete);
  a.executor = executor;
  a.function = inv.function;
  a.request_id = inv.request_id;
  a.timeout = spec_timeout(inv.spec, inv.timeout);
  const std::string bytes = request_frame(inv, a.timeout);
  a.sent = Clock::now();
  a.deadline = a.sent + a.timeout;
  const auto deadline = a.deadline;
  // Held from the room check to the end of the write, so no other frame takes the room first.
  // Another writer in the middle of a frame (a large one may wait for the handler): this call
  // waits on a thread instead of this caller's io thread.
  std::unique_lock wlock(write_mutex_, std::try_to_lock);
  if (!wlock.owns_lock()) return false;
  bool wake = false;
  {
    std::lock_guard lock(mutex_);
    check_running(inv.function);
    // The frame must fit in the pipe beside the requests queued ahead (none when no call is in
    // flight), or its write would block the caller's io thread until the handler reads.
    int queued = 0;
    if (!pending_.empty() && ::ioctl(request_.get(), FIONREAD, &queued) != 0) return false;
    if (static_cast<std::size_t>(queued) + bytes.size() > request_pipe_size_) return false;
    add_pending(inv.request_id, owned.get());
    static_cast<void>(owned.release());  // whoever ends the call owns it from here on
    ++async_calls_;
    if (deadline < planned_wake_) {
      planned_wake_ = deadline;
      wake = true;
    }
  }
  if (wake) {
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(wake_.get(), &one, sizeof one);
  }
  // Not written by its deadline: the instance thread times it out.
  write_request(bytes, deadline);
  wlock.unlock();
  std::unique_lock lock(mutex_);
  if (!reader_busy_) {
    reader_busy_ = true;
    hand_over_reader(lock);  // to this call's reactor, unless a caller waits for the pipe
  }
  return true;
}

void SandboxInstance::hand_over_reader(std::unique_lock<std::mutex>& lock) {
  if (role_waiters_ == 0 && !draining_ && state_ == State::ready) {
    const asio::any_io_executor* executor = nullptr;
    for (const auto& [id, p] : pending_) {
      if (p->async) {
        executor = &p->async->executor;
        break;
      }
    }
    if (executor != nullptr) {
      try {
        read_async(*executor);
        return;
      } catch (const std::exception& e) {
        // The pipe cannot be watched there: nobody could read these answers.
        spdlog::error("sandbox: instance {}: cannot read its responses: {}", name_, e.what());
        async_reading_ = false;
        drop_registration();
        lock.unlock();
        signal_kill();
        lock.lock();
      }
    }
  }
  reader_busy_ = false;
  changed_.notify_all();
}

void SandboxInstance::read_async(const asio::any_io_executor& executor) {
  auto& context = asio::query(executor, asio::execution::context);
  if (async_reader_ &&
      &asio::query(async_reader_->get_executor(), asio::execution::context) != &context) {
    drop_registration();  // another reactor reads it now
  }
  if (!async_reader_) {
    async_reader_ =
        std::make_unique<asio::posix::stream_descriptor>(plain(executor), response_.get());
    registered_with_ = &asio::use_service<PipeReaders>(context);
    registered_with_->add(shared_from_this());
    if (!async_buffer_) async_buffer_ = std::make_unique<std::array<char, k_read_chunk>>();
  }
  async_reading_ = true;
  async_reader_->async_read_some(
      asio::buffer(*async_buffer_),
      [self = shared_from_this()](const boost::system::error_code& ec, std::size_t n) {
        self->on_async_read(ec, n);
      });
}

void SandboxInstance::on_async_read(const boost::system::error_code& ec, std::size_t n) {
  if (!ec) {
    decoder_.feed({async_buffer_->data(), n});
    process_frames();  // runs the answered async calls' completions, here
  } else if (ec != asio::error::operation_aborted) {
    signal_kill();  // EOF or a broken pipe: it cannot answer any more
  }
  std::unique_lock lock(mutex_);
  if (!async_reading_) return;  // its reactor went away meanwhile (forget_reactor)
  if (!ec && role_waiters_ == 0 && !draining_ && state_ == State::ready) {
    // Go on while calls of this reactor wait for their answers.
    const auto& mine = asio::query(async_reader_->get_executor(), asio::execution::context);
    for (const auto& [id, p] : pending_) {
      if (p->async && &asio::query(p->async->executor, asio::execution::context) == &mine) {
        read_async(async_reader_->get_executor());  // still registered there
        return;
      }
    }
  }
  async_reading_ = false;
  if (ec && ec != asio::error::operation_aborted) drop_registration();  // the pipe is done
  hand_over_reader(lock);
}

void SandboxInstance::drop_registration() {
  if (async_reader_) {
    async_reader_->release();  // deregisters; the pipe stays open: it is response_
    async_reader_.reset();
  }
  if (registered_with_ != nullptr) {
    registered_with_->remove(this);
    registered_with_ = nullptr;
  }
}

void SandboxInstance::forget_reactor(PipeReaders& readers) {
  std::lock_guard lock(mutex_);
  if (registered_with_ != &readers) return;
  registered_with_ = nullptr;  // its list is being emptied: no remove()
  if (async_reader_) {
    async_reader_->release();
    async_reader_.reset();
  }
  if (async_reading_) {
    // Its context was destroyed with a call of ours in flight, so that read never completes. Let
    // go of the role; the calls left time out (or a caller reading takes them over).
    async_reading_ = false;
    reader_busy_ = false;
    changed_.notify_all();
  }
}

void PipeReaders::add(const std::shared_ptr<SandboxInstance>& instance) {
  std::lock_guard lock(mutex_);
  instances_[instance.get()] = instance;
}

void PipeReaders::remove(const SandboxInstance* instance) {
  std::lock_guard lock(mutex_);
  instances_.erase(instance);
}

void PipeReaders::shutdown() {
  std::map<const SandboxInstance*, std::weak_ptr<SandboxInstance>> instances;
  {
    std::lock_guard lock(mutex_);
    instances.swap(instances_);
  }
  for (auto& [raw, weak] : instances) {
    if (auto instance = weak.lock()) instance->forget_reactor(*this);
  }
}

void SandboxInstance::finish_async(std::unique_ptr<Pending> p, std::exception_ptr error) {
  InvocationResult out;
  if (!error) {
    try {
      out = result_of(p->response, p->async->function, p->async->sent);
    } catch (...) {
      error = std::current_exception();
    }
  }
  p->async->complete(error, std::move(out));
}

bool SandboxInstance::expire_async_calls() {
  planned_wake_ = Clock::time_point::max();
  if (async_calls_ == 0) return false;
  const auto now = Clock::now();
  bool expired = false;
  for (auto it = pending_.begin(); it != pending_.end();) {
    Pending* p = it->second;
    if (!p->async) {
      ++it;
    } else if (p->async->deadline <= now) {
      timed_out_.emplace_back(p);
      it = pending_.erase(it);
      --async_calls_;
      expired = true;
    } else {
      planned_wake_ = std::min(planned_wake_, p->async->deadline);
      ++it;
    }
  }
  if (expired && kill_reason_ == KillReason::none) kill_reason_ = KillReason::timeout;
  return expired;
}

SandboxInstance::ReadEnd SandboxInstance::read_until_answered(const Pending& mine,
                                                              Clock::time_point deadline) {
  std::array<char, k_read_chunk> buf;  // not zeroed: on every call's path
  for (;;) {
    // The answer is rarely there yet when the request has just been written: poll first.
    const auto left = std::chrono::ceil<milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return ReadEnd::timed_out;
    std::array<pollfd, 2> fds{{{response_.get(), POLLIN, 0}, {pidfd_.get(), POLLIN, 0}}};
    const int n = ::poll(fds.data(), fds.size(),
                         static_cast<int>(std::min<long long>(left.count(), 1 << 30)));
    if (n < 0 && errno != EINTR) return ReadEnd::gone;
    if (fds[0].revents == 0) {
      if (fds[1].revents != 0) return ReadEnd::gone;  // exited with nothing more to say
      continue;
    }
    for (;;) {
      const ssize_t got = ::read(response_.get(), buf.data(), buf.size());
      if (got > 0) {
        decoder_.feed({buf.data(), static_cast<std::size_t>(got)});
        process_frames();  // sets mine.done, from this thread
        if (mine.done) return ReadEnd::answered;
        continue;
      }
      if (got < 0 && errno == EINTR) continue;
      if (got < 0 && errno == EAGAIN) break;
      signal_kill();  // it closed its response pipe: it cannot answer any more
      return ReadEnd::gone;
    }
  }
}

// Called with mutex_ held.
Error SandboxInstance::failure(const char* phase) const {
  const std::string who = "handler of '" + options_.function + "'";
  switch (kill_reason_) {
    case KillReason::shutdown:
      return Error(errc::unavailable, "the sandbox driver is shut down");
    case KillReason::stopped:
      return Error(errc::unavailable,
                   "instance " + name_ + " of '" + options_.function + "' was stopped");
    case KillReason::timeout:
      return Error(errc::handler_failed,
                   who + " was killed " + phase + ": another call on its instance timed out");
    default:
      break;
  }
  if (lost_too_large_) {
    return Error(errc::payload_too_large,
                 who + " " + lost_ + ", over the payload limit of " + std::to_string(max_payload_));
  }
  std::string msg;
  if (oom_) {
    msg = who + " ran out of memory (limit " + std::to_string(options_.spec.memory_mib()) +
          " MiB) " + phase;
  } else if (!lost_.empty()) {
    msg = who + " broke the instance protocol: it " + lost_ + " " + phase;
  } else {
    msg = who + " " + (exit_ ? describe_exit(*exit_) : std::string("exited")) + " " + phase;
  }
  const std::string t = tail();
  if (!t.empty()) msg += "; last log lines:\n" + t;
  return Error(errc::handler_failed, msg);
}

std::string SandboxInstance::tail() const {
  std::string out;
  for (const auto& l : tail_) out += (out.empty() ? "" : "\n") + l;
  return out;
}

}  // namespace

std::unique_ptr<Driver> make_sandbox_driver(SandboxOptions options) {
  return std::make_unique<SandboxDriver>(std::move(options));
}

}  // namespace blixard::runtime
