// The HTTP API end to end: a fake in-memory Backend served by HttpServer on 127.0.0.1, driven
// through make_http_backend (and raw sockets for what the client never sends).
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "api/http_server.hpp"
#include "blixard/error.hpp"
#include "client/http_backend.hpp"

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
//   gather waits until `gather_expected` calls are in flight together.
class FakeBackend final : public detail::Backend {
 public:
  v1::ApplyResult apply(const v1::ObjectSet& set, ApplyMode mode) override {
    std::lock_guard lock(mu_);
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
      cv_.notify_all();
      if (!wait_for(cv_, lock, [&] { return slow_released_; })) {
        throw Error(errc::internal, "slow was never released");
      }
    } else if (fn == "gather") {
      std::unique_lock lock(mu_);
      ++gathered_;
      cv_.notify_all();
      if (!wait_for(cv_, lock, [&] { return gathered_ >= gather_expected; })) {
        throw Error(errc::internal, "only " + std::to_string(gathered_) + " calls ran together");
      }
    } else if (fn != "echo") {
      throw Error(errc::not_found, "function " + fn + " not found");
    }
    v1::InvokeResponse out;
    out.set_request_id(request.request_id().empty() ? "generated-id" : request.request_id());
    out.set_result(request.payload());
    out.set_cold_start(true);
    out.set_node("node-1");
    out.mutable_duration()->set_seconds(1);
    out.mutable_duration()->set_nanos(234'000);
    return out;
  }

  v1::ServerInfo info() override {
    v1::ServerInfo out;
    out.set_version("test-version");
    out.set_node("node-1");
    out.set_revision(revision());
    return out;
  }

  // Test controls.
  void wait_slow_started() {
    std::unique_lock lock(mu_);
    ASSERT_TRUE(wait_for(cv_, lock, [&] { return slow_started_; }));
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
  int gathered_ = 0;
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

// One request on a fresh connection, read until the server closes it.
RawResponse raw_request(unsigned short port, const std::string& request) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    throw std::runtime_error("connect failed");
  }
  timeval tv{20, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
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
  auto created = c->apply(set, ApplyMode::create);
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
  auto applied = c->apply(update, ApplyMode::apply);
  EXPECT_EQ(applied.items(0).action(), "configured");
  EXPECT_EQ(c->get_function("echo").spec().memory_mib(), 256u);

  v1::ObjectSet gone;
  gone.add_vms()->mutable_metadata()->set_name("web");
  EXPECT_EQ(c->apply(gone, ApplyMode::remove).items(0).action(), "deleted");
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
    c->apply(set, ApplyMode::create);
    auto dup = catch_error([&] { c->apply(set, ApplyMode::create); });
    EXPECT_EQ(dup.code(), errc::already_exists);
    EXPECT_EQ(dup.field(), "functions[0]");

    v1::ObjectSet bad;
    *bad.add_functions() = make_function("c");
    (*bad.mutable_functions(0)->mutable_metadata()->mutable_labels())["bad"] = "yes";
    auto invalid = catch_error([&] { c->apply(bad, ApplyMode::apply); });
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
    EXPECT_EQ(catch_error([&] { c->apply(absent, ApplyMode::remove); }).code(), errc::not_found);

    v1::InvokeRequest call;
    call.set_function("sleepy");
    auto timeout = catch_error([&] { c->invoke(call); });
    EXPECT_EQ(timeout.code(), errc::timeout);
    EXPECT_THAT(timeout.message(), HasSubstr("past its timeout"));
  }
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
  client()->apply(set, ApplyMode::create);

  auto c = client();
  auto slow = std::async(std::launch::async, [&] {
    v1::InvokeRequest call;
    call.set_function("slow");
    call.set_payload("\"slow\"");
    return c->invoke(call);
  });
  fake_->wait_slow_started();
  // The slow call holds a connection and a worker; a get on the same client still completes,
  // and only then is the slow call let go.
  EXPECT_EQ(c->get_function("echo").metadata().name(), "echo");
  fake_->release_slow();
  EXPECT_EQ(slow.get().result(), "\"slow\"");
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

}  // namespace
}  // namespace blixard
