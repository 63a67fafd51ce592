// Warm invocation latency (p50/p99) and throughput of an echo function, through the SDK
// (Function::invoke on an embedded cluster) and through an HTTP trigger on the server's gateway,
// beside baselines measured in the same run: a bare loopback HTTP round trip to a tiny raw-socket
// echo server in this binary (the same keep-alive client as for the gateway), the gateway over a
// Backend that answers at once (the HTTP server's own cost, no handler), and the handler driven
// directly over its protocol pipes with no agent in between. Prints a summary of per-call
// overheads and ratios at the end. Not run by the test suite.
//
//   invoke_bench [--benchmark_filter=...]     (BLIXARD_BENCH_PYTHON picks the interpreter)
#include <arpa/inet.h>
#include <benchmark/benchmark.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/use_future.hpp>

#include <spdlog/spdlog.h>

#include "agent/code_cache.hpp"
#include "agent/join.hpp"
#include "agent/local_node.hpp"
#include "api/agent_channel.hpp"
#include "api/http_server.hpp"
#include "api/websocket.hpp"
#include "blixard/blixard.hpp"
#include "client/http_backend.hpp"
#include "handlers/direct.hpp"
#include "runtime/driver.hpp"
#include "server/local.hpp"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

const std::string k_payload = R"({"x":1})";
constexpr int k_max_threads = 8;
constexpr double k_min_time = 1.0;  // seconds per run

// ---- A keep-alive HTTP/1.1 client on one TCP connection (the same for baseline and gateway) --

std::size_t content_length(const std::string& head) {
  std::string lower(head);
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const auto pos = lower.find("\r\ncontent-length:");
  return pos == std::string::npos ? 0 : std::strtoul(lower.c_str() + pos + 17, nullptr, 10);
}

// Reads one HTTP message (head + Content-Length body) from `fd`, keeping extra bytes in `buf`.
// Returns false on EOF before a full message.
bool read_message(int fd, std::string& buf, std::string& head, std::string& body) {
  char chunk[65536];
  std::size_t end;
  while ((end = buf.find("\r\n\r\n")) == std::string::npos) {
    const ssize_t r = ::recv(fd, chunk, sizeof chunk, 0);
    if (r <= 0) return false;
    buf.append(chunk, static_cast<std::size_t>(r));
  }
  head = buf.substr(0, end + 2);
  const std::size_t need = end + 4 + content_length(head);
  while (buf.size() < need) {
    const ssize_t r = ::recv(fd, chunk, sizeof chunk, 0);
    if (r <= 0) return false;
    buf.append(chunk, static_cast<std::size_t>(r));
  }
  body = buf.substr(end + 4, need - end - 4);
  buf.erase(0, need);
  return true;
}

bool send_all(int fd, const std::string& data) {
  for (std::size_t done = 0; done < data.size();) {
    const ssize_t w = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (w <= 0) return false;
    done += static_cast<std::size_t>(w);
  }
  return true;
}

class HttpClient {
 public:
  explicit HttpClient(unsigned short port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd_);
      throw std::runtime_error("connect to 127.0.0.1:" + std::to_string(port) + " failed");
    }
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~HttpClient() { ::close(fd_); }
  int fd() const { return fd_; }
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // POSTs `body` to `path`; returns the status code (0 when the connection broke).
  int post(const std::string& path, const std::string& body, std::string& response) {
    const std::string request = "POST " + path +
                                " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                "application/json\r\nContent-Length: " +
                                std::to_string(body.size()) + "\r\n\r\n" + body;
    std::string head;
    if (!send_all(fd_, request) || !read_message(fd_, buf_, head, response)) return 0;
    return head.size() > 12 ? std::atoi(head.c_str() + 9) : 0;
  }

 private:
  int fd_ = -1;
  std::string buf_;
};

// ---- The baseline server: raw sockets, a thread per connection, echoes the request body -----

class BareHttpServer {
 public:
  void start() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listen_fd_, 64) != 0 ||
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      throw std::runtime_error("bare server: cannot listen on 127.0.0.1");
    }
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] {
      for (;;) {
        const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) return;  // shut down
        std::lock_guard lock(mutex_);
        fds_.push_back(fd);
        connections_.emplace_back([fd] { serve(fd); });
      }
    });
  }

  void stop() {
    if (listen_fd_ < 0) return;
    ::shutdown(listen_fd_, SHUT_RDWR);
    acceptor_.join();
    ::close(listen_fd_);
    listen_fd_ = -1;
    std::lock_guard lock(mutex_);
    for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
    for (auto& t : connections_) t.join();
    for (int fd : fds_) ::close(fd);
  }

  unsigned short port() const { return port_; }

 private:
  static void serve(int fd) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    std::string buf, head, body;
    while (read_message(fd, buf, head, body)) {
      const std::string response =
          "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
          std::to_string(body.size()) + "\r\n\r\n" + body;
      if (!send_all(fd, response)) return;
    }
  }

  int listen_fd_ = -1;
  unsigned short port_ = 0;
  std::thread acceptor_;
  std::mutex mutex_;
  std::vector<int> fds_;
  std::vector<std::thread> connections_;
};

// ---- A Backend that answers at once: the gateway's own cost, without an invocation ---------

class NoopBackend final : public blixard::detail::Backend {
 public:
  blixard::v1::TriggerList list_triggers() override {
    blixard::v1::TriggerList list;
    auto* t = list.add_items();
    t->mutable_metadata()->set_name("noop-http");
    t->mutable_spec()->set_type("http");
    t->mutable_spec()->set_path("/bench/noop");
    t->mutable_spec()->set_function("noop");
    return list;
  }
  blixard::v1::InvokeResponse invoke(const blixard::v1::InvokeRequest& request) override {
    blixard::v1::InvokeResponse out;
    out.set_request_id("noop");
    out.set_result(request.payload());  // the event, as the echo handler returns it
    return out;
  }
  blixard::v1::ApplyResult apply(const blixard::v1::ObjectSet&,
                                 const blixard::detail::ApplyOptions&) override {
    fail();
  }
  blixard::v1::Function get_function(const std::string&) override { fail(); }
  blixard::v1::Vm get_vm(const std::string&) override { fail(); }
  blixard::v1::Trigger get_trigger(const std::string&) override { fail(); }
  blixard::v1::FunctionList list_functions() override { fail(); }
  blixard::v1::VmList list_vms() override { fail(); }
  blixard::v1::NodeList list_nodes() override { fail(); }
  blixard::v1::Node get_node(const std::string&) override { fail(); }
  blixard::v1::Node change_node(const std::string&, NodeAction) override { fail(); }
  blixard::v1::ServerInfo info() override { fail(); }
  blixard::v1::FunctionMetrics function_metrics(const std::string&) override { fail(); }
  std::string prometheus_metrics() override { fail(); }
  blixard::v1::LogChunk function_logs(const std::string&, std::int64_t,
                                      std::chrono::milliseconds) override {
    fail();
  }
  blixard::v1::LogChunk vm_logs(const std::string&, std::int64_t,
                                std::chrono::milliseconds) override {
    fail();
  }
  blixard::v1::WatchEventList events(const std::string&, const std::string&, std::int64_t,
                                     std::chrono::milliseconds) override {
    fail();
  }

 private:
  [[noreturn]] static void fail() { throw std::runtime_error("not served by the no-op backend"); }
};

// ---- The embedded cluster, its gateway, and the baseline servers --------------------------

struct Env {
  fs::path dir;
  std::optional<blixard::Cluster> cluster;
  std::unique_ptr<blixard::api::HttpServer> gateway;
  std::unique_ptr<blixard::api::HttpServer> noop_gateway;  // over NoopBackend
  BareHttpServer bare;
  // The same function on an agent that joined over the agent channel (a server with no node of
  // its own): an HTTP trigger's call then crosses the WebSocket both ways.
  std::shared_ptr<blixard::api::Service> remote_service;
  std::unique_ptr<blixard::api::HttpServer> remote_gateway;
  std::unique_ptr<blixard::agent::Joiner> joiner;
  std::thread joined;
  std::optional<blixard::Cluster> remote;
  std::string python_error;  // why the Python benchmarks are skipped, if they are

  Env() {
    std::string tmpl = (fs::temp_directory_path() / "blixard-invoke-bench-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir = tmpl;
    blixard::LocalOptions options;
    options.python = bench::python();
    cluster.emplace(blixard::Cluster::local(dir / "cluster", options));
    gateway = std::make_unique<blixard::api::HttpServer>(cluster->backend());
    gateway->start();
    noop_gateway = std::make_unique<blixard::api::HttpServer>(std::make_shared<NoopBackend>());
    noop_gateway->start();
    bare.start();

    create(*cluster, "native", native_spec());
    start_remote();
    create(*remote, "native-remote", native_spec());
    // Four calls at a time per instance: answers of calls from both io threads share its pipe.
    auto shared = native_spec();
    shared.mutable_scaling()->set_target_concurrency(4);
    create(*cluster, "native-target4", shared);
    if (bench::python().empty()) {
      python_error = "no python3 found (set BLIXARD_BENCH_PYTHON)";
    } else {
      try {
        create(*cluster, "python", python_spec());
      } catch (const std::exception& e) {
        python_error = std::string("python echo failed: ") + e.what();
      }
    }
  }

  // Four warm instances each (minInstances), so up to four threads never wait on a cold start.
  static blixard::v1::FunctionSpec base_spec() {
    blixard::v1::FunctionSpec s;
    s.set_memory_mib(128);
    s.mutable_timeout()->set_seconds(30);
    s.mutable_scaling()->set_min_instances(4);
    s.mutable_scaling()->mutable_keep_warm()->set_seconds(60);
    return s;
  }
  static blixard::v1::FunctionSpec native_spec() {
    auto s = base_spec();
    s.set_runtime("exec");
    s.add_command(fs::path(BLIXARD_BENCH_ECHO).filename().string());  // from its code directory
    s.set_code(fs::path(BLIXARD_BENCH_ECHO).parent_path().string());
    return s;
  }
  static blixard::v1::FunctionSpec python_spec() {
    auto s = base_spec();
    s.set_runtime("python");
    s.set_handler("echo:handler");
    s.set_code(std::string(BLIXARD_SOURCE_DIR) + "/bench/handlers/python");
    (*s.mutable_env())["PYTHONDONTWRITEBYTECODE"] = "1";
    return s;
  }

  void start_remote() {
    blixard::server::LocalServiceOptions o;
    o.local_node = false;
    remote_service = blixard::server::open_local_service(dir / "remote", o);
    remote_gateway = std::make_unique<blixard::api::HttpServer>(remote_service);
    remote_gateway->add_websocket(
        "/v1/agent", blixard::api::Scope::node, [nodes = remote_service->nodes()](auto connection) {
          blixard::api::serve_agent(std::move(connection), nodes,
                                    std::make_shared<spdlog::logger>("bench"));
        });
    remote_gateway->start();
    blixard::runtime::SandboxOptions sandbox;
    sandbox.work_dir = dir / "agent";
    sandbox.python = bench::python();
    // Code by digest from the server, as a joined agent fetches it.
    auto code = std::make_shared<blixard::agent::CodeCache>(
        dir / "agent-code",
        [server = blixard::client::make_http_backend(
             remote_gateway->url(), "", std::chrono::seconds(60))](const std::string& digest) {
          return server->get_blob(digest).value_or("");
        });
    auto node = std::make_shared<blixard::agent::LocalNode>(
        "agent1", blixard::agent::describe_this_machine(),
        blixard::runtime::make_sandbox_driver(sandbox), code);
    blixard::agent::JoinOptions join;
    join.server = remote_gateway->url();
    joiner = std::make_unique<blixard::agent::Joiner>(node, join);
    joined = std::thread([this] { joiner->run(); });
    remote.emplace(blixard::Cluster::connect(remote_gateway->url()));
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (Clock::now() < deadline) {
      auto nodes = remote->nodes();
      if (!nodes.empty() && nodes[0].status().phase() == "Ready") break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  void create(blixard::Cluster& on, const std::string& name,
              const blixard::v1::FunctionSpec& spec) {
    auto fn = on.create_function(name, spec);
    fn.invoke(k_payload);  // fails loudly here if the handler does not work
    // Every minInstance up before any timing (they start in the background).
    const auto deadline = Clock::now() + std::chrono::seconds(30);
    while (fn.get().status().instances_warm() < 4 && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    blixard::v1::TriggerSpec trigger;
    trigger.set_type("http");
    trigger.set_function(name);
    trigger.set_path("/bench/" + name);
    on.create_trigger(name + "-http", trigger);
  }

  ~Env() {
    remote_service->shutdown();
    joiner->stop();
    joined.join();
    remote_gateway->stop();
    remote.reset();
    bare.stop();
    noop_gateway->stop();
    gateway->stop();
    cluster->close();
    std::error_code ec;
    fs::remove_all(dir, ec);
  }

  static Env& get();
};

std::unique_ptr<Env> g_env;  // made in main before any benchmark runs, destroyed after
Env& Env::get() { return *g_env; }

// ---- Per-iteration latencies, p50/p99 counters and the summary ----------------------------

struct ThreadSamples {
  std::vector<double> us;
  Clock::time_point start, end;
};
ThreadSamples g_samples[k_max_threads];  // slot i belongs to thread i of the running benchmark

struct Figures {
  double p50 = 0, p99 = 0, per_second = 0;
};
std::map<std::string, std::vector<Figures>> g_figures;  // "label/threads:N", one per repetition

// Times `call` once per iteration. Each thread fills only its own slot; thread 0 reads them all
// after the loop, when Google Benchmark's end-of-loop barrier has let every thread finish.
template <class Call>
void timed_loop(benchmark::State& state, const std::string& label, Call&& call) {
  auto& mine = g_samples[state.thread_index()];
  mine.us.clear();
  mine.us.reserve(1 << 16);
  bool first = true;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    if (first) {
      mine.start = t0;
      first = false;
    }
    if (!call()) {
      state.SkipWithError("the call failed");
      break;
    }
    mine.end = Clock::now();
    mine.us.push_back(std::chrono::duration<double, std::micro>(mine.end - t0).count());
  }
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() != 0) return;
  std::vector<double> all;
  auto start = mine.start, end = mine.end;
  for (int i = 0; i < state.threads(); ++i) {
    all.insert(all.end(), g_samples[i].us.begin(), g_samples[i].us.end());
    start = std::min(start, g_samples[i].start);
    end = std::max(end, g_samples[i].end);
  }
  Figures f;
  const double seconds = std::chrono::duration<double>(end - start).count();
  f.per_second = seconds > 0 ? static_cast<double>(all.size()) / seconds : 0;
  f.p50 = bench::percentile(all, 50);
  f.p99 = bench::percentile(all, 99);
  state.counters["p50_us"] = f.p50;
  state.counters["p99_us"] = f.p99;
  // Google Benchmark first runs a few shorter, discarded rounds to size the iteration count; only
  // the run it reports (at least k_min_time long) goes to the summary.
  if (seconds < k_min_time * 0.99) return;
  g_figures[label + "/threads:" + std::to_string(state.threads())].push_back(f);
}

// ---- Baselines ----------------------------------------------------------------------------

void BM_Baseline_BareHttp(benchmark::State& state) {
  HttpClient client(Env::get().bare.port());
  std::string response;
  timed_loop(state, "bare-http", [&] { return client.post("/echo", k_payload, response) == 200; });
}

// The gateway's HTTP work alone: the same route, event and answer, over a Backend that returns
// the event at once.
void BM_Baseline_GatewayNoop(benchmark::State& state) {
  HttpClient client(Env::get().noop_gateway->port());
  std::string response;
  timed_loop(state, "gateway-noop",
             [&] { return client.post("/bench/noop", k_payload, response) == 200; });
}

void BM_Baseline_DirectPipe(benchmark::State& state, bool python) {
  auto& env = Env::get();
  if (python && !env.python_error.empty()) return state.SkipWithError(env.python_error.c_str());
  std::vector<std::string> argv;
  std::string cwd;
  if (python) {
    cwd = std::string(BLIXARD_SOURCE_DIR) + "/bench/handlers/python";
    argv = {bench::python(), std::string(BLIXARD_SOURCE_DIR) + "/python/blixard/handler_runtime.py",
            "echo:handler", cwd};
  } else {
    argv = {BLIXARD_BENCH_ECHO};
    cwd = fs::path(BLIXARD_BENCH_ECHO).parent_path().string();
  }
  bench::DirectInstance instance(argv, bench::handler_env(python), cwd);
  instance.wait_ready();
  for (int i = 0; i < 20; ++i) instance.call(k_payload);
  timed_loop(state, python ? "direct-pipe-python" : "direct-pipe-native", [&] {
    instance.call(k_payload);
    return true;
  });
}

// ---- Blixard ------------------------------------------------------------------------------

void BM_SdkInvoke(benchmark::State& state, const char* name) {
  auto& env = Env::get();
  if (std::string(name) == "python" && !env.python_error.empty()) {
    return state.SkipWithError(env.python_error.c_str());
  }
  auto fn = env.cluster->function(name);
  for (int i = 0; i < 20; ++i) fn.invoke(k_payload);
  std::atomic<int> cold{0};
  timed_loop(state, std::string("sdk-") + name, [&] {
    if (fn.invoke(k_payload).cold_start) cold.fetch_add(1, std::memory_order_relaxed);
    return true;
  });
  state.counters["cold_starts"] = cold.load();
}

void BM_HttpTrigger(benchmark::State& state, const char* name) {
  auto& env = Env::get();
  if (std::string(name) == "python" && !env.python_error.empty()) {
    return state.SkipWithError(env.python_error.c_str());
  }
  HttpClient client(env.gateway->port());
  const std::string path = std::string("/bench/") + name;
  std::string response;
  for (int i = 0; i < 20; ++i) {
    if (client.post(path, k_payload, response) != 200) {
      return state.SkipWithError(("gateway answered: " + response).c_str());
    }
  }
  timed_loop(state, std::string("http-trigger-") + name,
             [&] { return client.post(path, k_payload, response) == 200; });
}

// SDK async_invoke with `depth` calls outstanding from one thread (futures), for throughput.
void BM_SdkAsyncInvoke(benchmark::State& state, const char* name) {
  auto& env = Env::get();
  if (std::string(name) == "python" && !env.python_error.empty()) {
    return state.SkipWithError(env.python_error.c_str());
  }
  auto fn = env.cluster->function(name);
  const auto depth = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    std::vector<std::future<blixard::InvokeResult>> calls;
    for (std::size_t i = 0; i < depth; ++i) {
      calls.push_back(fn.async_invoke(k_payload, boost::asio::use_future));
    }
    for (auto& c : calls) c.get();
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(depth));
}

// ---- An event-driven load driver: one thread keeps `connections` keep-alive connections busy
// through epoll, as wrk does, so the client's own sleeps and wakeups (a blocking thread per
// connection pays two a call) do not bound what the server under test can do.

class LoadDriver {
 public:
  LoadDriver(unsigned short port, const std::string& path, int connections)
      : request_("POST " + path +
                 " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 "Content-Length: " +
                 std::to_string(k_payload.size()) + "\r\n\r\n" + k_payload),
        epoll_(::epoll_create1(EPOLL_CLOEXEC)) {
    for (int i = 0; i < connections; ++i) {
      auto c = std::make_unique<HttpClient>(port);
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u32 = static_cast<std::uint32_t>(i);
      ::epoll_ctl(epoll_, EPOLL_CTL_ADD, c->fd(), &ev);
      conns_.push_back({std::move(c), {}, {}});
    }
  }
  ~LoadDriver() { ::close(epoll_); }
  LoadDriver(const LoadDriver&) = delete;
  LoadDriver& operator=(const LoadDriver&) = delete;

  // Tells what the server holds when calls go unanswered.
  std::function<void()> on_hang;

  // Every connection sends a call, and each answer is followed by the next call on its
  // connection until `duration` has passed; the calls then in flight are answered before it
  // returns. Latencies go to `us` (when not null). False: a call failed or went unanswered.
  bool run(std::chrono::duration<double> duration, std::vector<double>* us, double* seconds) {
    const auto start = Clock::now();
    const auto stop = start + std::chrono::duration_cast<Clock::duration>(duration);
    std::size_t in_flight = 0;
    for (auto& c : conns_) {
      if (!send(c)) return false;
      ++in_flight;
    }
    std::array<epoll_event, 64> events;
    char chunk[65536];
    while (in_flight > 0) {
      const int n = ::epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), 5000);
      if (n <= 0) {  // nothing for 5 s: a call hangs
        std::fprintf(stderr, "load driver: %zu calls unanswered for 5 s\n", in_flight);
        if (on_hang) on_hang();
        return false;
      }
      const auto now = Clock::now();
      for (int e = 0; e < n; ++e) {
        Conn& c = conns_[events[static_cast<std::size_t>(e)].data.u32];
        const ssize_t r = ::recv(c.client->fd(), chunk, sizeof chunk, 0);
        if (r <= 0) {
          std::fprintf(stderr, "load driver: the server closed a connection (%zd)\n", r);
          return false;
        }
        c.buf.append(chunk, static_cast<std::size_t>(r));
        const auto end = c.buf.find("\r\n\r\n");
        if (end == std::string::npos) continue;
        const std::size_t need = end + 4 + content_length(c.buf.substr(0, end + 2));
        if (c.buf.size() < need) continue;
        if (c.buf.compare(0, 12, "HTTP/1.1 200") != 0) {
          std::fprintf(stderr, "load driver: a call was answered %s\n",
                       c.buf.substr(0, std::min<std::size_t>(need, 400)).c_str());
          return false;
        }
        c.buf.erase(0, need);
        if (us != nullptr)
          us->push_back(std::chrono::duration<double, std::micro>(now - c.sent).count());
        --in_flight;
        if (now < stop) {
          if (!send(c)) return false;
          ++in_flight;
        }
      }
    }
    *seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return true;
  }

 private:
  struct Conn {
    std::unique_ptr<HttpClient> client;
    std::string buf;
    Clock::time_point sent;
  };
  bool send(Conn& c) {
    c.sent = Clock::now();
    return send_all(c.client->fd(), request_);
  }

  std::string request_;
  int epoll_;
  std::vector<Conn> conns_;
};

double process_cpu_seconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  auto sec = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return sec(ru.ru_utime) + sec(ru.ru_stime);
}

// `state.range(0)` connections from one thread: a warm-up (the pool scales to the demand), then
// k_min_time timed.
void load_bench(benchmark::State& state, const std::string& label, unsigned short port,
                const std::string& path) {
  const int connections = static_cast<int>(state.range(0));
  LoadDriver driver(port, path, connections);
  driver.on_hang = [] {
    for (const auto& fn : Env::get().cluster->functions()) {
      std::fprintf(stderr, "  %s: %s\n", fn.metadata().name().c_str(),
                   fn.status().ShortDebugString().c_str());
    }
  };
  double seconds = 0;
  if (!driver.run(std::chrono::milliseconds(500), nullptr, &seconds)) {
    return state.SkipWithError("a warm-up call failed");
  }
  std::vector<double> us;
  us.reserve(1 << 18);
  const double cpu_before = process_cpu_seconds();
  for (auto _ : state) {
    if (!driver.run(std::chrono::duration<double>(k_min_time), &us, &seconds)) {
      return state.SkipWithError("a call failed");
    }
  }
  Figures f;
  f.per_second = static_cast<double>(us.size()) / seconds;
  f.p50 = bench::percentile(us, 50);
  f.p99 = bench::percentile(us, 99);
  // This process's CPU (server, agent and load driver; not the handlers) per call.
  state.counters["cpu_us_per_call"] =
      (process_cpu_seconds() - cpu_before) * 1e6 / static_cast<double>(us.size());
  state.counters["calls_per_s"] = f.per_second;
  state.counters["p50_us"] = f.p50;
  state.counters["p99_us"] = f.p99;
  g_figures[label + "/conns:" + std::to_string(connections)].push_back(f);
}

void BM_Load_BareHttp(benchmark::State& state) {
  load_bench(state, "bare-http", Env::get().bare.port(), "/echo");
}
void BM_Load_GatewayNoop(benchmark::State& state) {
  load_bench(state, "gateway-noop", Env::get().noop_gateway->port(), "/bench/noop");
}
void BM_Load_HttpTrigger(benchmark::State& state, const char* name) {
  auto& env = Env::get();
  if (std::string(name) == "python" && !env.python_error.empty()) {
    return state.SkipWithError(env.python_error.c_str());
  }
  const bool remote = std::string(name) == "native-remote";
  load_bench(state, std::string("http-trigger-") + name,
             remote ? env.remote_gateway->port() : env.gateway->port(),
             std::string("/bench/") + name);
}

#define BLIXARD_LOAD_BENCH(b) b->UseRealTime()->Iterations(1)->Arg(4)->Arg(16)

BLIXARD_LOAD_BENCH(BENCHMARK(BM_Load_BareHttp));
BLIXARD_LOAD_BENCH(BENCHMARK(BM_Load_GatewayNoop));
BLIXARD_LOAD_BENCH(BENCHMARK_CAPTURE(BM_Load_HttpTrigger, native, "native"));
BLIXARD_LOAD_BENCH(BENCHMARK_CAPTURE(BM_Load_HttpTrigger, native_remote, "native-remote"));
BENCHMARK_CAPTURE(BM_Load_HttpTrigger, native_target4, "native-target4")
    ->UseRealTime()
    ->Iterations(1)
    ->Arg(16);
BLIXARD_LOAD_BENCH(BENCHMARK_CAPTURE(BM_Load_HttpTrigger, python, "python"));

#define BLIXARD_LATENCY_BENCH(b) \
  b->UseRealTime()->MinTime(k_min_time)->Threads(1)->Threads(2)->Threads(4)

BLIXARD_LATENCY_BENCH(BENCHMARK(BM_Baseline_BareHttp));
BLIXARD_LATENCY_BENCH(BENCHMARK(BM_Baseline_GatewayNoop));
BLIXARD_LATENCY_BENCH(BENCHMARK_CAPTURE(BM_Baseline_DirectPipe, native, false));
BLIXARD_LATENCY_BENCH(BENCHMARK_CAPTURE(BM_SdkInvoke, native, "native"));
BLIXARD_LATENCY_BENCH(BENCHMARK_CAPTURE(BM_HttpTrigger, native, "native"));
BLIXARD_LATENCY_BENCH(BENCHMARK_CAPTURE(BM_Baseline_DirectPipe, python, true));
BLIXARD_LATENCY_BENCH(BENCHMARK_CAPTURE(BM_SdkInvoke, python, "python"));
BLIXARD_LATENCY_BENCH(BENCHMARK_CAPTURE(BM_HttpTrigger, python, "python"));
BENCHMARK_CAPTURE(BM_SdkAsyncInvoke, native, "native")
    ->UseRealTime()
    ->MinTime(k_min_time)
    ->Arg(2)
    ->Arg(4);

// The median over repetitions of each figure.
Figures median(std::vector<Figures> runs) {
  Figures m;
  std::vector<double> v;
  for (auto field : {&Figures::p50, &Figures::p99, &Figures::per_second}) {
    v.clear();
    for (const auto& f : runs) v.push_back(f.*field);
    m.*field = bench::percentile(v, 50);
  }
  return m;
}

void print_summary() {
  if (g_figures.empty()) return;
  std::printf(
      "\nSummary, medians over repetitions (p50/p99 in us; overhead = p50 minus the bare "
      "HTTP p50 at the same thread count):\n");
  std::printf("%-28s %5s %9s %9s %11s %10s %8s\n", "path/threads", "runs", "p50", "p99", "calls/s",
              "overhead", "x bare");
  for (const auto& [key, runs] : g_figures) {
    const Figures f = median(runs);
    const auto threads = key.substr(key.find('/'));
    const auto bare = g_figures.find("bare-http" + threads);
    std::printf("%-28s %5zu %9.1f %9.1f %11.0f", key.c_str(), runs.size(), f.p50, f.p99,
                f.per_second);
    if (bare != g_figures.end()) {
      const Figures b = median(bare->second);
      if (b.p50 > 0) std::printf(" %+10.1f %8.2f", f.p50 - b.p50, f.p50 / b.p50);
    }
    std::printf("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  try {
    g_env = std::make_unique<Env>();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "invoke_bench: cannot set up the cluster: %s\n", e.what());
    return 1;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  print_summary();
  g_env.reset();  // closes the cluster (no handler outlives it) and removes its temp dir
  return 0;
}
