// The sandbox driver: runs function handlers as namespaced, cgroup-limited processes speaking the
// instance protocol (docs/instance-protocol.md). An instance's life is start -> wait ready ->
// request/response (any number of times) -> stop; today each invoke() uses a fresh instance, and
// the same steps are what a warm pool reuses.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>

#include <spdlog/spdlog.h>

#include "runtime/cgroup.hpp"
#include "runtime/driver.hpp"
#include "runtime/embedded.hpp"
#include "runtime/frame.hpp"
#include "runtime/spawn.hpp"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

namespace blixard::runtime {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr std::uint64_t k_default_max_payload = 6u << 20;
constexpr milliseconds k_default_timeout{30'000};
// A handler gets at least this long to import its code and say ready (as Lambda's init phase).
constexpr milliseconds k_min_start_timeout{10'000};
// Room in a response frame besides the result (ids, error text).
constexpr std::size_t k_frame_overhead = 64 * 1024;
constexpr std::uint64_t k_pids_max = 1024;
// RLIMIT_AS counts mappings never touched (libraries, arenas, stacks): give them room.
constexpr std::uint64_t k_address_space_headroom = 512ull << 20;
constexpr std::size_t k_log_tail_lines = 20;
constexpr milliseconds k_stop_grace{200};

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    reset(std::exchange(o.fd_, -1));
    return *this;
  }
  ~UniqueFd() { reset(); }
  int get() const noexcept { return fd_; }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

std::pair<UniqueFd, UniqueFd> make_pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    throw Error(errc::unavailable, std::string("pipe: ") + std::strerror(errno));
  }
  return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

std::string format_duration(milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + "s";
  return std::to_string(d.count()) + "ms";
}

std::string sanitize(const std::string& name) {
  std::string out;
  for (char c : name) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '-') ? c : '_';
  return out.empty() ? "fn" : out.substr(0, 48);
}

// The last lines of the instance's log, for error messages.
std::string log_tail(const fs::path& log) {
  std::ifstream in(log, std::ios::binary);
  if (!in) return {};
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  const std::streamoff start = size > 8192 ? size - 8192 : 0;
  in.seekg(start);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::deque<std::string> lines;
  std::istringstream ss(text);
  bool first = start > 0;  // a partial first line is noise
  for (std::string line; std::getline(ss, line);) {
    if (std::exchange(first, false) || line.empty()) continue;
    lines.push_back(std::move(line));
    if (lines.size() > k_log_tail_lines) lines.pop_front();
  }
  std::string out;
  for (const auto& l : lines) out += (out.empty() ? "" : "\n") + l;
  return out;
}

// A PATH lookup done in the parent (execvpe would allocate between clone and exec).
std::optional<fs::path> find_executable(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::istringstream ss(path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin");
  for (std::string dir; std::getline(ss, dir, ':');) {
    if (dir.empty()) dir = ".";
    fs::path candidate = fs::path(dir) / name;
    if (::access(candidate.c_str(), X_OK) == 0 && !fs::is_directory(candidate)) {
      return fs::absolute(candidate);
    }
  }
  return std::nullopt;
}

// Blocks SIGPIPE in this thread while writing to a pipe whose reader may be gone, and swallows the
// one we raise: the agent must not die of a handler that exited.
class SigpipeGuard {
 public:
  SigpipeGuard() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    ::pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
  }
  ~SigpipeGuard() {
    if (raised_ && !was_pending_) {
      const timespec zero{};
      ::sigtimedwait(&pipe_, nullptr, &zero);
    }
    ::pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  void raised() noexcept { raised_ = true; }

 private:
  sigset_t pipe_{}, old_{};
  bool was_pending_ = false;
  bool raised_ = false;
};

// Thrown inside the driver when the handler process went away or broke the protocol; invoke()
// turns it into a blixard::Error once the exit status is known.
struct InstanceLost {
  std::string what;  // "before ready", "sent a malformed frame", ...
  bool protocol = false;
  bool too_large = false;
};
struct DeadlinePassed {};

}  // namespace

// One handler process and its pipes, cgroup and scratch directory.
struct Instance {
  std::string name;
  std::string function;
  std::uint64_t memory_mib = 0;
  fs::path dir;
  fs::path log;
  pid_t pid = -1;
  UniqueFd pidfd;
  UniqueFd request;   // our write end (fd 3 in the handler)
  UniqueFd response;  // our read end (fd 4 in the handler)
  FrameDecoder decoder{0};
  std::unique_ptr<InstanceCgroup> cgroup;
  bool namespaced = false;
  bool killed_by_us = false;
  bool oom_killed = false;        // read from the cgroup before it is removed
  std::optional<siginfo_t> exit;  // set once reaped

  Instance() = default;
  Instance(const Instance&) = delete;
  Instance& operator=(const Instance&) = delete;
  ~Instance() {
    cgroup.reset();
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
};

namespace {

class SandboxDriver final : public Driver {
 public:
  explicit SandboxDriver(SandboxOptions options)
      : options_(std::move(options)), cgroups_(options_.cgroup_parent) {
    std::error_code ec;
    options_.work_dir = fs::absolute(options_.work_dir);
    fs::create_directories(options_.work_dir / "instances", ec);
    if (ec) {
      throw Error(errc::unavailable, "cannot create " + (options_.work_dir / "instances").string() +
                                         ": " + ec.message());
    }
    write_runtime();
    python_ = resolve_python(options_.python);
    if (cgroups_.mode() == CgroupManager::Mode::none) {
      spdlog::warn("sandbox: no cgroups ({}); memory limits fall back to RLIMIT_AS",
                   cgroups_.reason());
    }
  }

  ~SandboxDriver() override {
    shutdown();
    // In-flight invocations notice their killed instance and unwind; wait for them.
    std::unique_lock lock(mutex_);
    drained_.wait(lock, [&] { return live_.empty(); });
  }

  std::string name() const override { return "sandbox"; }

  InvocationResult invoke(const Invocation& inv) override {
    if (shut_down_) throw Error(errc::unavailable, "the sandbox driver is shut down");
    const auto& spec = inv.spec;
    const std::uint64_t limit =
        spec.max_payload_bytes() != 0 ? spec.max_payload_bytes() : k_default_max_payload;
    if (inv.payload.size() > limit) {
      throw Error(errc::payload_too_large,
                  "request payload is " + std::to_string(inv.payload.size()) +
                      " bytes, over the limit of " + std::to_string(limit),
                  "payload");
    }
    milliseconds timeout = inv.timeout;
    if (timeout.count() <= 0) {
      timeout = milliseconds(spec.timeout().seconds() * 1000 + spec.timeout().nanos() / 1'000'000);
    }
    if (timeout.count() <= 0) timeout = k_default_timeout;

    const auto started = Clock::now();
    const milliseconds start_timeout = std::max(timeout, k_min_start_timeout);
    auto instance = start_instance(inv.function, spec, limit);
    const char* phase = "before ready";
    try {
      wait_ready(*instance, started + start_timeout);
      phase = "while handling the request";
      v1::InstanceFrame frame;
      auto* req = frame.mutable_request();
      req->set_request_id(inv.request_id);
      req->set_payload(inv.payload);
      req->set_function(inv.function);
      req->set_memory_limit_mib(spec.memory_mib());
      req->set_deadline_unix_ms(std::chrono::duration_cast<milliseconds>(
                                    (std::chrono::system_clock::now() + timeout).time_since_epoch())
                                    .count());
      const auto sent = Clock::now();
      const auto deadline = sent + timeout;
      send(*instance, encode_frame(frame), deadline);
      v1::InstanceResponse response = await_response(*instance, inv.request_id, deadline);
      const auto duration =
          std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - sent);
      stop_instance(*instance, k_stop_grace);

      if (!response.error().empty() || !response.error_type().empty()) {
        const std::string type = response.error_type().empty() ? "Error" : response.error_type();
        throw Error(errc::handler_failed, type + ": " + response.error());
      }
      if (response.result().size() > limit) {
        throw Error(errc::payload_too_large, "response of '" + inv.function + "' is " +
                                                 std::to_string(response.result().size()) +
                                                 " bytes, over the limit of " +
                                                 std::to_string(limit));
      }
      InvocationResult out;
      out.result = response.result().empty() ? "null" : response.result();
      out.duration = duration;
      out.cold_start = true;
      return out;
    } catch (const DeadlinePassed&) {
      stop_instance(*instance, milliseconds(0));
      if (shut_down_) throw Error(errc::unavailable, "the sandbox driver is shut down");
      if (std::string_view(phase) == "before ready") {
        throw Error(errc::timeout, "handler of '" + inv.function + "' was not ready after " +
                                       format_duration(start_timeout));
      }
      throw Error(errc::timeout,
                  "function '" + inv.function + "' timed out after " + format_duration(timeout) +
                      (inv.request_id.empty() ? "" : " (request " + inv.request_id + ")"));
    } catch (const InstanceLost& lost) {
      stop_instance(*instance, milliseconds(0));
      throw failure(*instance, inv, lost, phase, limit);
    } catch (...) {
      stop_instance(*instance, milliseconds(0));
      throw;
    }
  }

  void shutdown() override {
    shut_down_ = true;
    std::lock_guard lock(mutex_);
    for (Instance* in : live_) kill_instance(*in);
  }

 private:
  // ---- instance lifecycle ----

  std::shared_ptr<Instance> start_instance(const std::string& function,
                                           const v1::FunctionSpec& spec,
                                           std::uint64_t max_payload) {
    auto in = std::make_shared<Instance>();
    in->function = function;
    in->memory_mib = spec.memory_mib();
    in->name =
        sanitize(function) + "-" + std::to_string(::getpid()) + "-" + std::to_string(++counter_);
    in->dir = options_.work_dir / "instances" / in->name;
    in->log = in->dir / "log";
    in->decoder = FrameDecoder(max_payload + k_frame_overhead);

    SpawnRequest req;
    req.argv = command_for(function, spec);
    req.cwd = spec.code().empty() ? in->dir.string() : spec.code();
    req.env = environment(function, spec, in->name);

    std::error_code ec;
    fs::create_directories(in->dir, ec);
    if (ec)
      throw Error(errc::unavailable, "cannot create " + in->dir.string() + ": " + ec.message());
    UniqueFd log(::open(in->log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640));
    if (log.get() < 0) {
      fs::remove_all(in->dir, ec);
      throw Error(errc::unavailable,
                  "cannot open " + in->log.string() + ": " + std::strerror(errno));
    }
    auto [req_read, req_write] = make_pipe();
    auto [resp_read, resp_write] = make_pipe();
    req.request_fd = req_read.get();
    req.response_fd = resp_write.get();
    req.log_fd = log.get();

    const std::uint64_t memory_bytes = spec.memory_mib() << 20;
    std::string why;
    in->cgroup = cgroups_.create(in->name, memory_bytes, k_pids_max, &why);
    if (in->cgroup) {
      req.cgroup_procs = in->cgroup->procs_files();
    } else {
      if (cgroups_.mode() != CgroupManager::Mode::none) {
        warn_once(cgroup_warned_, "sandbox: cannot create an instance cgroup ({}); using RLIMIT_AS",
                  why);
      }
      if (memory_bytes != 0) req.address_space_limit = memory_bytes + k_address_space_headroom;
    }
    req.namespaces = !namespaces_refused_;

    Spawned child;
    try {
      child = spawn_sandboxed(req);
    } catch (...) {
      in->cgroup.reset();
      fs::remove_all(in->dir, ec);
      throw;
    }
    if (child.namespace_errno != 0) {
      namespaces_refused_ = true;
      warn_once(ns_warned_,
                "sandbox: cannot create namespaces ({}); running handlers as plain processes",
                std::strerror(child.namespace_errno));
    }
    in->pid = child.pid;
    in->pidfd = UniqueFd(child.pidfd);
    in->namespaced = child.namespaced;
    in->request = std::move(req_write);
    in->response = std::move(resp_read);
    set_nonblocking(in->request.get());
    set_nonblocking(in->response.get());
    // req_read, resp_write and log close here: the handler holds the only copies now, so its
    // exit shows as EOF on our ends.
    std::lock_guard lock(mutex_);
    live_.insert(in.get());
    if (shut_down_) kill_instance(*in);
    return in;
  }

  void wait_ready(Instance& in, Clock::time_point deadline) {
    v1::InstanceFrame frame;
    read_frame(in, frame, deadline);
    if (frame.kind_case() != v1::InstanceFrame::kReady) {
      throw InstanceLost{"sent a frame other than ready first", true};
    }
  }

  v1::InstanceResponse await_response(Instance& in, const std::string& request_id,
                                      Clock::time_point deadline) {
    v1::InstanceFrame frame;
    read_frame(in, frame, deadline);
    if (frame.kind_case() != v1::InstanceFrame::kResponse) {
      throw InstanceLost{"sent a frame other than a response", true};
    }
    if (frame.response().request_id() != request_id) {
      throw InstanceLost{"answered request '" + frame.response().request_id() + "' instead of '" +
                             request_id + "'",
                         true};
    }
    return std::move(*frame.mutable_response());
  }

  // Writes a whole frame, or throws InstanceLost / DeadlinePassed.
  void send(Instance& in, const std::string& bytes, Clock::time_point deadline) {
    SigpipeGuard guard;
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::write(in.request.get(), bytes.data() + done, bytes.size() - done);
      if (n > 0) {
        done += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EPIPE) {
        guard.raised();
        throw InstanceLost{"closed its request pipe"};
      }
      if (n < 0 && errno != EAGAIN)
        throw InstanceLost{std::string("write: ") + std::strerror(errno)};
      wait_for(in, in.request.get(), POLLOUT, deadline);
    }
  }

  // Reads until one whole frame is decoded. The handler exiting ends the wait too; what it wrote
  // before exiting still counts.
  void read_frame(Instance& in, v1::InstanceFrame& out, Clock::time_point deadline) {
    char buf[64 * 1024];
    for (;;) {
      switch (in.decoder.next(out)) {
        case FrameDecoder::Status::frame:
          return;
        case FrameDecoder::Status::too_large: {
          const std::uint64_t len = in.decoder.rejected_length();
          // A length a little over the limit is a big response; anything wild is garbage.
          if (len <= 16 * in.decoder.max_frame_bytes()) {
            throw InstanceLost{"sent a " + std::to_string(len) + "-byte frame", false, true};
          }
          throw InstanceLost{"sent a garbage frame (length prefix " + std::to_string(len) + ")",
                             true};
        }
        case FrameDecoder::Status::malformed:
          throw InstanceLost{"sent a malformed frame", true};
        case FrameDecoder::Status::need_more:
          break;
      }
      const ssize_t n = ::read(in.response.get(), buf, sizeof buf);
      if (n > 0) {
        in.decoder.feed({buf, static_cast<std::size_t>(n)});
        continue;
      }
      if (n == 0) {
        if (in.decoder.buffered() > 0) throw InstanceLost{"exited in the middle of a frame"};
        throw InstanceLost{"exited"};
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN) throw InstanceLost{std::string("read: ") + std::strerror(errno)};
      if (!wait_for(in, in.response.get(), POLLIN, deadline)) {
        // The process is gone but a descendant may hold the pipe open: drain what is there.
        const ssize_t m = ::read(in.response.get(), buf, sizeof buf);
        if (m > 0) {
          in.decoder.feed({buf, static_cast<std::size_t>(m)});
          continue;
        }
        if (in.decoder.next(out) == FrameDecoder::Status::frame) return;
        throw InstanceLost{"exited"};
      }
    }
  }

  // Waits for `events` on fd. Returns false when the handler process exited first; throws
  // DeadlinePassed at the deadline.
  bool wait_for(Instance& in, int fd, short events, Clock::time_point deadline) {
    for (;;) {
      const auto left = std::chrono::ceil<milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) throw DeadlinePassed{};
      pollfd fds[2] = {{fd, events, 0}, {in.pidfd.get(), POLLIN, 0}};
      const int n = ::poll(fds, 2, static_cast<int>(std::min<long long>(left.count(), 1 << 30)));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw InstanceLost{std::string("poll: ") + std::strerror(errno)};
      if (fds[0].revents != 0) return true;
      if (fds[1].revents != 0) return false;
    }
  }

  void kill_instance(Instance& in) {
    in.killed_by_us = true;
    ::syscall(SYS_pidfd_send_signal, in.pidfd.get(), SIGKILL, nullptr, 0);
  }

  // Ends the instance: EOF on its request pipe first (a clean exit), SIGKILL after `grace`; then
  // reaps it and removes its cgroup and directory. Killing the PID namespace's init kills all of
  // the instance; a plain process gets its process group and cgroup killed too.
  void stop_instance(Instance& in, milliseconds grace) {
    if (in.exit) return;
    in.request.reset();
    if (grace.count() > 0) {
      pollfd p{in.pidfd.get(), POLLIN, 0};
      while (::poll(&p, 1, static_cast<int>(grace.count())) < 0 && errno == EINTR) {
      }
      if (p.revents == 0) {
        std::lock_guard lock(mutex_);
        kill_instance(in);
      }
    } else {
      std::lock_guard lock(mutex_);
      kill_instance(in);
    }
    if (!in.namespaced) {
      ::kill(-in.pid, SIGKILL);  // the leader is unreaped, so its group id is still ours
      if (in.cgroup) in.cgroup->kill_all();
    }
    siginfo_t info{};
    while (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(in.pidfd.get()), &info,
                    WEXITED) != 0 &&
           errno == EINTR) {
    }
    in.exit = info;
    in.response.reset();
    if (in.cgroup) {
      in.oom_killed = in.cgroup->oom_killed();
      in.cgroup->remove();
    }
    {
      std::lock_guard lock(mutex_);
      live_.erase(&in);
      in.pidfd.reset();
    }
    drained_.notify_all();
  }

  // ---- error messages ----

  Error failure(Instance& in, const Invocation& inv, const InstanceLost& lost, const char* phase,
                std::uint64_t limit) {
    if (shut_down_) return Error(errc::unavailable, "the sandbox driver is shut down");
    const std::string who = "handler of '" + inv.function + "'";
    if (lost.too_large) {
      return Error(errc::payload_too_large,
                   who + " " + lost.what + ", over the payload limit of " + std::to_string(limit));
    }
    const bool oom = in.oom_killed;
    std::string msg;
    if (oom) {
      msg = who + " ran out of memory (limit " + std::to_string(in.memory_mib) + " MiB) " + phase;
    } else if (lost.protocol) {
      msg = who + " broke the instance protocol: it " + lost.what + " " + phase;
    } else {
      msg = who + " " + describe_exit(in) + " " + phase;
    }
    if (!inv.request_id.empty() && std::string_view(phase) != "before ready") {
      msg += " (request " + inv.request_id + ")";
    }
    const std::string tail = log_tail(in.log);
    if (!tail.empty()) msg += "; last log lines:\n" + tail;
    return Error(errc::handler_failed, msg);
  }

  static std::string describe_exit(const Instance& in) {
    if (!in.exit) return "exited";
    const siginfo_t& info = *in.exit;
    if (info.si_code == CLD_EXITED) return "exited with status " + std::to_string(info.si_status);
    const char* abbrev = sigabbrev_np(info.si_status);
    std::string sig =
        abbrev != nullptr ? std::string("SIG") + abbrev : std::to_string(info.si_status);
    return "was killed by signal " + std::to_string(info.si_status) + " (" + sig + ")";
  }

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
      std::vector<std::string> argv{python_, (options_.work_dir / "handler_runtime.py").string(),
                                    spec.handler()};
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

  void write_runtime() {
    const auto text = detail::embedded_handler_runtime();
    const fs::path target = options_.work_dir / "handler_runtime.py";
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
    std::error_code ec;
    fs::rename(tmp, target, ec);
    if (ec) throw Error(errc::unavailable, "cannot write " + target.string() + ": " + ec.message());
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
  CgroupManager cgroups_;
  std::string python_;
  std::atomic<std::uint64_t> counter_{0};
  std::atomic<bool> shut_down_{false};
  std::atomic<bool> namespaces_refused_{false};
  std::atomic<bool> ns_warned_{false};
  std::atomic<bool> cgroup_warned_{false};
  std::mutex mutex_;
  std::condition_variable drained_;
  std::set<Instance*> live_;
};

}  // namespace

std::unique_ptr<Driver> make_sandbox_driver(SandboxOptions options) {
  return std::make_unique<SandboxDriver>(std::move(options));
}

}  // namespace blixard::runtime
