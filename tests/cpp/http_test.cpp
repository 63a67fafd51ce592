// The HTTP API end to end: a fake in-memory Backend served by HttpServer on 127.0.0.1, driven
// through make_http_backend (and raw sockets for what the client never sends: streams, the
// trigger gateway).
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/websocket.hpp>

#include "api/http_server.hpp"
#include "api/route_table.hpp"
#include "api/routes.hpp"
#include "api/websocket.hpp"
#include "blixard/error.hpp"
#include "client/http_backend.hpp"
#include "test_support.hpp"

namespace blixard {
namespace {

using namespace std::chrono_literals;
using detail::ApplyMode;
using testing::HasSubstr;

// Waits for `pred` under `mu`, up to a deadline that only a bug reaches.
template <class Pred>
bool wait_for(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, Pred pred) {
  return cv.wait_for(lock, 20s, pred);
}

// In-memory objects plus a few functions with fixed behaviour:
//   echo   returns its payload;  sleepy throws timeout;  slow waits until release_slow();
//   gather waits until `gather_expected` calls are in flight together;  respond returns what
//   respond_with() set;  busy throws throttled;  crashy throws handler_failed;  nap sleeps for
//   its payload's milliseconds (longer than the server's handoff time) and returns the payload;
//   held is asynchronous (try_invoke_async): no thread waits, and the calls held are answered
//   together, last first, from a thread of their own once `held_expected` are in or on
//   release_held().
// Logs and events are in-memory sequences that add_log()/add_event() extend; their long polls
// wait on a condition variable as the real ones do, and events take after < 0 as "from now".
class FakeBackend final : public detail::Backend {
 public:
  v1::ApplyResult apply(const v1::ObjectSet& set, const detail::ApplyOptions& options) override {
    std::lock_guard lock(mu_);
    last_apply_options = options;
    const ApplyMode mode = options.mode;
    auto functions = functions_;
    auto vms = vms_;
    auto triggers = triggers_;
    v1::ApplyResult result;
    auto apply_one = [&](auto& store, const auto& object, const char* kind, std::string path) {
      const std::string& name = object.metadata().name();
      if (name.empty())
        throw Error(errc::invalid_spec, "a name is required", path + ".metadata.name");
      if (object.metadata().labels().contains("bad")) {
        v1::Status s;
        s.set_code("invalid_spec");
        s.set_message("memory must be at least 16M");
        s.set_field(path + ".spec.memory");
        s.set_file("fn.yaml");
        s.set_line(3);
        s.set_column(11);
        throw Error(s);
      }
      bool exists = store.contains(name);
      auto* item = result.add_items();
      item->set_kind(kind);
      item->set_name(name);
      switch (mode) {
        case ApplyMode::create:
          if (exists)
            throw Error(errc::already_exists, std::string(kind) + " " + name + " exists", path);
          [[fallthrough]];
        case ApplyMode::apply:
          item->set_action(exists ? "configured" : "created");
          store[name] = object;
          store[name].mutable_metadata()->set_resource_version(revision_ + 1);
          break;
        case ApplyMode::remove:
          if (!exists)
            throw Error(errc::not_found, std::string(kind) + " " + name + " not found", path);
          item->set_action("deleted");
          store.erase(name);
          break;
      }
    };
    for (int i = 0; i < set.functions_size(); ++i) {
      apply_one(functions, set.functions(i), "Function", "functions[" + std::to_string(i) + "]");
    }
    for (int i = 0; i < set.vms_size(); ++i) {
      apply_one(vms, set.vms(i), "Vm", "vms[" + std::to_string(i) + "]");
    }
    for (int i = 0; i < set.triggers_size(); ++i) {
      apply_one(triggers, set.triggers(i), "Trigger", "triggers[" + std::to_string(i) + "]");
    }
    functions_ = std::move(functions);
    vms_ = std::move(vms);
    triggers_ = std::move(triggers);
    result.set_revision(++revision_);
    return result;
  }

  v1::Function get_function(const std::string& name) override {
    return get(functions_, name, "function");
  }
  v1::Vm get_vm(const std::string& name) override { return get(vms_, name, "vm"); }
  v1::Trigger get_trigger(const std::string& name) override {
    return get(triggers_, name, "trigger");
  }

  v1::FunctionList list_functions() override { return list<v1::FunctionList>(functions_); }
  v1::VmList list_vms() override { return list<v1::VmList>(vms_); }
  v1::TriggerList list_triggers() override { return list<v1::TriggerList>(triggers_); }
  v1::NodeList list_nodes() override {
    v1::NodeList out;
    out.add_items()->mutable_metadata()->set_name("node-1");
    out.set_revision(revision());
    return out;
  }
  v1::Node get_node(const std::string& name) override {
    if (name != "node-1") throw Error(errc::not_found, "node \"" + name + "\" not found");
    v1::Node n;
    n.mutable_metadata()->set_name(name);
    return n;
  }
  v1::Node change_node(const std::string& name, NodeAction action) override {
    auto n = get_node(name);
    n.mutable_status()->set_unschedulable(action != NodeAction::uncordon);
    return n;
  }

  v1::InvokeResponse invoke(const v1::InvokeRequest& request) override {
    {
      std::lock_guard lock(mu_);
      last_invoke_ = request;
    }
    const std::string& fn = request.function();
    if (fn == "sleepy") throw Error(errc::timeout, "sleepy ran past its timeout of 1s");
    if (fn == "slow") {
      std::unique_lock lock(mu_);
      slow_started_ = true;
      max_slow_running_ = std::max(max_slow_running_, ++slow_running_);
      cv_.notify_all();
      const bool released = wait_for(cv_, lock, [&] { return slow_released_; });
      --slow_running_;
      if (!released) throw Error(errc::internal, "slow was never released");
    } else if (fn == "gather") {
      std::unique_lock lock(mu_);
      ++gathered_;
      cv_.notify_all();
      if (!wait_for(cv_, lock, [&] { return gathered_ >= gather_expected; })) {
        throw Error(errc::internal, "only " + std::to_string(gathered_) + " calls ran together");
      }
    } else if (fn == "nap") {
      std::this_thread::sleep_for(std::chrono::milliseconds(std::stoi(request.payload())));
    } else if (fn == "busy") {
      throw Error(errc::throttled, "busy is at its concurrentExecutions of 1");
    } else if (fn == "crashy") {
      throw Error(errc::handler_failed, "crashy exited with status 1");
    } else if (fn != "echo" && fn != "respond") {
      throw Error(errc::not_found, "function " + fn + " not found");
    }
    v1::InvokeResponse out;
    out.set_request_id(request.request_id().empty() ? "generated-id" : request.request_id());
    if (fn == "respond") {
      std::lock_guard lock(mu_);
      out.set_result(respond_with_);
    } else {
      out.set_result(request.payload());
    }
    out.set_cold_start(true);
    out.set_node("node-1");
    out.mutable_duration()->set_seconds(1);
    out.mutable_duration()->set_nanos(234'000);
    return out;
  }

  bool try_invoke_async(const v1::InvokeRequest& request, const boost::asio::any_io_executor&,
                        InvokeCompletion complete,
                        std::shared_ptr<detail::Caller> caller) override {
    if (request.function() != "held") return false;
    std::lock_guard lock(mu_);
    held_.emplace_back(request.payload(), std::move(complete));
    // Held as a cold start is: it asks to be told of a hang-up.
    if (caller) caller->watch();
    held_callers_[request.payload()] = std::move(caller);
    ++held_total_;
    if (static_cast<int>(held_.size()) >= held_expected) answer_held();
    return true;
  }
  void release_held() {
    std::lock_guard lock(mu_);
    answer_held();
  }
  // Whether the server told the held call with this payload that its caller has gone.
  bool held_caller_gone(const std::string& payload) {
    std::lock_guard lock(mu_);
    auto it = held_callers_.find(payload);
    return it != held_callers_.end() && it->second && it->second->gone();
  }
  int held_total() {
    std::lock_guard lock(mu_);
    return held_total_;
  }
  int held_expected = 1;

  // Tokens the fake knows by secret (Service keeps them hashed in the store).
  std::optional<v1::Token> verify_token(std::string_view secret) override {
    std::lock_guard lock(mu_);
    auto it = tokens_.find(std::string(secret));
    if (it == tokens_.end()) return std::nullopt;
    return it->second;
  }
  void add_token(const std::string& secret, const std::string& name, const std::string& role,
                 const std::string& function = {}, bool expired = false) {
    std::lock_guard lock(mu_);
    v1::Token t;
    t.mutable_metadata()->set_name(name);
    t.mutable_spec()->add_scopes(role);
    t.mutable_spec()->set_function(function);
    if (expired) t.mutable_spec()->mutable_expires_at()->set_seconds(1);
    tokens_[secret] = t;
  }
  std::map<std::string, v1::Token> tokens_;

  v1::ServerInfo info() override {
    v1::ServerInfo out;
    out.set_version("test-version");
    out.set_node("node-1");
    out.set_revision(revision());
    return out;
  }

  v1::FunctionMetrics function_metrics(const std::string& name) override {
    if (name != "echo") throw Error(errc::not_found, "function " + name + " not found");
    v1::FunctionMetrics m;
    m.set_function(name);
    m.set_invocations(3);
    m.set_cold_starts(1);
    m.mutable_duration()->set_p99_ms(12.5);
    (*m.mutable_instances_by_node())["node-1"] = 2;
    return m;
  }

  std::string prometheus_metrics() override {
    return "# TYPE blixard_function_invocations_total counter\n"
           "blixard_function_invocations_total{function=\"echo\"} 3\n";
  }

  v1::LogChunk vm_logs(const std::string& name, std::int64_t, std::chrono::milliseconds) override {
    throw Error(errc::not_found, "vm " + name + " not found");
  }
  v1::LogChunk function_logs(const std::string& name, std::int64_t after,
                             std::chrono::milliseconds wait) override {
    if (name != "echo") throw Error(errc::not_found, "function " + name + " not found");
    std::unique_lock lock(mu_);
    ++log_polls_;
    cv_.wait_for(lock, wait, [&] { return static_cast<std::int64_t>(logs_.size()) > after; });
    v1::LogChunk out;
    out.set_next(after);
    for (const auto& line : logs_) {
      if (line.sequence() > after) {
        *out.add_lines() = line;
        out.set_next(line.sequence());
      }
    }
    return out;
  }

  v1::WatchEventList events(const std::string& kind, const std::string& name, std::int64_t after,
                            std::chrono::milliseconds wait) override {
    std::unique_lock lock(mu_);
    ++event_polls_;
    if (after < 0) after = static_cast<std::int64_t>(events_.size());
    auto matches = [&](const v1::WatchEvent& e) {
      return e.sequence() > after && (kind.empty() || e.kind() == kind) &&
             (name.empty() || e.name() == name);
    };
    cv_.wait_for(lock, wait, [&] { return std::any_of(events_.begin(), events_.end(), matches); });
    v1::WatchEventList out;
    out.set_next(events_.empty() ? after : std::max(after, events_.back().sequence()));
    for (const auto& e : events_) {
      if (matches(e)) *out.add_events() = e;
    }
    return out;
  }

  // The store's changes: the same events, each one's sequence standing in for its revision.
  v1::WatchEventList changes(const std::string& kind, const std::string& name,
                             std::int64_t from_revision, std::chrono::milliseconds wait) override {
    auto list = events(kind, name, from_revision - 1, wait);
    for (auto& e : *list.mutable_events()) e.set_store_revision(e.sequence());
    list.set_next(list.next() + 1);
    return list;
  }

  // Test controls.
  void add_log(const std::string& text) {
    std::lock_guard lock(mu_);
    auto& line = logs_.emplace_back();
    line.set_sequence(static_cast<std::int64_t>(logs_.size()));
    line.set_instance("echo-1");
    line.set_stream("stdout");
    line.set_text(text);
    cv_.notify_all();
  }
  void add_event(const std::string& kind, const std::string& name, const std::string& reason) {
    std::lock_guard lock(mu_);
    auto& e = events_.emplace_back();
    e.set_type("record");
    e.set_kind(kind);
    e.set_name(name);
    e.set_reason(reason);
    e.set_sequence(static_cast<std::int64_t>(events_.size()));
    cv_.notify_all();
  }
  int log_polls() {
    std::lock_guard lock(mu_);
    return log_polls_;
  }
  int event_polls() {
    std::lock_guard lock(mu_);
    return event_polls_;
  }
  void respond_with(std::string result) {
    std::lock_guard lock(mu_);
    respond_with_ = std::move(result);
  }
  void wait_slow_started() {
    std::unique_lock lock(mu_);
    ASSERT_TRUE(wait_for(cv_, lock, [&] { return slow_started_; }));
  }
  // Slow calls running now, and the most that ever ran at once.
  std::pair<int, int> slow_running() {
    std::lock_guard lock(mu_);
    return {slow_running_, max_slow_running_};
  }
  void release_slow() {
    std::lock_guard lock(mu_);
    slow_released_ = true;
    cv_.notify_all();
  }
  v1::InvokeRequest last_invoke() {
    std::lock_guard lock(mu_);
    return last_invoke_;
  }
  int gather_expected = 1;
  // What the last apply was asked (the test reads it once the call has returned).
  detail::ApplyOptions last_apply_options;

 private:
  template <class M>
  M get(const std::map<std::string, M>& store, const std::string& name, const char* kind) {
    std::lock_guard lock(mu_);
    auto it = store.find(name);
    if (it == store.end())
      throw Error(errc::not_found, std::string(kind) + " " + name + " not found");
    return it->second;
  }
  template <class L, class M>
  L list(const std::map<std::string, M>& store) {
    std::lock_guard lock(mu_);
    L out;
    for (const auto& [name, m] : store) *out.add_items() = m;
    out.set_revision(revision_);
    return out;
  }
  std::int64_t revision() {
    std::lock_guard lock(mu_);
    return revision_;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, v1::Function> functions_;
  std::map<std::string, v1::Vm> vms_;
  std::map<std::string, v1::Trigger> triggers_;
  std::int64_t revision_ = 1;
  v1::InvokeRequest last_invoke_;
  bool slow_started_ = false;
  bool slow_released_ = false;
  int slow_running_ = 0;
  int max_slow_running_ = 0;
  int gathered_ = 0;
  std::vector<v1::LogLine> logs_;
  std::vector<v1::WatchEvent> events_;
  int log_polls_ = 0;
  int event_polls_ = 0;
  std::string respond_with_ = "null";
  std::vector<std::pair<std::string, InvokeCompletion>> held_;
  int held_total_ = 0;
  std::map<std::string, std::shared_ptr<detail::Caller>> held_callers_;
  std::vector<std::thread> answering_;

  // mu_ held.
  void answer_held() {
    auto calls = std::move(held_);
    held_.clear();
    answering_.emplace_back([calls = std::move(calls)]() mutable {
      for (auto it = calls.rbegin(); it != calls.rend(); ++it) {
        v1::InvokeResponse out;
        out.set_request_id("held-" + it->first);
        out.set_result(it->first);
        it->second(nullptr, out);
      }
    });
  }

 public:
  ~FakeBackend() override {
    for (auto& t : answering_) t.join();
  }
};

struct RawResponse {
  int status = 0;
  bool interim = false;  // a 100 Continue came first
  std::string head;      // status line and headers
  std::string body;
  std::string header(const std::string& name) const {
    auto pos = head.find("\r\n" + name + ": ");
    if (pos == std::string::npos) return {};
    pos += name.size() + 4;
    return head.substr(pos, head.find("\r\n", pos) - pos);
  }
};

// A connected socket to the server, with a receive timeout far above any deadline under test.
int connect_raw(unsigned short port) {
  const int fd = blixard::test_support::connect_loopback(port);
  if (fd < 0) throw std::runtime_error("connect failed");
  timeval tv{20, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

// One request on a fresh connection, read until the server closes it.
RawResponse raw_request(unsigned short port, const std::string& request) {
  const int fd = connect_raw(port);
  for (std::size_t sent = 0; sent < request.size();) {
    auto n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<std::size_t>(n);
  }
  std::string data;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;)
    data.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  RawResponse r;
  // An interim "100 Continue" is not the answer.
  while (data.rfind("HTTP/1.1 100 ", 0) == 0) {
    r.interim = true;
    data.erase(0, data.find("\r\n\r\n") + 4);
  }
  auto end = data.find("\r\n\r\n");
  if (data.size() < 12 || end == std::string::npos) return r;
  r.status = std::stoi(data.substr(9, 3));
  r.head = data.substr(0, end + 2);
  r.body = data.substr(end + 4);
  return r;
}

// A connection read piece by piece: an NDJSON stream's head, then its chunks one at a time.
class RawStream {
 public:
  RawStream(unsigned short port, const std::string& request) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd_);
      throw std::runtime_error("connect failed");
    }
    timeval tv{20, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::send(fd_, request.data(), request.size(), MSG_NOSIGNAL);
  }
  ~RawStream() { close(); }
  RawStream(const RawStream&) = delete;
  RawStream& operator=(const RawStream&) = delete;

  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  // More of the request (a body sent after its head).
  void send(const std::string& data) { ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL); }

  // The status line and headers.
  RawResponse head() {
    RawResponse r;
    auto head = read_until("\r\n\r\n");
    if (!head || head->size() < 12) return r;
    r.status = std::stoi(head->substr(9, 3));
    r.head = *head;
    return r;
  }

  // The next chunk's data; "" for the last chunk, nullopt when the connection ended instead.
  std::optional<std::string> chunk() {
    auto size_line = read_until("\r\n");
    if (!size_line) return std::nullopt;
    std::size_t n = std::stoul(*size_line, nullptr, 16);
    auto data = read_exactly(n + 2);
    if (!data) return std::nullopt;
    return data->substr(0, n);
  }

  // The rest of a non-stream answer (an error): the body by Content-Length.
  std::string body(const RawResponse& r) {
    auto length = r.header("Content-Length");
    return read_exactly(length.empty() ? 0 : std::stoul(length)).value_or("");
  }

 private:
  bool fill() {
    char buf[4096];
    auto n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) return false;
    buf_.append(buf, static_cast<std::size_t>(n));
    return true;
  }
  std::optional<std::string> read_until(const std::string& delim) {
    std::size_t pos;
    while ((pos = buf_.find(delim)) == std::string::npos) {
      if (!fill()) return std::nullopt;
    }
    std::string out = buf_.substr(0, pos + delim.size());
    buf_.erase(0, pos + delim.size());
    return out;
  }
  std::optional<std::string> read_exactly(std::size_t n) {
    while (buf_.size() < n) {
      if (!fill()) return std::nullopt;
    }
    std::string out = buf_.substr(0, n);
    buf_.erase(0, n);
    return out;
  }

  int fd_ = -1;
  std::string buf_;
};

// The JSON objects of an NDJSON text, one a line.
std::vector<boost::json::object> ndjson(const std::string& text) {
  std::vector<boost::json::object> out;
  std::size_t start = 0;
  for (std::size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1) {
    out.push_back(boost::json::parse(text.substr(start, nl - start)).as_object());
  }
  EXPECT_EQ(start, text.size()) << "the last line is not terminated: " << text;
  return out;
}

// Polls `pred` until it holds or a deadline only a bug reaches.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = 10s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

std::string http_request(const std::string& method, const std::string& target,
                         const std::string& body = {}, const std::string& extra_headers = {}) {
  return method + " " + target + " HTTP/1.1\r\nHost: test\r\nConnection: close\r\n" +
         extra_headers + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

v1::Function make_function(const std::string& name, std::uint64_t memory = 128) {
  v1::Function f;
  f.mutable_metadata()->set_name(name);
  f.mutable_spec()->set_runtime("python");
  f.mutable_spec()->set_handler("app:handler");
  f.mutable_spec()->set_memory_mib(memory);
  f.mutable_spec()->mutable_timeout()->set_seconds(30);
  return f;
}

template <class F>
Error catch_error(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no blixard::Error thrown";
  return Error(errc::internal, "no error");
}

class HttpTest : public testing::Test {
 protected:
  void start(api::HttpServerOptions options = {}) {
    fake_ = std::make_shared<FakeBackend>();
    server_ = std::make_unique<api::HttpServer>(fake_, std::move(options));
    server_->start();
  }
  void SetUp() override { start(); }
  void TearDown() override {
    if (fake_) fake_->release_slow();
    server_.reset();
  }

  std::shared_ptr<detail::Backend> client(bool protobuf = true, std::string token = {}) {
    client::HttpBackendOptions options;
    options.protobuf = protobuf;
    options.token = std::move(token);
    options.timeout = 20s;
    return client::make_http_backend(server_->url(), options);
  }

  // Adds an http trigger through the Backend, as `blixard function trigger` does.
  void add_trigger(const std::string& name, const std::string& path, const std::string& function,
                   std::vector<std::string> methods = {}) {
    v1::ObjectSet set;
    auto* t = set.add_triggers();
    t->mutable_metadata()->set_name(name);
    t->mutable_spec()->set_type("http");
    t->mutable_spec()->set_path(path);
    t->mutable_spec()->set_function(function);
    for (auto& m : methods) t->mutable_spec()->add_methods(m);
    fake_->apply(set, {.mode = ApplyMode::apply});
  }

  // An invocation of the fake's "slow" function on `c`, running once this returns.
  std::future<v1::InvokeResponse> slow_call(std::shared_ptr<detail::Backend> c) {
    auto call = std::async(std::launch::async, [c] {
      v1::InvokeRequest request;
      request.set_function("slow");
      request.set_payload("\"slow\"");
      return c->invoke(request);
    });
    fake_->wait_slow_started();
    return call;
  }

  RawResponse get(const std::string& target, const std::string& headers = {}) {
    return raw_request(server_->port(), http_request("GET", target, {}, headers));
  }

  std::shared_ptr<FakeBackend> fake_;
  std::unique_ptr<api::HttpServer> server_;
};

class HttpRoundTrip : public HttpTest, public testing::WithParamInterface<bool> {};

TEST_P(HttpRoundTrip, EveryMethodRoundTrips) {
  auto c = client(GetParam());

  v1::ObjectSet set;
  *set.add_functions() = make_function("echo");
  set.add_vms()->mutable_metadata()->set_name("web");
  set.mutable_vms(0)->mutable_spec()->set_replicas(3);
  set.add_triggers()->mutable_metadata()->set_name("hook");
  set.mutable_triggers(0)->mutable_spec()->set_path("/hook");
  auto created = c->apply(set, {.mode = ApplyMode::create});
  ASSERT_EQ(created.items_size(), 3);
  EXPECT_EQ(created.items(0).action(), "created");
  EXPECT_EQ(created.items(1).kind(), "Vm");
  EXPECT_EQ(created.revision(), 2);

  auto f = c->get_function("echo");
  EXPECT_EQ(f.spec().memory_mib(), 128u);
  EXPECT_EQ(f.spec().handler(), "app:handler");
  EXPECT_EQ(f.spec().timeout().seconds(), 30);
  EXPECT_EQ(f.metadata().resource_version(), 2);
  EXPECT_EQ(c->get_vm("web").spec().replicas(), 3u);
  EXPECT_EQ(c->get_trigger("hook").spec().path(), "/hook");
  EXPECT_EQ(c->list_functions().items_size(), 1);
  EXPECT_EQ(c->list_vms().items(0).metadata().name(), "web");
  EXPECT_EQ(c->list_triggers().items_size(), 1);
  EXPECT_EQ(c->list_nodes().items(0).metadata().name(), "node-1");
  auto info = c->info();
  EXPECT_EQ(info.version(), "test-version");
  EXPECT_EQ(info.revision(), 2);

  v1::ObjectSet update;
  *update.add_functions() = make_function("echo", 256);
  auto applied = c->apply(update, {.mode = ApplyMode::apply});
  EXPECT_EQ(applied.items(0).action(), "configured");
  EXPECT_EQ(c->get_function("echo").spec().memory_mib(), 256u);
  // Every apply option crosses the wire (the query string) as given.
  c->apply(update, {.mode = ApplyMode::apply, .dry_run = true, .prune = true, .stack = "shop a"});
  EXPECT_TRUE(fake_->last_apply_options.dry_run);
  EXPECT_TRUE(fake_->last_apply_options.prune);
  EXPECT_EQ(fake_->last_apply_options.stack, "shop a");
  c->apply(update, {});
  EXPECT_FALSE(fake_->last_apply_options.dry_run);
  EXPECT_FALSE(fake_->last_apply_options.prune);
  EXPECT_EQ(fake_->last_apply_options.stack, "");

  v1::ObjectSet gone;
  gone.add_vms()->mutable_metadata()->set_name("web");
  EXPECT_EQ(c->apply(gone, {.mode = ApplyMode::remove}).items(0).action(), "deleted");
  EXPECT_EQ(c->list_vms().items_size(), 0);

  v1::InvokeRequest call;
  call.set_function("echo");
  call.set_payload(R"({"x": [1, 2, "three"]})");
  call.set_request_id("req-42");
  call.mutable_timeout()->set_seconds(2);
  call.mutable_timeout()->set_nanos(500'000'000);
  auto out = c->invoke(call);
  EXPECT_EQ(out.result(), R"({"x": [1, 2, "three"]})");
  EXPECT_EQ(out.request_id(), "req-42");
  EXPECT_TRUE(out.cold_start());
  EXPECT_EQ(out.node(), "node-1");
  EXPECT_EQ(out.duration().seconds(), 1);
  EXPECT_EQ(out.duration().nanos(), 234'000);
  auto seen = fake_->last_invoke();
  EXPECT_EQ(seen.function(), "echo");
  EXPECT_EQ(seen.timeout().seconds(), 2);
  EXPECT_EQ(seen.timeout().nanos(), 500'000'000);
}

INSTANTIATE_TEST_SUITE_P(Encodings, HttpRoundTrip, testing::Values(true, false),
                         [](const auto& info) { return info.param ? "Protobuf" : "Json"; });

TEST_F(HttpTest, ErrorsKeepCodeFieldAndPosition) {
  for (bool protobuf : {true, false}) {
    auto c = client(protobuf);
    auto missing = catch_error([&] { c->get_function("nope"); });
    EXPECT_EQ(missing.code(), errc::not_found);
    EXPECT_THAT(missing.message(), HasSubstr("function nope not found"));

    v1::ObjectSet set;
    *set.add_functions() = make_function(protobuf ? "a" : "b");
    c->apply(set, {.mode = ApplyMode::create});
    auto dup = catch_error([&] { c->apply(set, {.mode = ApplyMode::create}); });
    EXPECT_EQ(dup.code(), errc::already_exists);
    EXPECT_EQ(dup.field(), "functions[0]");

    v1::ObjectSet bad;
    *bad.add_functions() = make_function("c");
    (*bad.mutable_functions(0)->mutable_metadata()->mutable_labels())["bad"] = "yes";
    auto invalid = catch_error([&] { c->apply(bad, {.mode = ApplyMode::apply}); });
    EXPECT_EQ(invalid.code(), errc::invalid_spec);
    EXPECT_EQ(invalid.field(), "functions[0].spec.memory");
    EXPECT_EQ(invalid.status().file(), "fn.yaml");
    EXPECT_EQ(invalid.status().line(), 3u);
    EXPECT_EQ(invalid.status().column(), 11u);
    EXPECT_THAT(
        invalid.what(),
        testing::StartsWith("fn.yaml:3:11: functions[0].spec.memory: memory must be at least 16M"));

    v1::ObjectSet absent;
    absent.add_triggers()->mutable_metadata()->set_name("ghost");
    EXPECT_EQ(catch_error([&] { c->apply(absent, {.mode = ApplyMode::remove}); }).code(),
              errc::not_found);

    v1::InvokeRequest call;
    call.set_function("sleepy");
    auto timeout = catch_error([&] { c->invoke(call); });
    EXPECT_EQ(timeout.code(), errc::timeout);
    EXPECT_THAT(timeout.message(), HasSubstr("past its timeout"));
  }
}

// ?timeout= and ?wait= read durations with blixard::parse_duration, as a manifest's fields are.
TEST_F(HttpTest, QueryDurationsAreReadByTheSpecsParser) {
  auto raw = raw_request(server_->port(),
                         http_request("POST", "/v1/functions/echo/invoke?timeout=1m30s", "1"));
  EXPECT_EQ(raw.status, 200);
  EXPECT_EQ(fake_->last_invoke().timeout().seconds(), 90);
  raw = raw_request(server_->port(),
                    http_request("POST", "/v1/functions/echo/invoke?timeout=250ms", "1"));
  EXPECT_EQ(fake_->last_invoke().timeout().nanos(), 250'000'000);
  raw = raw_request(server_->port(),
                    http_request("POST", "/v1/functions/echo/invoke?timeout=0s", "1"));
  EXPECT_EQ(raw.status, 400);
  EXPECT_THAT(raw.body, HasSubstr("positive duration"));
  fake_->add_log("one");
  EXPECT_EQ(get("/v1/functions/echo/logs?wait=1.5s").status, 200);
  raw = get("/v1/functions/echo/logs?wait=5parsecs");
  EXPECT_EQ(raw.status, 400);
  EXPECT_THAT(raw.body, HasSubstr(R"("field":"wait")"));
  EXPECT_THAT(raw.body, HasSubstr("unknown unit"));
}

TEST_F(HttpTest, InvalidInvokePayloadIsInvalidSpec) {
  auto c = client();
  v1::InvokeRequest call;
  call.set_function("echo");
  call.set_payload("{not json");
  auto e = catch_error([&] { c->invoke(call); });
  EXPECT_EQ(e.code(), errc::invalid_spec);
  EXPECT_EQ(e.field(), "payload");

  call.set_payload("");  // no payload is JSON null
  EXPECT_EQ(c->invoke(call).result(), "null");
  call.set_payload("42");
  EXPECT_EQ(c->invoke(call).result(), "42");
}

TEST_F(HttpTest, TokenIsRequiredWhenConfigured) {
  api::HttpServerOptions options;
  options.token = "s3cret-token";
  server_.reset();
  start(options);

  EXPECT_EQ(catch_error([&] { client(true)->info(); }).code(), errc::unauthenticated);
  EXPECT_EQ(catch_error([&] { client(false, "wrong")->list_functions(); }).code(),
            errc::unauthenticated);
  EXPECT_EQ(catch_error([&] { client(true, "s3cret-tokenX")->info(); }).code(),
            errc::unauthenticated);
  EXPECT_EQ(client(true, "s3cret-token")->info().version(), "test-version");

  auto raw = raw_request(server_->port(), http_request("GET", "/v1/info"));
  EXPECT_EQ(raw.status, 401);
  EXPECT_EQ(raw.header("WWW-Authenticate"), "Bearer");
  EXPECT_THAT(raw.body, HasSubstr(R"("code":"unauthenticated")"));
  raw = raw_request(server_->port(),
                    http_request("GET", "/v1/info", {}, "Authorization: bearer s3cret-token\r\n"));
  EXPECT_EQ(raw.status, 200);
  // Health checks need no token.
  raw = raw_request(server_->port(), http_request("GET", "/healthz"));
  EXPECT_EQ(raw.status, 200);
  EXPECT_EQ(raw.body, "ok");
}

// The server formats a response's head itself: the status line in the request's HTTP version,
// its fields, Content-Length, and the body after; a keep-alive connection takes the next request.
TEST_F(HttpTest, ResponsesCarryStatusLineFieldsAndBodyInTheRequestsVersion) {
  auto raw = raw_request(server_->port(), "GET /healthz HTTP/1.0\r\nHost: test\r\n\r\n");
  EXPECT_EQ(raw.head.substr(0, 17), "HTTP/1.0 200 OK\r\n");
  EXPECT_EQ(raw.header("Server"), "blixard");
  EXPECT_EQ(raw.header("Content-Length"), "2");
  EXPECT_EQ(raw.body, "ok");  // and the server closed the connection (HTTP/1.0)

  const std::string two =
      "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
      "GET /v1/nothing HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
  RawStream s(server_->port(), two);
  auto first = s.head();
  EXPECT_EQ(first.head.substr(0, 17), "HTTP/1.1 200 OK\r\n");
  EXPECT_EQ(s.body(first), "ok");
  auto second = s.head();
  EXPECT_EQ(second.head.substr(0, 24), "HTTP/1.1 404 Not Found\r\n");
  EXPECT_EQ(second.header("Connection"), "close");
  EXPECT_THAT(s.body(second), HasSubstr(R"("code":"not_found")"));
}

TEST_F(HttpTest, UnknownPathWrongMethodAndMalformedRequests) {
  auto raw = raw_request(server_->port(), http_request("GET", "/v1/nothing"));
  EXPECT_EQ(raw.status, 404);
  EXPECT_EQ(raw.header("Content-Type"), "application/json");
  EXPECT_THAT(raw.body, HasSubstr(R"("code":"not_found")"));
  EXPECT_EQ(raw_request(server_->port(), http_request("GET", "/elsewhere")).status, 404);
  EXPECT_EQ(raw_request(server_->port(), http_request("GET", "/v1/functions/a/b/c")).status, 404);

  raw = raw_request(server_->port(), http_request("PUT", "/v1/functions"));
  EXPECT_EQ(raw.status, 405);
  EXPECT_EQ(raw.header("Allow"), "GET, POST");
  raw = raw_request(server_->port(), http_request("GET", "/v1/functions/echo/invoke"));
  EXPECT_EQ(raw.status, 405);
  EXPECT_EQ(raw.header("Allow"), "POST");

  raw = raw_request(server_->port(), http_request("POST", "/v1/apply", "{\"functions\": [oops"));
  EXPECT_EQ(raw.status, 400);
  EXPECT_THAT(raw.body, HasSubstr(R"("code":"invalid_spec")"));
  raw = raw_request(server_->port(), http_request("POST", "/v1/apply?mode=sideways", "{}"));
  EXPECT_EQ(raw.status, 400);
  EXPECT_THAT(raw.body, HasSubstr(R"("field":"mode")"));
  raw =
      raw_request(server_->port(), http_request("POST", "/v1/functions/echo/invoke?timeout=soon"));
  EXPECT_EQ(raw.status, 400);
  EXPECT_THAT(raw.body, HasSubstr(R"("field":"timeout")"));

  raw = raw_request(server_->port(), "THIS IS NOT HTTP\r\n\r\n");
  EXPECT_EQ(raw.status, 400);
  EXPECT_THAT(raw.body, HasSubstr("malformed"));
}

TEST_F(HttpTest, RestStyleCreateGetDelete) {
  auto raw = raw_request(
      server_->port(), http_request("POST", "/v1/functions",
                                    R"({"metadata":{"name":"hello world"},"spec":{"memory":"64"}})",
                                    "Content-Type: application/json\r\n"));
  EXPECT_EQ(raw.status, 201);
  EXPECT_THAT(raw.body, HasSubstr(R"("memory":"64")"));
  EXPECT_THAT(raw.body, HasSubstr(R"("resourceVersion":"2")"));

  // Names travel percent-encoded.
  EXPECT_EQ(client()->get_function("hello world").spec().memory_mib(), 64u);
  raw = raw_request(server_->port(), http_request("GET", "/v1/functions/hello%20world"));
  EXPECT_EQ(raw.status, 200);

  raw = raw_request(server_->port(), http_request("POST", "/v1/vms", R"({"spec":{}})"));
  EXPECT_EQ(raw.status, 400);
  EXPECT_THAT(raw.body, HasSubstr(R"("field":"metadata.name")"));

  raw = raw_request(server_->port(), http_request("DELETE", "/v1/functions/hello%20world"));
  EXPECT_EQ(raw.status, 200);
  EXPECT_THAT(raw.body, HasSubstr(R"("action":"deleted")"));
  raw = raw_request(server_->port(), http_request("DELETE", "/v1/functions/hello%20world"));
  EXPECT_EQ(raw.status, 404);

  raw = raw_request(server_->port(), http_request("POST", "/v1/functions/echo/invoke", R"({"a":1})",
                                                  "X-Blixard-Request-Id: abc\r\n"));
  EXPECT_EQ(raw.status, 200);
  EXPECT_EQ(raw.body, R"({"a":1})");
  EXPECT_EQ(raw.header("X-Blixard-Request-Id"), "abc");
  EXPECT_EQ(raw.header("X-Blixard-Cold-Start"), "true");
  EXPECT_EQ(raw.header("X-Blixard-Node"), "node-1");
  EXPECT_EQ(raw.header("X-Blixard-Duration-Us"), "1000234");
}

TEST_F(HttpTest, BodyOverTheLimitIs413) {
  api::HttpServerOptions options;
  options.body_limit = 64 << 10;
  server_.reset();
  start(options);
  auto c = client();
  v1::InvokeRequest call;
  call.set_function("echo");
  call.set_payload("\"" + std::string(1 << 20, 'x') + "\"");
  auto e = catch_error([&] { c->invoke(call); });
  EXPECT_EQ(e.code(), errc::payload_too_large);
  EXPECT_THAT(e.message(), HasSubstr("65536"));
  // The client recovers: the next call works on a new connection.
  call.set_payload("1");
  EXPECT_EQ(c->invoke(call).result(), "1");
}

TEST_F(HttpTest, ExpectContinueIsAnsweredAndOversizedBodiesRefusedUpFront) {
  api::HttpServerOptions options;
  options.body_limit = 1024;
  server_.reset();
  start(options);
  // Headers only: the server refuses from Content-Length, before any body is sent.
  auto raw = raw_request(server_->port(),
                         "POST /v1/apply HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                         "Content-Length: 100000\r\n\r\n");
  EXPECT_EQ(raw.status, 413);
  EXPECT_FALSE(raw.interim);
  EXPECT_THAT(raw.body, HasSubstr(R"("code":"payload_too_large")"));

  raw = raw_request(server_->port(), http_request("POST", "/v1/functions/echo/invoke", "[1,2]",
                                                  "Expect: 100-continue\r\n"));
  EXPECT_TRUE(raw.interim);
  EXPECT_EQ(raw.status, 200);
  EXPECT_EQ(raw.body, "[1,2]");
}

TEST_F(HttpTest, KeepAliveReusesOneConnection) {
  auto c = client();
  for (int i = 0; i < 20; ++i) c->info();
  v1::InvokeRequest call;
  call.set_function("echo");
  call.set_payload("{}");
  for (int i = 0; i < 5; ++i) c->invoke(call);
  EXPECT_EQ(server_->stats().connections, 1u);
  EXPECT_EQ(server_->stats().requests, 25u);
}

TEST_F(HttpTest, ReconnectsOnceWhenTheServerClosedTheConnection) {
  auto c = client();
  EXPECT_EQ(c->info().version(), "test-version");
  const auto port = server_->port();
  server_.reset();  // closes the client's kept-alive connection
  api::HttpServerOptions options;
  options.port = port;
  start(options);
  EXPECT_EQ(c->info().version(), "test-version");
  EXPECT_EQ(server_->stats().connections, 1u);
}

TEST_F(HttpTest, SlowInvokeDoesNotDelayOtherCalls) {
  v1::ObjectSet set;
  *set.add_functions() = make_function("echo");
  client()->apply(set, {.mode = ApplyMode::create});

  auto c = client();
  auto slow = slow_call(c);
  // The slow call holds a connection and a worker; a get on the same client still completes,
  // and only then is the slow call let go.
  EXPECT_EQ(c->get_function("echo").metadata().name(), "echo");
  fake_->release_slow();
  EXPECT_EQ(slow.get().result(), "\"slow\"");
}

// Reads until the server closes the connection (true) or the receive timeout passes (false).
bool read_until_closed(int fd, std::string* got = nullptr) {
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n == 0) return true;
    if (n < 0) return false;
    if (got != nullptr) got->append(buf, static_cast<std::size_t>(n));
  }
}

// Many connections on few io threads, calls that hand their io thread's other connections to a
// spare (naps past the handoff time) mixed with quick ones: every call gets its own answer.
TEST_F(HttpTest, HandoffsUnderLoadLoseAndMixUpNoCall) {
  api::HttpServerOptions options;
  options.io_threads = 2;
  options.workers = 3;
  server_.reset();
  start(options);
  constexpr int k_clients = 12;
  constexpr int k_calls = 24;
  std::atomic<int> right{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < k_clients; ++t) {
    clients.emplace_back([&, t] {
      auto c = client(t % 2 == 0);
      for (int i = 0; i < k_calls; ++i) {
        v1::InvokeRequest call;
        const bool nap = (i + t) % 3 == 0;
        call.set_function(nap ? "nap" : "echo");
        call.set_payload(nap ? std::to_string(2 + (i + t) % 4)
                             : "[" + std::to_string(t) + "," + std::to_string(i) + "]");
        try {
          if (c->invoke(call).result() == call.payload()) ++right;
        } catch (const Error& e) {
          ADD_FAILURE() << e.what();
        }
      }
    });
  }
  for (auto& th : clients) th.join();
  EXPECT_EQ(right, k_clients * k_calls);
  EXPECT_EQ(server_->stats().requests, static_cast<std::uint64_t>(k_clients * k_calls));
}

TEST_F(HttpTest, IdleAndStalledConnectionsAreClosedAfterTheIdleTimeout) {
  api::HttpServerOptions options;
  options.idle_timeout = 1s;
  server_.reset();
  start(options);

  // Kept alive after an answer, then idle.
  const int idle = connect_raw(server_->port());
  const std::string keep_alive = "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";
  ASSERT_EQ(::send(idle, keep_alive.data(), keep_alive.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(keep_alive.size()));
  // Half a request, never finished.
  const int stalled = connect_raw(server_->port());
  const std::string half = "GET /healthz HTTP/1.1\r\nHost: te";
  ASSERT_EQ(::send(stalled, half.data(), half.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(half.size()));

  std::string answer;
  EXPECT_TRUE(read_until_closed(idle, &answer)) << "the idle connection was left open";
  EXPECT_THAT(answer, HasSubstr("200 OK"));
  EXPECT_TRUE(read_until_closed(stalled)) << "the stalled request was left open";
  ::close(idle);
  ::close(stalled);
}

TEST_F(HttpTest, ACallLongerThanTheIdleTimeoutIsNotCutOff) {
  api::HttpServerOptions options;
  options.idle_timeout = 1s;
  server_.reset();
  start(options);
  auto slow = slow_call(client());
  // What is waited for here is time itself: the idle timeout and a deadline sweep, both passed.
  std::this_thread::sleep_for(2500ms);
  fake_->release_slow();
  EXPECT_EQ(slow.get().result(), "\"slow\"");
}

TEST_F(HttpTest, CallsPastTheWorkersWaitTheirTurn) {
  api::HttpServerOptions options;
  options.workers = 2;
  server_.reset();
  start(options);
  auto c = client();
  std::vector<std::future<v1::InvokeResponse>> calls;
  for (int i = 0; i < 3; ++i) {
    calls.push_back(std::async(std::launch::async, [&c, i] {
      v1::InvokeRequest call;
      call.set_function("slow");
      call.set_payload(std::to_string(i));
      return c->invoke(call);
    }));
  }
  // All three requests are in; two calls run, the third waits for one of them to end.
  ASSERT_TRUE(eventually(
      [&] { return server_->stats().requests == 3 && fake_->slow_running().first == 2; }));
  // The server still reads and answers what needs no call while both workers are held.
  EXPECT_EQ(get("/healthz").status, 200);
  fake_->release_slow();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(calls[static_cast<std::size_t>(i)].get().result(), std::to_string(i));
  }
  EXPECT_EQ(fake_->slow_running().second, 2);
}

TEST_F(HttpTest, ConcurrentInvokesRunTogether) {
  constexpr int n = 6;
  fake_->gather_expected = n;
  auto c = client();
  std::vector<std::future<v1::InvokeResponse>> calls;
  for (int i = 0; i < n; ++i) {
    calls.push_back(std::async(std::launch::async, [&c, i] {
      v1::InvokeRequest call;
      call.set_function("gather");
      call.set_payload(std::to_string(i));
      return c->invoke(call);
    }));
  }
  // Each call returns only once all n are in flight at the same time.
  for (int i = 0; i < n; ++i)
    EXPECT_EQ(calls[static_cast<std::size_t>(i)].get().result(), std::to_string(i));
}

TEST_F(HttpTest, AsyncCallsPastTheWorkersAreAllInFlightTogether) {
  api::HttpServerOptions options;
  options.workers = 2;
  server_.reset();
  start(options);
  constexpr int n = 8;
  fake_->held_expected = n;  // answered only once all eight are in: none may wait for a worker
  add_trigger("held-http", "/held", "held");
  auto c = client();
  std::vector<std::future<std::string>> calls;
  for (int i = 0; i < n; ++i) {
    calls.push_back(std::async(std::launch::async, [&c, i, this]() -> std::string {
      if (i % 2 == 0) {
        v1::InvokeRequest call;
        call.set_function("held");
        call.set_payload(std::to_string(i));
        return c->invoke(call).result();
      }
      // Through the gateway: the handler gets (and the fake returns) the event.
      const auto res =
          raw_request(server_->port(), http_request("POST", "/held", std::to_string(i)));
      if (res.status != 200) return "HTTP " + std::to_string(res.status);
      return boost::json::parse(res.body).as_object().at("body").as_string().c_str();
    }));
  }
  // Answered last first from another thread: each still reaches its own connection.
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(calls[static_cast<std::size_t>(i)].get(), std::to_string(i));
  }
}

TEST_F(HttpTest, StopWaitsForAsyncCallsInFlightAndAnswersThem) {
  fake_->held_expected = 100;  // held until released
  auto c = client();
  std::vector<std::future<std::string>> calls;
  for (int i = 0; i < 3; ++i) {
    calls.push_back(std::async(std::launch::async, [&c, i] {
      v1::InvokeRequest call;
      call.set_function("held");
      call.set_payload(std::to_string(i));
      return c->invoke(call).result();
    }));
  }
  ASSERT_TRUE(eventually([&] { return fake_->held_total() == 3; }));
  // stop() keeps the io threads running while the answers are on their way.
  auto stopping = std::async(std::launch::async, [this] { server_->stop(); });
  fake_->release_held();
  stopping.get();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(calls[static_cast<std::size_t>(i)].get(), std::to_string(i));
  }
}

// A call waits (a cold start) while its client hangs up: the backend is told, so the call is not
// started. A client that stays, even one that pipelines its next request meanwhile, is not "gone".
TEST_F(HttpTest, ACallIsToldWhenItsClientHangsUpAndOnlyThen) {
  fake_->held_expected = 100;  // held until released
  // However the test ends (an ASSERT returns early), the held calls are answered, or stopping the
  // server would wait for them.
  struct Release {
    FakeBackend& fake;
    ~Release() { fake.release_held(); }
  } release{*fake_};
  const std::string invoke_path = "/v1/functions/held/invoke";
  // One client stays, and pipelines its next request while its call is held.
  std::string stays_call = http_request("POST", invoke_path, "\"stays\"");
  stays_call.replace(stays_call.find("Connection: close"), 17, "Connection: keep-alive");
  stays_call += "GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
  const int stays = connect_raw(server_->port());
  ASSERT_EQ(::send(stays, stays_call.data(), stays_call.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(stays_call.size()));
  // The other hangs up while its call is held.
  const std::string leaves_call = http_request("POST", invoke_path, "\"leaves\"");
  const int leaves = connect_raw(server_->port());
  ASSERT_EQ(::send(leaves, leaves_call.data(), leaves_call.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(leaves_call.size()));
  ASSERT_TRUE(eventually([&] { return fake_->held_total() == 2; }, 30s)) << fake_->held_total();
  EXPECT_FALSE(fake_->held_caller_gone("\"leaves\""));
  ::close(leaves);
  EXPECT_TRUE(eventually([&] { return fake_->held_caller_gone("\"leaves\""); }, 30s))
      << "the server did not notice the client hang up";
  EXPECT_FALSE(fake_->held_caller_gone("\"stays\"")) << "a pipelined request counted as gone";

  fake_->release_held();
  std::string got;
  char buf[4096];
  for (ssize_t n; (n = ::recv(stays, buf, sizeof buf, 0)) > 0;) {
    got.append(buf, static_cast<std::size_t>(n));
  }
  ::close(stays);
  // Its answer, then the pipelined one.
  EXPECT_EQ(got.rfind("HTTP/1.1 200", 0), 0u) << got;
  EXPECT_NE(got.find("\r\n\r\n\"stays\"HTTP/1.1 200"), std::string::npos) << got;
  EXPECT_EQ(got.substr(got.size() - 2), "ok") << got;
}

TEST_F(HttpTest, ClientRejectsBadUrlsAndReportsUnreachableServers) {
  for (const char* url :
       {"https://127.0.0.1:1", "ftp://x", "127.0.0.1:7070", "http://", "http://h:99999"}) {
    auto e = catch_error([&] { client::make_http_backend(url, "", 1s); });
    EXPECT_EQ(e.code(), errc::invalid_spec) << url;
    EXPECT_EQ(e.field(), "url") << url;
  }
  const std::string url = server_->url();
  server_.reset();  // nothing listens there now
  auto c = client::make_http_backend(url, "", 5s);
  auto e = catch_error([&] { c->info(); });
  EXPECT_EQ(e.code(), errc::unavailable);
  EXPECT_THAT(e.message(), HasSubstr("cannot reach " + url));
}

TEST_F(HttpTest, StartFailsClearlyWhenThePortIsTaken) {
  api::HttpServerOptions options;
  options.port = server_->port();
  api::HttpServer second(std::make_shared<FakeBackend>(), options);
  auto e = catch_error([&] { second.start(); });
  EXPECT_EQ(e.code(), errc::unavailable);
  EXPECT_THAT(e.message(), HasSubstr("127.0.0.1:" + std::to_string(server_->port())));
}

// ---- Telemetry endpoints ----------------------------------------------------------------------

TEST_F(HttpTest, FunctionMetricsAndPrometheusText) {
  for (bool protobuf : {true, false}) {
    auto c = client(protobuf);
    auto m = c->function_metrics("echo");
    EXPECT_EQ(m.function(), "echo");
    EXPECT_EQ(m.invocations(), 3u);
    EXPECT_EQ(m.cold_starts(), 1u);
    EXPECT_DOUBLE_EQ(m.duration().p99_ms(), 12.5);
    EXPECT_EQ(m.instances_by_node().at("node-1"), 2u);
    EXPECT_EQ(catch_error([&] { c->function_metrics("nope"); }).code(), errc::not_found);
    EXPECT_THAT(c->prometheus_metrics(),
                HasSubstr("blixard_function_invocations_total{function=\"echo\"} 3\n"));
  }
  auto raw = get("/metrics");
  EXPECT_EQ(raw.status, 200);
  EXPECT_EQ(raw.header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_THAT(raw.body, HasSubstr("# TYPE blixard_function_invocations_total counter"));
  raw = get("/v1/functions/echo/metrics");
  EXPECT_EQ(raw.status, 200);
  EXPECT_THAT(raw.body, HasSubstr(R"("invocations":"3")"));
  EXPECT_EQ(raw_request(server_->port(), http_request("POST", "/metrics")).status, 405);
}

TEST_F(HttpTest, MetricsNeedTheTokenButTheGatewayDoesNot) {
  api::HttpServerOptions options;
  options.token = "tok";
  server_.reset();
  start(options);
  EXPECT_EQ(get("/metrics").status, 401);
  EXPECT_EQ(catch_error([&] { client()->prometheus_metrics(); }).code(), errc::unauthenticated);
  EXPECT_THAT(client(true, "tok")->prometheus_metrics(), HasSubstr("invocations_total"));
  EXPECT_EQ(get("/metrics", "Authorization: Bearer tok\r\n").status, 200);

  add_trigger("hook", "/hook", "echo");
  EXPECT_EQ(get("/hook").status, 200);
}

TEST_F(HttpTest, TheDashboardIsPublicAndKeepsItsTokenToItself) {
  api::HttpServerOptions options;
  options.token = "tok";
  server_.reset();
  start(options);
  for (const char* path : {"/ui", "/ui/", "/ui/?stack=shop"}) {
    auto page = get(path);
    EXPECT_EQ(page.status, 200) << path;
    EXPECT_THAT(page.header("Content-Type"), HasSubstr("text/html")) << path;
    EXPECT_THAT(page.body, HasSubstr("/ui/app.js")) << path;
  }
  auto page = get("/ui/");
  EXPECT_EQ(page.header("Referrer-Policy"), "no-referrer");
  // No inline script and nothing from another origin.
  EXPECT_THAT(page.header("Content-Security-Policy"), HasSubstr("script-src 'self'"));
  EXPECT_THAT(page.header("Content-Security-Policy"), HasSubstr("default-src 'none'"));
  EXPECT_THAT(page.header("Content-Security-Policy"), testing::Not(HasSubstr("unsafe-inline")));
  auto js = get("/ui/app.js");
  EXPECT_EQ(js.status, 200);
  EXPECT_THAT(js.header("Content-Type"), HasSubstr("javascript"));
  EXPECT_THAT(js.body, HasSubstr("Authorization"));
  EXPECT_THAT(get("/ui/style.css").header("Content-Type"), HasSubstr("text/css"));
  // A bad token on the page is no reason to refuse it; the API still wants a good one.
  EXPECT_EQ(get("/ui/", "Authorization: Bearer wrong\r\n").status, 200);
  EXPECT_EQ(get("/ui/nothing").status, 404);
  EXPECT_EQ(get("/v1/functions").status, 401);
  // /ui is the API's, never a trigger's.
  EXPECT_EQ(raw_request(server_->port(), http_request("POST", "/ui/", "{}")).status, 405);
}

TEST_F(HttpTest, LogsLongPoll) {
  auto c = client();
  fake_->add_log("one");
  fake_->add_log("two");
  auto chunk = c->function_logs("echo", 0, 0ms);
  ASSERT_EQ(chunk.lines_size(), 2);
  EXPECT_EQ(chunk.lines(0).text(), "one");
  EXPECT_EQ(chunk.lines(1).stream(), "stdout");
  EXPECT_EQ(chunk.next(), 2);
  EXPECT_EQ(c->function_logs("echo", 1, 0ms).lines(0).text(), "two");
  EXPECT_EQ(c->function_logs("echo", 2, 0ms).lines_size(), 0);
  EXPECT_EQ(catch_error([&] { c->function_logs("nope", 0, 0ms); }).code(), errc::not_found);

  // A waiting poll returns as soon as a line comes, well before its wait is over.
  const int polls = fake_->log_polls();
  auto waiting = std::async(std::launch::async, [&] { return c->function_logs("echo", 2, 30s); });
  ASSERT_TRUE(eventually([&] { return fake_->log_polls() > polls; }));
  fake_->add_log("three");
  auto got = waiting.get();
  ASSERT_EQ(got.lines_size(), 1);
  EXPECT_EQ(got.lines(0).text(), "three");
  EXPECT_EQ(got.next(), 3);

  auto raw = get("/v1/functions/echo/logs?after=2");
  EXPECT_EQ(raw.status, 200);
  EXPECT_THAT(raw.body, HasSubstr(R"("text":"three")"));
  EXPECT_EQ(get("/v1/functions/echo/logs?after=-1").status, 400);
  raw = get("/v1/functions/echo/logs?wait=forever");
  EXPECT_EQ(raw.status, 400);
  EXPECT_THAT(raw.body, HasSubstr(R"("field":"wait")"));
}

TEST_F(HttpTest, EventsLongPollFiltersByKindAndName) {
  auto c = client(false);
  fake_->add_event("functions", "echo", "ScaledUp");
  fake_->add_event("vms", "web", "Placed");
  fake_->add_event("functions", "other", "ColdStart");
  auto all = c->events("", "", 0, 0ms);
  ASSERT_EQ(all.events_size(), 3);
  EXPECT_EQ(all.next(), 3);
  auto fns = c->events("functions", "", 0, 0ms);
  ASSERT_EQ(fns.events_size(), 2);
  EXPECT_EQ(fns.events(1).reason(), "ColdStart");
  auto echo = c->events("functions", "echo", 0, 0ms);
  ASSERT_EQ(echo.events_size(), 1);
  EXPECT_EQ(echo.events(0).reason(), "ScaledUp");

  auto waiting = std::async(std::launch::async, [&] { return c->events("vms", "", 3, 30s); });
  fake_->add_event("vms", "web", "ScaledDown");
  auto got = waiting.get();
  ASSERT_EQ(got.events_size(), 1);
  EXPECT_EQ(got.events(0).reason(), "ScaledDown");
  EXPECT_EQ(got.next(), 4);

  // from=REV is the store's watch: changes from that revision on, `next` a revision too.
  auto store = c->changes("functions", "", 3, 0ms);
  ASSERT_EQ(store.events_size(), 1);
  EXPECT_EQ(store.events(0).store_revision(), 3);
  EXPECT_EQ(store.next(), 5);
  auto bad = get("/v1/events?from=0");
  EXPECT_EQ(bad.status, 400);
  EXPECT_THAT(bad.body, HasSubstr(R"("field":"from")"));
}

TEST_F(HttpTest, EventsAfterMinusOneStartFromNow) {
  api::HttpServerOptions options;
  options.stream_poll_wait = 200ms;
  server_.reset();
  start(options);
  fake_->add_event("functions", "echo", "ScaledUp");
  fake_->add_event("functions", "echo", "Invoked");

  // Nothing of what is there already; `next` is the current position.
  auto now = get("/v1/events?after=-1");
  ASSERT_EQ(now.status, 200);
  auto list = boost::json::parse(now.body).as_object();
  EXPECT_TRUE(!list.contains("events") || list.at("events").as_array().empty()) << now.body;
  EXPECT_EQ(list.at("next").as_string(), "2");

  // A long poll from now answers with the first event after it.
  const int polls = fake_->event_polls();
  auto waiting =
      std::async(std::launch::async, [&] { return get("/v1/events?after=-1&wait=30s"); });
  ASSERT_TRUE(eventually([&] { return fake_->event_polls() > polls; }));
  fake_->add_event("functions", "echo", "ColdStart");
  auto polled = waiting.get();
  ASSERT_EQ(polled.status, 200);
  list = boost::json::parse(polled.body).as_object();
  ASSERT_EQ(list.at("events").as_array().size(), 1u) << polled.body;
  EXPECT_EQ(list.at("events").as_array()[0].at("reason").as_string(), "ColdStart");
  EXPECT_EQ(list.at("next").as_string(), "3");

  // A watch from now streams only later events.
  RawStream s(server_->port(), http_request("GET", "/v1/events?watch=1&after=-1"));
  ASSERT_EQ(s.head().status, 200);  // written once "now" is resolved
  fake_->add_event("vms", "web", "Placed");
  auto chunk = s.chunk();
  ASSERT_TRUE(chunk);
  auto events = ndjson(*chunk);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].at("reason").as_string(), "Placed");

  // -1 is the only negative `after`; logs take none.
  auto bad = get("/v1/events?after=-2");
  EXPECT_EQ(bad.status, 400);
  EXPECT_THAT(bad.body, HasSubstr(R"("field":"after")"));
  EXPECT_EQ(get("/v1/events?from=-1").status, 400);
}

TEST_F(HttpTest, FollowStreamsLogLinesAsNdjson) {
  api::HttpServerOptions options;
  options.stream_poll_wait = 200ms;
  server_.reset();
  start(options);
  fake_->add_log("one");
  fake_->add_log("two");
  RawStream s(server_->port(), http_request("GET", "/v1/functions/echo/logs?follow=1"));
  auto head = s.head();
  ASSERT_EQ(head.status, 200);
  EXPECT_EQ(head.header("Content-Type"), "application/x-ndjson");
  EXPECT_EQ(head.header("Transfer-Encoding"), "chunked");

  auto first = s.chunk();  // what is there already, at once
  ASSERT_TRUE(first);
  auto lines = ndjson(*first);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].at("text").as_string(), "one");
  EXPECT_EQ(lines[1].at("text").as_string(), "two");
  EXPECT_EQ(lines[1].at("sequence").as_string(), "2");

  fake_->add_log("three");  // then what comes later
  auto second = s.chunk();
  ASSERT_TRUE(second);
  lines = ndjson(*second);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].at("text").as_string(), "three");
  EXPECT_EQ(server_->stats().streams, 1u);

  s.close();  // the client goes away: the server ends the stream and frees its place
  EXPECT_TRUE(eventually([&] { return server_->stats().streams == 0; }));

  // Resuming after a sequence; an unknown function is a plain 404, not a stream.
  RawStream resumed(server_->port(),
                    http_request("GET", "/v1/functions/echo/logs?follow=1&after=2"));
  ASSERT_EQ(resumed.head().status, 200);
  auto rest = resumed.chunk();
  ASSERT_TRUE(rest);
  EXPECT_EQ(ndjson(*rest).at(0).at("text").as_string(), "three");
  auto missing = get("/v1/functions/nope/logs?follow=1");
  EXPECT_EQ(missing.status, 404);
  EXPECT_THAT(missing.body, HasSubstr(R"("code":"not_found")"));
}

TEST_F(HttpTest, WatchStreamsEventsAndEndsWhenTheServerStops) {
  api::HttpServerOptions options;
  options.stream_poll_wait = 200ms;
  server_.reset();
  start(options);
  fake_->add_event("functions", "echo", "ScaledUp");
  fake_->add_event("vms", "web", "Placed");
  RawStream s(server_->port(), http_request("GET", "/v1/events?watch=1&kind=functions&name=echo"));
  ASSERT_EQ(s.head().status, 200);
  auto first = s.chunk();
  ASSERT_TRUE(first);
  auto events = ndjson(*first);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].at("reason").as_string(), "ScaledUp");

  fake_->add_event("vms", "web", "ScaledDown");  // filtered out
  fake_->add_event("functions", "echo", "Invoked");
  auto second = s.chunk();
  ASSERT_TRUE(second);
  events = ndjson(*second);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].at("reason").as_string(), "Invoked");
  EXPECT_EQ(events[0].at("kind").as_string(), "functions");

  // from=REV (DESIGN's watch form) streams the store's changes from that revision on.
  RawStream from(server_->port(), http_request("GET", "/v1/events?watch=1&from=4"));
  ASSERT_EQ(from.head().status, 200);
  auto tail = from.chunk();
  ASSERT_TRUE(tail);
  EXPECT_EQ(ndjson(*tail).at(0).at("reason").as_string(), "Invoked");

  const auto began = std::chrono::steady_clock::now();
  server_.reset();  // stop() ends open streams
  EXPECT_LT(std::chrono::steady_clock::now() - began, 5s);
  auto end = s.chunk();
  EXPECT_TRUE(!end || end->empty());
}

TEST_F(HttpTest, StreamsAreCappedAndDoNotStarveCalls) {
  api::HttpServerOptions options;
  options.max_streams = 2;
  options.workers = 2;
  options.stream_poll_wait = 200ms;
  server_.reset();
  start(options);
  auto a = std::make_unique<RawStream>(server_->port(), http_request("GET", "/v1/events?watch=1"));
  RawStream b(server_->port(), http_request("GET", "/v1/functions/echo/logs?follow=1"));
  ASSERT_EQ(a->head().status, 200);
  ASSERT_EQ(b.head().status, 200);
  EXPECT_EQ(server_->stats().streams, 2u);

  // Past the cap: 503 at once, for a stream and for a waiting long poll alike.
  RawStream c(server_->port(), http_request("GET", "/v1/events?watch=1"));
  auto refused = c.head();
  EXPECT_EQ(refused.status, 503);
  EXPECT_EQ(refused.header("Retry-After"), "1");
  EXPECT_THAT(c.body(refused), HasSubstr(R"("code":"unavailable")"));
  auto cl = client();
  EXPECT_EQ(catch_error([&] { cl->events("", "", 0, 5s); }).code(), errc::unavailable);

  // The workers are free: calls and polls that do not wait still run.
  v1::InvokeRequest call;
  call.set_function("echo");
  call.set_payload("7");
  for (int i = 0; i < 4; ++i) EXPECT_EQ(cl->invoke(call).result(), "7");
  EXPECT_EQ(cl->events("", "", 0, 0ms).events_size(), 0);

  a.reset();  // one stream ends: its place is free again
  ASSERT_TRUE(eventually([&] { return server_->stats().streams == 1; }));
  RawStream d(server_->port(), http_request("GET", "/v1/events?watch=1"));
  EXPECT_EQ(d.head().status, 200);
}

// ---- HTTP trigger gateway -------------------------------------------------------------------

TEST_F(HttpTest, GatewayPassesMethodPathHeadersQueryAndBody) {
  add_trigger("echo-http", "/api/echo", "echo");
  auto raw =
      raw_request(server_->port(), http_request("POST", "/api/echo?x=1&y=two%20words&x=3", "hello",
                                                "X-Custom: a\r\nX-Blixard-Request-Id: gw-1\r\n"));
  ASSERT_EQ(raw.status, 200);
  EXPECT_EQ(raw.header("Content-Type"), "application/json");  // a plain result: its JSON
  EXPECT_EQ(raw.header("X-Blixard-Request-Id"), "gw-1");

  auto seen = fake_->last_invoke();
  EXPECT_EQ(seen.function(), "echo");
  EXPECT_EQ(seen.request_id(), "gw-1");
  auto event = boost::json::parse(seen.payload()).as_object();
  EXPECT_EQ(event.at("method").as_string(), "POST");
  EXPECT_EQ(event.at("path").as_string(), "/api/echo");
  EXPECT_EQ(event.at("rawQueryString").as_string(), "x=1&y=two%20words&x=3");
  EXPECT_EQ(event.at("headers").at("x-custom").as_string(), "a");
  EXPECT_EQ(event.at("headers").at("host").as_string(), "test");
  EXPECT_EQ(event.at("query").at("x").as_string(), "1,3");
  EXPECT_EQ(event.at("query").at("y").as_string(), "two words");
  EXPECT_EQ(event.at("body").as_string(), "hello");
  EXPECT_EQ(event.at("isBase64Encoded").as_bool(), false);
  EXPECT_EQ(boost::json::parse(raw.body), boost::json::value(event));

  // Bytes that are not UTF-8 travel base64-encoded; a trailing slash is the same path.
  raw = raw_request(server_->port(),
                    http_request("PUT", "/api/echo/", std::string("\xff\x00\xfe", 3)));
  ASSERT_EQ(raw.status, 200);
  event = boost::json::parse(fake_->last_invoke().payload()).as_object();
  EXPECT_EQ(event.at("method").as_string(), "PUT");
  EXPECT_EQ(event.at("body").as_string(), "/wD+");
  EXPECT_EQ(event.at("isBase64Encoded").as_bool(), true);

  // A "/*" path serves everything under it.
  add_trigger("files", "/files/*", "echo");  // routes once the gateway re-reads its table
  ASSERT_TRUE(eventually([&] { return (raw = get("/files/a/b%20c.txt")).status == 200; }));
  event = boost::json::parse(fake_->last_invoke().payload()).as_object();
  EXPECT_EQ(event.at("path").as_string(), "/files/a/b c.txt");
  EXPECT_EQ(event.at("rawPath").as_string(), "/files/a/b%20c.txt");
  EXPECT_EQ(event.at("body").as_string(), "");
  EXPECT_EQ(get("/filesystem").status, 404);
}

TEST_F(HttpTest, GatewayMapsStatusCodeHeadersAndBody) {
  add_trigger("r", "/r", "respond");
  fake_->respond_with(
      R"({"statusCode":201,"headers":{"X-Thing":"yes","Content-Type":"text/html","X-N":5,)"
      R"("Content-Length":"999","Bad Name":"x","X-Split":"a\r\nInjected: 1"},"body":"<b>hi</b>"})");
  auto raw = get("/r");
  EXPECT_EQ(raw.status, 201);
  EXPECT_EQ(raw.header("X-Thing"), "yes");
  EXPECT_EQ(raw.header("Content-Type"), "text/html");
  EXPECT_EQ(raw.header("X-N"), "5");
  EXPECT_EQ(raw.header("Content-Length"), "9");  // the server frames the answer
  EXPECT_EQ(raw.header("Injected"), "");
  EXPECT_EQ(raw.body, "<b>hi</b>");

  fake_->respond_with(R"({"statusCode":200,"body":{"a":[1,2]}})");
  raw = get("/r");
  EXPECT_EQ(raw.status, 200);
  EXPECT_EQ(raw.header("Content-Type"), "application/json");
  EXPECT_EQ(raw.body, R"({"a":[1,2]})");

  fake_->respond_with(R"({"statusCode":404,"body":"no such image"})");
  raw = get("/r");
  EXPECT_EQ(raw.status, 404);
  EXPECT_EQ(raw.header("Content-Type"), "text/plain; charset=utf-8");
  EXPECT_EQ(raw.body, "no such image");

  fake_->respond_with(R"({"statusCode":200,"body":"aGk=","isBase64Encoded":true})");
  EXPECT_EQ(get("/r").body, "hi");
  fake_->respond_with(R"({"statusCode":204})");
  raw = get("/r");
  EXPECT_EQ(raw.status, 204);
  EXPECT_EQ(raw.body, "");

  fake_->respond_with(R"({"ok":true,"n":2})");  // no statusCode: 200 with the JSON
  raw = get("/r");
  EXPECT_EQ(raw.status, 200);
  EXPECT_EQ(raw.header("Content-Type"), "application/json");
  EXPECT_EQ(raw.body, R"({"ok":true,"n":2})");
  fake_->respond_with("[1,2,3]");
  EXPECT_EQ(get("/r").body, "[1,2,3]");

  fake_->respond_with(R"({"statusCode":42})");  // not an HTTP status: the handler's fault
  raw = get("/r");
  EXPECT_EQ(raw.status, 502);
  EXPECT_THAT(raw.body, HasSubstr(R"("error":"handler_failed")"));
}

TEST_F(HttpTest, GatewayErrors) {
  api::HttpServerOptions options;
  options.gateway_body_limit = 1024;
  server_.reset();
  start(options);
  add_trigger("post-only", "/post", "echo", {"POST", "PUT"});
  add_trigger("busy", "/busy", "busy");
  add_trigger("crashy", "/crashy", "crashy");
  add_trigger("sleepy", "/sleepy", "sleepy");
  add_trigger("ghost", "/ghost", "ghost");

  auto raw = get("/nothing/here");
  EXPECT_EQ(raw.status, 404);
  EXPECT_EQ(raw.header("Content-Type"), "application/json");
  auto body = boost::json::parse(raw.body).as_object();
  EXPECT_EQ(body.at("error").as_string(), "not_found");
  EXPECT_THAT(std::string(body.at("message").as_string()), HasSubstr("/nothing/here"));

  raw = get("/post");
  EXPECT_EQ(raw.status, 405);
  EXPECT_EQ(raw.header("Allow"), "POST, PUT");
  EXPECT_THAT(raw.body, HasSubstr(R"("error":"method_not_allowed")"));
  EXPECT_EQ(raw_request(server_->port(), http_request("POST", "/post", "x")).status, 200);

  raw = raw_request(server_->port(), http_request("POST", "/post", std::string(2048, 'x')));
  EXPECT_EQ(raw.status, 413);
  EXPECT_THAT(raw.body, HasSubstr(R"("error":"payload_too_large")"));
  EXPECT_THAT(raw.body, HasSubstr("1024"));
  // The API's own limit is separate (8 MiB by default).
  v1::InvokeRequest call;
  call.set_function("echo");
  call.set_payload("\"" + std::string(4096, 'x') + "\"");
  EXPECT_EQ(client()->invoke(call).result().size(), 4098u);

  raw = get("/busy");
  EXPECT_EQ(raw.status, 429);
  EXPECT_EQ(raw.header("Retry-After"), "1");
  EXPECT_THAT(raw.body, HasSubstr(R"("error":"throttled")"));
  raw = get("/crashy");
  EXPECT_EQ(raw.status, 502);
  EXPECT_THAT(raw.body, HasSubstr(R"("error":"handler_failed")"));
  raw = get("/sleepy");
  EXPECT_EQ(raw.status, 504);
  EXPECT_THAT(raw.body, HasSubstr(R"("error":"timeout")"));
  raw = get("/ghost");
  EXPECT_EQ(raw.status, 404);
  EXPECT_THAT(raw.body, HasSubstr("function ghost not found"));
  // API paths never reach the gateway.
  EXPECT_THAT(get("/v1/nope").body, HasSubstr(R"("code":"not_found")"));
}

TEST_F(HttpTest, TriggerAddedBecomesRoutableAndRemovedStopsRouting) {
  EXPECT_EQ(get("/new").status, 404);  // the routing table is now freshly read
  add_trigger("new", "/new", "echo");
  const auto added = std::chrono::steady_clock::now();
  ASSERT_TRUE(eventually([&] { return get("/new").status == 200; }));
  // Within a second (with slack for a loaded machine).
  EXPECT_LT(std::chrono::steady_clock::now() - added, 3s);

  v1::ObjectSet gone;
  gone.add_triggers()->mutable_metadata()->set_name("new");
  fake_->apply(gone, {.mode = ApplyMode::remove});
  EXPECT_TRUE(eventually([&] { return get("/new").status == 404; }));
}

// ---- Parsers that cannot be made slow (issue 11, point 4) -------------------------------------

std::string nested_arrays(std::size_t depth) {
  return std::string(depth, '[') + std::string(depth, ']');
}

// A body 100,000 arrays deep (protobuf's parser took time quadratic in the depth: minutes on an
// io thread each) is refused in one linear pass, and the server keeps answering meanwhile.
TEST_F(HttpTest, DeeplyNestedBodiesAreRefusedQuicklyAndTheServerKeepsAnswering) {
  const std::string deep = nested_arrays(100'000);
  const auto began = std::chrono::steady_clock::now();
  std::vector<std::future<RawResponse>> calls;
  for (int i = 0; i < 3; ++i) {  // more than the io threads
    calls.push_back(std::async(std::launch::async, [&] {
      return raw_request(server_->port(), http_request("POST", "/v1/functions/echo/invoke", deep));
    }));
  }
  EXPECT_EQ(get("/healthz").status, 200);
  for (auto& call : calls) {
    auto raw = call.get();
    EXPECT_EQ(raw.status, 400);
    EXPECT_THAT(raw.body, HasSubstr(R"("code":"invalid_spec")"));
    EXPECT_THAT(raw.body, HasSubstr("nested deeper than 128 levels"));
    EXPECT_THAT(raw.body, HasSubstr(R"("field":"payload")"));
  }
  // API bodies read by protobuf's JSON parser are checked before it sees them.
  auto raw = raw_request(server_->port(),
                         http_request("POST", "/v1/apply", "{\"functions\":" + deep + "}"));
  EXPECT_EQ(raw.status, 400);
  EXPECT_THAT(raw.body, HasSubstr("nested deeper than 128 levels"));
  EXPECT_EQ(get("/healthz").status, 200);
  EXPECT_LT(std::chrono::steady_clock::now() - began, 15s);  // generous: milliseconds here
}

TEST_F(HttpTest, TooDeepPayloadsGetTheDepthMessageNotInvalidJson) {
  auto c = client();
  v1::InvokeRequest call;
  call.set_function("echo");
  call.set_payload(nested_arrays(900));  // valid JSON, too deep
  auto e = catch_error([&] { c->invoke(call); });
  EXPECT_EQ(e.code(), errc::invalid_spec);
  EXPECT_EQ(e.field(), "payload");
  EXPECT_THAT(e.message(), HasSubstr("nested deeper than 128 levels"));
  EXPECT_THAT(e.message(), testing::Not(HasSubstr("not valid JSON")));
  call.set_payload(nested_arrays(129));
  EXPECT_THAT(catch_error([&] { c->invoke(call); }).message(), HasSubstr("deeper than 128"));
  // At the limit is fine, and still linear.
  call.set_payload(nested_arrays(128));
  EXPECT_EQ(c->invoke(call).result(), nested_arrays(128));
  call.set_payload("[1,2");  // broken JSON keeps its own message
  EXPECT_THAT(catch_error([&] { c->invoke(call); }).message(), HasSubstr("not valid JSON"));
}

// A handler's statusCode is served whatever the nesting of its body (a 403 once became a 200
// when the body came first, 40 deep); a result the gateway cannot read is a 502, never a 200.
TEST_F(HttpTest, GatewayServesTheHandlersStatusWhateverTheNesting) {
  add_trigger("r", "/r", "respond");
  const std::string body40 = nested_arrays(40);
  fake_->respond_with(R"({"body":)" + body40 + R"(,"statusCode":403})");
  auto raw = get("/r");
  EXPECT_EQ(raw.status, 403);
  EXPECT_EQ(raw.body, body40);
  fake_->respond_with(R"({"statusCode":403,"body":)" + body40 + "}");
  EXPECT_EQ(get("/r").status, 403);
  fake_->respond_with(R"({"headers":{"a":)" + nested_arrays(120) + R"(},"statusCode":401})");
  EXPECT_EQ(get("/r").status, 401);

  for (const std::string& unreadable :
       {R"({"body":)" + nested_arrays(200) + R"(,"statusCode":403})",
        R"({"statusCode":403,"body":)" + nested_arrays(200) + "}", nested_arrays(200),
        std::string(R"({"statusCode":403,"body":[1,)"), std::string(R"({"body":[1,)")}) {
    fake_->respond_with(unreadable);
    raw = get("/r");
    EXPECT_EQ(raw.status, 502) << unreadable.substr(0, 40);
    EXPECT_THAT(raw.body, HasSubstr(R"("error":"handler_failed")"));
    EXPECT_THAT(raw.body, HasSubstr("the handler's result"));
  }
  fake_->respond_with(nested_arrays(200));
  EXPECT_THAT(get("/r").body, HasSubstr("nested deeper than 128 levels"));
  // A number past a double's range would be printed "Infinity", which is not JSON.
  fake_->respond_with(R"({"statusCode":200,"body":{"n":1e999}})");
  raw = get("/r");
  EXPECT_EQ(raw.status, 502);
  EXPECT_THAT(raw.body, HasSubstr("a number a double cannot hold"));
  fake_->respond_with(R"({"statusCode":200,"body":[0e999999]})");  // NaN
  EXPECT_EQ(get("/r").status, 502);
}

// The head is judged before the body is read: a client that sends only the head of a request
// without the token gets its 401 (it never has to send the body, and the server buffers none).
TEST_F(HttpTest, AnswersFromTheHeadBeforeReadingTheBody) {
  api::HttpServerOptions options;
  options.token = "s3cret-token";
  server_.reset();
  start(options);
  add_trigger("hook", "/hook", "echo");

  const std::string head_only =
      "POST /v1/apply HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
      "Content-Length: 1000000\r\n\r\n";  // under the body limit: the old server waited for it
  auto raw = raw_request(server_->port(), head_only);
  EXPECT_EQ(raw.status, 401);
  EXPECT_EQ(raw.header("WWW-Authenticate"), "Bearer");
  EXPECT_THAT(raw.body, HasSubstr(R"("code":"unauthenticated")"));
  // Unauthenticated clients learn nothing of the limits: 401 before 413.
  raw = raw_request(server_->port(),
                    "POST /v1/apply HTTP/1.1\r\nHost: t\r\nContent-Length: 999999999\r\n\r\n");
  EXPECT_EQ(raw.status, 401);
  raw = raw_request(server_->port(),
                    "POST /v1/apply HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer s3cret-token\r\n"
                    "Content-Length: 999999999\r\n\r\n");
  EXPECT_EQ(raw.status, 413);
  // A public body for a path no trigger serves is not read either.
  raw = raw_request(server_->port(),
                    "POST /nowhere HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n");
  EXPECT_EQ(raw.status, 404);
  EXPECT_THAT(raw.body, HasSubstr(R"("error":"not_found")"));
  EXPECT_THAT(raw.body, HasSubstr("no HTTP trigger serves /nowhere"));
  // What needs no token still works: health checks and the (public) trigger gateway.
  EXPECT_EQ(get("/healthz").status, 200);
  raw = raw_request(server_->port(), http_request("POST", "/hook", "hi"));
  EXPECT_EQ(raw.status, 200);
  raw = raw_request(server_->port(), http_request("POST", "/v1/functions/echo/invoke", "[1]",
                                                  "Authorization: Bearer s3cret-token\r\n"));
  EXPECT_EQ(raw.status, 200);
  EXPECT_EQ(raw.body, "[1]");
}

TEST_F(HttpTest, HeadsOverTheLimitsAre431AndLongTargets414) {
  auto raw = get("/healthz", "X-Big: " + std::string(20'000, 'a') + "\r\n");
  EXPECT_EQ(raw.status, 431);
  EXPECT_THAT(raw.body, HasSubstr("16384"));
  // A head under 16 KiB (over Beast's default of 8 KiB) is fine.
  EXPECT_EQ(get("/healthz", "X-Big: " + std::string(12'000, 'a') + "\r\n").status, 200);

  raw = get("/healthz?x=" + std::string(10'000, 'a'));
  EXPECT_EQ(raw.status, 414);
  EXPECT_THAT(raw.body, HasSubstr("8192"));
  EXPECT_EQ(get("/healthz?x=" + std::string(20'000, 'a')).status, 414);  // over the head too
  EXPECT_EQ(get("/some/gateway/path?x=" + std::string(10'000, 'a')).status, 414);
  EXPECT_EQ(get("/healthz?x=" + std::string(7'000, 'a')).status, 200);
}

// Past max_connections a connection is refused at once (503 or closed), nothing served on it;
// when one closes, a new one is served again.
TEST_F(HttpTest, ConnectionsPastTheCapAreRefused) {
  api::HttpServerOptions options;
  options.max_connections = 2;
  server_.reset();
  start(options);
  const std::string keep_alive = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
  auto first = std::make_unique<RawStream>(server_->port(), keep_alive);
  RawStream second(server_->port(), keep_alive);
  for (RawStream* s : {first.get(), &second}) {
    auto head = s->head();
    ASSERT_EQ(head.status, 200);
    EXPECT_EQ(s->body(head), "ok");
  }
  for (int i = 0; i < 3; ++i) {
    auto raw = get("/healthz");
    EXPECT_NE(raw.status, 200);
    if (raw.status != 0) {  // a reset may overtake the answer
      EXPECT_EQ(raw.status, 503);
      EXPECT_THAT(raw.body, HasSubstr("connection limit"));
    }
  }
  first.reset();  // the server sees it close, and has a place again
  EXPECT_TRUE(eventually([&] { return get("/healthz").status == 200; }));
}

// Bodies the token does not vouch for (the public gateway's) share one bounded buffer: past it a
// request is answered 503 from its head; authenticated bodies do not count.
TEST_F(HttpTest, UnauthenticatedBodiesShareABoundedBuffer) {
  api::HttpServerOptions options;
  options.token = "s3cret-token";
  options.unauthenticated_buffer_limit = 1000;
  server_.reset();
  start(options);
  add_trigger("hook", "/hook", "echo");

  // The head of a body of 800 bytes, the body still to come: it holds 800 of the 1000.
  RawStream first(
      server_->port(),
      "POST /hook HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 800\r\n\r\n");
  const std::string body(800, 'x');
  RawResponse refused;
  ASSERT_TRUE(eventually([&] {
    refused = raw_request(server_->port(), http_request("POST", "/hook", body));
    return refused.status == 503;
  }));
  EXPECT_EQ(refused.header("Retry-After"), "1");
  EXPECT_THAT(refused.body, HasSubstr(R"("error":"unavailable")"));
  EXPECT_THAT(refused.body, HasSubstr("1000"));
  // Authenticated bodies are not counted.
  auto raw = raw_request(server_->port(), http_request("POST", "/v1/functions/echo/invoke",
                                                       "\"" + std::string(2000, 'y') + "\"",
                                                       "Authorization: Bearer s3cret-token\r\n"));
  EXPECT_EQ(raw.status, 200);

  first.send(body);
  auto head = first.head();
  EXPECT_EQ(head.status, 200);
  first.close();
  // Answered, its bytes are free again.
  EXPECT_TRUE(eventually([&] {
    return raw_request(server_->port(), http_request("POST", "/hook", body)).status == 200;
  }));
}

// ---- The route table ------------------------------------------------------------------------

api::Routed answer_with(std::string text) {
  return api::immediate([text] {
    api::Response res{boost::beast::http::status::ok, 11};
    res.body() = text;
    return res;
  });
}

api::Response run(const api::RouteTable& table, boost::beast::http::verb verb,
                  const std::string& target, const api::Principal* who) {
  auto req = std::make_shared<api::Request>(verb, target, 11);
  auto routed = table.dispatch(req, api::parse_target(target), who);
  EXPECT_EQ(routed.mode, api::Routed::Mode::now);
  return api::run_job(routed.job);
}

TEST(RouteTable, MatchesCapturesAnswers405WithAllowAnd404) {
  using boost::beast::http::verb;
  api::RouteTable table;
  table.add(verb::get, "/v1/things", api::Scope::read,
            [](const api::RouteRequest&) { return answer_with("list"); });
  table.add(verb::post, "/v1/things", api::Scope::admin,
            [](const api::RouteRequest&) { return answer_with("create"); });
  table.add(verb::get, "/v1/things/{name}/parts/{part}", api::Scope::read,
            [](const api::RouteRequest& r) {
              return answer_with(r.param("name") + "/" + r.param("part"));
            });
  const auto admin = api::Principal::admin();

  EXPECT_EQ(run(table, verb::get, "/v1/things", &admin).body(), "list");
  EXPECT_EQ(run(table, verb::post, "/v1/things/", &admin).body(), "create");
  EXPECT_EQ(run(table, verb::get, "/v1/things/a%20b/parts/x?q=1", &admin).body(), "a b/x");

  auto res = run(table, verb::delete_, "/v1/things", &admin);
  EXPECT_EQ(res.result_int(), 405);
  EXPECT_EQ(res[boost::beast::http::field::allow], "GET, POST");
  EXPECT_THAT(res.body(), HasSubstr("DELETE is not allowed on /v1/things (allowed: GET, POST)"));
  EXPECT_EQ(run(table, verb::get, "/v1/things/a/parts", &admin).result_int(), 404);
  EXPECT_EQ(run(table, verb::get, "/v1/other", &admin).result_int(), 404);

  // The same verb and pattern twice is a bug of the routes.
  EXPECT_EQ(catch_error([&] {
              table.add(verb::get, "/v1/things/{other}/parts/{x}", api::Scope::read,
                        [](const api::RouteRequest&) { return answer_with(""); });
            }).code(),
            errc::internal);
  EXPECT_EQ(catch_error([&] {
              table.add(verb::get, "/v1/bad/{open", api::Scope::read,
                        [](const api::RouteRequest&) { return answer_with(""); });
            }).code(),
            errc::internal);
}

TEST(RouteTable, ChecksTheRoutesScopeBeforeTheHandlerRuns) {
  using boost::beast::http::verb;
  api::RouteTable table;
  int ran = 0;
  table.add(verb::post, "/v1/things", api::Scope::admin, [&](const api::RouteRequest&) {
    ++ran;
    return answer_with("create");
  });
  table.add(verb::get, "/healthz", api::Scope::none, [&](const api::RouteRequest&) {
    ++ran;
    return answer_with("ok");
  });
  api::Principal reader{api::Principal::bit(api::Scope::read), {}, "ci-reader"};

  auto res = run(table, verb::post, "/v1/things", &reader);
  EXPECT_EQ(res.result_int(), 403);
  EXPECT_THAT(res.body(), HasSubstr(R"("code":"permission_denied")"));
  EXPECT_THAT(res.body(), HasSubstr("ci-reader"));
  EXPECT_THAT(res.body(), HasSubstr("admin scope"));
  res = run(table, verb::post, "/v1/things", nullptr);
  EXPECT_EQ(res.result_int(), 401);
  EXPECT_EQ(res[boost::beast::http::field::www_authenticate], "Bearer");
  EXPECT_EQ(ran, 0);
  // A public route needs no principal.
  EXPECT_EQ(run(table, verb::get, "/healthz", nullptr).body(), "ok");
  EXPECT_EQ(ran, 1);
}

// Every route the server has declares a scope, and only /healthz is public.
TEST(RouteTable, EveryApiRouteDeclaresAScope) {
  api::RouteTable table;
  std::atomic<bool> stopping{false};
  api::add_api_routes(table, {std::make_shared<FakeBackend>(), 1s, 1s, &stopping});
  ASSERT_FALSE(table.routes().empty());
  for (const auto& r : table.routes()) {
    const bool get = r.verb == boost::beast::http::verb::get;
    if (r.pattern == "/healthz" || r.pattern == "/ui" || r.pattern.starts_with("/ui/")) {
      EXPECT_EQ(r.scope, api::Scope::none) << r.pattern;  // the dashboard's files hold no data
    } else if (r.pattern.starts_with("/v1/tokens")) {
      EXPECT_EQ(r.scope, api::Scope::admin) << r.pattern;  // reading tokens is admin's too
    } else if (r.pattern.ends_with("/invoke") || r.pattern.ends_with("/invocations") ||
               (!get && (r.pattern == "/v1/events" || r.pattern == "/v1/queues/{name}/messages"))) {
      // Calling a function, now or later: invoking, sending to a queue, publishing an event.
      EXPECT_EQ(r.scope, api::Scope::invoke) << r.pattern;
    } else if (r.pattern.starts_with("/v1/blobs") && get) {
      // Code is for the agents that run it (and admins): a reader sees specs, not their code.
      EXPECT_EQ(r.scope, api::Scope::node) << r.pattern;
    } else if (r.verb == boost::beast::http::verb::head) {
      EXPECT_EQ(r.scope, api::Scope::read) << r.pattern;
    } else {
      EXPECT_EQ(r.scope, get ? api::Scope::read : api::Scope::admin) << r.pattern;
    }
  }
}

// ---- The WebSocket hook -----------------------------------------------------------------------

// Echoes every frame back, prefixed with the name of the token the peer connected with.
class EchoSocket : public std::enable_shared_from_this<EchoSocket> {
 public:
  explicit EchoSocket(std::unique_ptr<api::WebSocketConnection> c) : c_(std::move(c)) {}
  void read() {
    c_->ws.async_read(buffer_,
                      [self = shared_from_this()](boost::beast::error_code ec, std::size_t) {
                        if (ec) return;
                        self->out_ = self->c_->principal.name + ":" +
                                     boost::beast::buffers_to_string(self->buffer_.data());
                        self->buffer_.consume(self->buffer_.size());
                        self->c_->ws.binary(self->c_->ws.got_binary());
                        self->c_->ws.async_write(boost::asio::buffer(self->out_),
                                                 [self](boost::beast::error_code ec, std::size_t) {
                                                   if (!ec) self->read();
                                                 });
                      });
  }

 private:
  std::unique_ptr<api::WebSocketConnection> c_;
  boost::beast::flat_buffer buffer_;
  std::string out_;
};

// A client's WebSocket handshake to `target`; the server's answer when it declined.
struct WsClient {
  boost::asio::io_context ioc;
  boost::beast::websocket::stream<boost::asio::ip::tcp::socket> ws{ioc};
  boost::beast::websocket::response_type declined;

  bool connect(unsigned short port, const std::string& target, const std::string& token) {
    boost::asio::ip::tcp::endpoint at(boost::asio::ip::make_address("127.0.0.1"), port);
    ws.next_layer().connect(at);
    ws.set_option(boost::beast::websocket::stream_base::decorator(
        [token](boost::beast::websocket::request_type& req) {
          if (!token.empty()) req.set(boost::beast::http::field::authorization, "Bearer " + token);
        }));
    boost::beast::error_code ec;
    ws.handshake(declined, "127.0.0.1", target, ec);
    return !ec;
  }
};

TEST_F(HttpTest, AWebSocketHookGetsTheUpgradedConnectionAfterTheScopeCheck) {
  api::HttpServerOptions options;
  options.token = "s3cret-token";
  fake_ = std::make_shared<FakeBackend>();
  server_ = std::make_unique<api::HttpServer>(fake_, options);
  std::atomic<int> accepted{0};
  server_->add_websocket("/v1/echo/{channel}", api::Scope::node,
                         [&](std::unique_ptr<api::WebSocketConnection> c) {
                           EXPECT_EQ(c->request.target(), "/v1/echo/one");
                           ++accepted;
                           std::make_shared<EchoSocket>(std::move(c))->read();
                         });
  server_->start();
  EXPECT_EQ(catch_error([&] {
              server_->add_websocket("/v1/late", api::Scope::node,
                                     [](std::unique_ptr<api::WebSocketConnection>) {});
            }).code(),
            errc::internal);

  WsClient client;
  ASSERT_TRUE(client.connect(server_->port(), "/v1/echo/one", "s3cret-token"));
  client.ws.binary(true);
  const std::string frame(
      "\x08\x01\x12\x03"
      "abc",
      7);
  client.ws.write(boost::asio::buffer(frame));
  boost::beast::flat_buffer got;
  client.ws.read(got);
  EXPECT_TRUE(client.ws.got_binary());
  EXPECT_EQ(boost::beast::buffers_to_string(got.data()), "admin:" + frame);
  client.ws.close(boost::beast::websocket::close_code::normal);
  EXPECT_EQ(accepted.load(), 1);

  // No token: 401 from the head, the hook never sees it; a plain GET is told to upgrade.
  WsClient anonymous;
  EXPECT_FALSE(anonymous.connect(server_->port(), "/v1/echo/one", ""));
  EXPECT_EQ(anonymous.declined.result_int(), 401);
  auto raw = get("/v1/echo/one", "Authorization: Bearer s3cret-token\r\n");
  EXPECT_EQ(raw.status, 426);
  EXPECT_EQ(raw.header("Upgrade"), "websocket");
  EXPECT_THAT(raw.body, HasSubstr(R"("code":"invalid_spec")"));
  raw = raw_request(server_->port(), http_request("POST", "/v1/echo/one", {},
                                                  "Authorization: Bearer s3cret-token\r\n"));
  EXPECT_EQ(raw.status, 405);
  EXPECT_EQ(raw.header("Allow"), "GET");
  EXPECT_EQ(accepted.load(), 1);
}

TEST_F(HttpTest, WebSocketPathsAreUnderV1) {
  EXPECT_EQ(catch_error([&] {
              api::HttpServer server(fake_);
              server.add_websocket("/agent", api::Scope::node,
                                   [](std::unique_ptr<api::WebSocketConnection>) {});
            }).field(),
            "path");
}

// Scoped tokens: 401 for a missing, unknown or expired one, 403 for a missing scope, both as a
// Status; an invoke token for one function invokes only that one; the server's token is admin.
TEST_F(HttpTest, ScopedTokensAreCheckedAgainstEveryRoutesScope) {
  api::HttpServerOptions options;
  options.token = "s3cret-token";
  server_.reset();
  start(options);
  fake_->add_token("blx_reader", "ci-reader", "read");
  fake_->add_token("blx_echo", "echo-only", "invoke", "echo");
  fake_->add_token("blx_old", "old", "read", {}, true);
  auto auth = [](const std::string& t) { return "Authorization: Bearer " + t + "\r\n"; };

  EXPECT_EQ(get("/v1/functions", auth("blx_reader")).status, 200);
  auto raw =
      raw_request(server_->port(), http_request("POST", "/v1/apply", "{}", auth("blx_reader")));
  EXPECT_EQ(raw.status, 403);
  EXPECT_THAT(raw.body, HasSubstr(R"("code":"permission_denied")"));
  EXPECT_THAT(raw.body, HasSubstr("admin scope"));
  raw = raw_request(server_->port(),
                    http_request("POST", "/v1/functions/echo/invoke", "1", auth("blx_reader")));
  EXPECT_EQ(raw.status, 403);

  raw = raw_request(server_->port(),
                    http_request("POST", "/v1/functions/echo/invoke", "1", auth("blx_echo")));
  EXPECT_EQ(raw.status, 200);
  raw = raw_request(server_->port(),
                    http_request("POST", "/v1/functions/crashy/invoke", "1", auth("blx_echo")));
  EXPECT_EQ(raw.status, 403);
  EXPECT_THAT(raw.body, HasSubstr("for anything but echo"));
  EXPECT_EQ(get("/v1/functions", auth("blx_echo")).status, 403);

  raw = get("/v1/functions", auth("blx_old"));
  EXPECT_EQ(raw.status, 401);
  EXPECT_THAT(raw.body, HasSubstr("expired"));
  raw = get("/v1/functions", auth("blx_unknown"));
  EXPECT_EQ(raw.status, 401);
  EXPECT_THAT(raw.body, HasSubstr("unknown or revoked"));
  EXPECT_EQ(get("/v1/tokens", auth("s3cret-token")).status, 503);  // the fake keeps no tokens
  EXPECT_EQ(get("/v1/tokens", auth("blx_reader")).status, 403);
}

}  // namespace
}  // namespace blixard

namespace blixard {
namespace {

// A port nothing listens on (yet): bound, read and released.
unsigned short free_port() {
  boost::asio::io_context io;
  boost::asio::ip::tcp::acceptor a(io, {boost::asio::ip::make_address("127.0.0.1"), 0});
  return a.local_endpoint().port();
}

TEST(HttpClientRetry, AReadWaitsForAServerThatIsComingUpAndAPostDoesNot) {
  const auto port = free_port();
  client::HttpBackendOptions options;
  options.timeout = 10s;
  auto c = client::make_http_backend("http://127.0.0.1:" + std::to_string(port), options);

  // A POST may have taken effect: it is not retried, and says whom it could not reach.
  try {
    c->apply(v1::ObjectSet{}, {.mode = ApplyMode::apply});
    ADD_FAILURE() << "a POST to nothing succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::unavailable) << e.what();
    EXPECT_THAT(e.message(), HasSubstr(std::to_string(port)));
  }

  // A GET made before the server is up is answered once it is (retried with backoff).
  auto read = std::async(std::launch::async, [c] { return c->list_functions(); });
  auto fake = std::make_shared<FakeBackend>();
  api::HttpServerOptions server_options;
  server_options.port = port;
  api::HttpServer server(fake, server_options);
  server.start();
  EXPECT_EQ(read.get().items_size(), fake->list_functions().items_size());
}

}  // namespace
}  // namespace blixard
