// The agent's side of the Python zygote (see zygote.hpp): one thread starts it and then reads its
// messages (hello, spawned/failed replies, exit statuses); callers send spawn requests.
#include "runtime/zygote.hpp"

#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <boost/json.hpp>
#include <cerrno>
#include <cstring>

#include "blixard/error.hpp"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

namespace blixard::runtime {
namespace json = boost::json;

namespace {

constexpr std::size_t k_max_message = 1 << 20;
constexpr int k_max_fds = 4;
// A fork takes milliseconds; a zygote that does not answer in this long is stuck.
constexpr std::chrono::seconds k_spawn_reply_wait{10};

json::array strings(const std::vector<std::string>& v) {
  json::array out;
  out.reserve(v.size());
  for (const auto& s : v) out.emplace_back(s);
  return out;
}

// One SOCK_SEQPACKET message with up to k_max_fds descriptors. Returns false on EOF or error.
bool receive(int socket, std::string& text, std::vector<int>& fds) {
  text.resize(k_max_message);
  iovec iov{text.data(), text.size()};
  alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int) * k_max_fds)> control{};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  ssize_t n;
  while ((n = ::recvmsg(socket, &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {
  }
  if (n <= 0) return false;
  text.resize(static_cast<std::size_t>(n));
  fds.clear();
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      fds.push_back(fd);
    }
  }
  return true;
}

using Fds = std::array<int, k_max_fds>;

bool send_with_fds(int socket, const std::string& text, const Fds& fds) {
  iovec iov{const_cast<char*>(text.data()), text.size()};
  alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(Fds))> control{};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(Fds));
  std::memcpy(CMSG_DATA(c), fds.data(), sizeof(Fds));
  ssize_t n;
  while ((n = ::sendmsg(socket, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR) {
  }
  return n == static_cast<ssize_t>(text.size());
}

siginfo_t killed_status() {
  siginfo_t info{};
  info.si_code = CLD_KILLED;
  info.si_status = SIGKILL;
  return info;
}

}  // namespace

PythonZygote::PythonZygote(std::string python, std::filesystem::path runtime,
                           std::vector<std::string> env) {
  std::array<int, 2> pair{};
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair.data()) != 0) {
    state_ = State::gone;
    why_ = std::string("socketpair: ") + std::strerror(errno);
    return;
  }
  socket_ = pair[0];
  peer_ = pair[1];
  thread_ = std::thread(
      [this, python = std::move(python), runtime = std::move(runtime),
       env = std::move(env)]() mutable { run(std::move(python), runtime, std::move(env)); });
}

PythonZygote::~PythonZygote() {
  if (socket_ >= 0) ::shutdown(socket_, SHUT_RDWR);  // EOF: the zygote ends, our reader too
  {
    std::lock_guard lock(mutex_);
    if (pidfd_ >= 0) ::syscall(SYS_pidfd_send_signal, pidfd_, SIGKILL, nullptr, 0);
  }
  if (thread_.joinable()) thread_.join();
  for (int fd : {socket_, peer_, pidfd_}) {
    if (fd >= 0) ::close(fd);
  }
}

void PythonZygote::run(std::string python, const std::filesystem::path& runtime,
                       std::vector<std::string> env) {
  try {
    SpawnRequest req;
    req.argv = {std::move(python), "-S", runtime.string(), "--zygote"};
    req.env = std::move(env);
    req.request_fd = peer_;   // fd 3: the control socket
    req.response_fd = peer_;  // fd 4 is unused
    req.stdout_fd = STDERR_FILENO;
    req.stderr_fd = STDERR_FILENO;
    req.namespaces = false;  // the zygote stays in the host's; each child makes its own
    req.confined = false;    // and confines itself
    const Spawned child = spawn_sandboxed(req);
    std::lock_guard lock(mutex_);
    pidfd_ = child.pidfd;
  } catch (const Error& e) {
    mark_gone(std::string("cannot start the Python zygote: ") + e.what());
    return;
  }
  ::close(peer_);
  peer_ = -1;

  std::string text;
  std::vector<int> fds;
  while (receive(socket_, text, fds)) on_message(text, fds);

  siginfo_t info{};
  while (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd_), &info, WEXITED) != 0 &&
         errno == EINTR) {
  }
  std::string why = "the Python zygote ";
  if (info.si_code == CLD_EXITED) {
    why += "exited with status " + std::to_string(info.si_status);
  } else {
    why += "was killed by signal " + std::to_string(info.si_status);
  }
  mark_gone(why);
}

void PythonZygote::on_message(const std::string& text, std::vector<int>& fds) {
  json::object msg;
  try {
    msg = json::parse(text).as_object();
  } catch (const std::exception&) {
    for (int fd : fds) ::close(fd);
    return;
  }
  const auto str = [&](const char* key) -> std::string {
    const auto* v = msg.if_contains(key);
    return v != nullptr && v->is_string() ? std::string(v->get_string()) : std::string();
  };
  const auto num = [&](const char* key) -> std::int64_t {
    const auto* v = msg.if_contains(key);
    return v != nullptr && v->is_int64() ? v->get_int64() : -1;
  };
  const std::string kind = str("kind");
  std::unique_lock lock(mutex_);
  if (kind == "hello") {
    if (msg.contains("namespaces") && msg.at("namespaces").is_bool() &&
        msg.at("namespaces").get_bool()) {
      state_ = State::up;
    } else {
      state_ = State::refused;
      why_ = "the Python zygote may not create namespaces here: " + str("error");
    }
  } else if (kind == "spawned" || kind == "failed") {
    const auto it = replies_.find(static_cast<std::uint64_t>(num("id")));
    if (it == replies_.end()) {
      for (int fd : fds) ::close(fd);  // its caller gave up waiting
      if (kind == "spawned") {
        const auto pid = static_cast<pid_t>(num("pid"));
        abandoned_.insert(pid);
        ::kill(pid, SIGKILL);
      }
      return;
    }
    Reply& r = *it->second;
    r.done = true;
    if (kind == "spawned" && fds.size() == 1) {
      r.pid = static_cast<pid_t>(num("pid"));
      r.pidfd = fds[0];
      exits_.erase(r.pid);  // a stale status of a recycled pid
    } else {
      for (int fd : fds) ::close(fd);
      r.error = kind == "failed" ? str("error") : "no pidfd with the reply";
    }
    replies_.erase(it);
  } else if (kind == "exit") {
    siginfo_t info{};
    const std::int64_t signo = num("signal");
    info.si_code = signo > 0 ? CLD_KILLED : CLD_EXITED;
    info.si_status = static_cast<int>(signo > 0 ? signo : num("code"));
    info.si_pid = static_cast<pid_t>(num("pid"));
    if (abandoned_.erase(info.si_pid) == 0) exits_[info.si_pid] = info;
  } else {
    for (int fd : fds) ::close(fd);
    return;
  }
  lock.unlock();
  changed_.notify_all();
}

void PythonZygote::mark_gone(const std::string& why) {
  {
    std::lock_guard lock(mutex_);
    state_ = State::gone;
    if (why_.empty()) why_ = why;
    for (auto& [id, reply] : replies_) {
      reply->done = true;
      reply->error = why;
    }
    replies_.clear();
  }
  changed_.notify_all();
}

bool PythonZygote::gone() {
  std::lock_guard lock(mutex_);
  return state_ == State::gone;
}

std::string PythonZygote::why_gone() {
  std::lock_guard lock(mutex_);
  return why_;
}

bool PythonZygote::ready(std::chrono::milliseconds wait, std::string* why) {
  std::unique_lock lock(mutex_);
  changed_.wait_for(lock, wait, [&] { return state_ != State::starting; });
  if (why != nullptr) *why = state_ == State::starting ? "the Python zygote is not up yet" : why_;
  return state_ == State::up;
}

Spawned PythonZygote::spawn(const SpawnRequest& request, const std::vector<std::string>& args) {
  Reply reply;
  std::uint64_t id = 0;
  {
    std::lock_guard lock(mutex_);
    if (state_ != State::up) {
      throw Error(errc::unavailable, why_.empty() ? "the Python zygote is not up" : why_);
    }
    id = ++next_id_;
    replies_[id] = &reply;
  }
  json::object msg;
  msg["kind"] = "spawn";
  msg["id"] = id;
  msg["args"] = strings(args);
  msg["env"] = strings(request.env);
  msg["cwd"] = request.cwd;
  // The child is forked, not cloned into its namespaces: it unshares them itself.
  Confinement confine = request.confinement;
  confine.loopback = request.new_network;
  confine.unshare_flags =
      CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | (request.new_network ? CLONE_NEWNET : 0);
  msg["confine"] = strings(confinement_args(confine));
  const Fds fds = {request.request_fd, request.response_fd, request.stdout_fd, request.stderr_fd};
  bool sent = false;
  {
    std::lock_guard lock(send_mutex_);
    sent = send_with_fds(socket_, json::serialize(msg), fds);
  }
  std::unique_lock lock(mutex_);
  if (!sent) {
    replies_.erase(id);
    throw Error(errc::unavailable, std::string("cannot reach the Python zygote: ") +
                                       (why_.empty() ? std::strerror(errno) : why_));
  }
  if (!changed_.wait_for(lock, k_spawn_reply_wait, [&] { return reply.done; })) {
    replies_.erase(id);
    throw Error(errc::unavailable, "the Python zygote did not answer a spawn request in time");
  }
  if (!reply.error.empty()) throw Error(errc::unavailable, "Python zygote: " + reply.error);
  Spawned out;
  out.pid = reply.pid;
  out.pidfd = reply.pidfd;
  out.namespaced = true;
  return out;
}

siginfo_t PythonZygote::wait_exit(pid_t pid) {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return exits_.count(pid) != 0 || state_ == State::gone; });
  const auto it = exits_.find(pid);
  if (it == exits_.end()) return killed_status();
  const siginfo_t info = it->second;
  exits_.erase(it);
  return info;
}

}  // namespace blixard::runtime
