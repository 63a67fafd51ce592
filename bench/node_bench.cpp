// A warm call to an instance on another agent against one on this node (bench/RESULTS.md, "Many
// nodes"): the same native echo instance called through agent::LocalNode directly (the baseline:
// what the embedded default does), and through control::RemoteNode over a real WebSocket on
// loopback to an agent::Session (what a call to an instance on a joined agent adds: two frames,
// their protobuf, the socket both ways). p50/p99 in the counters; run with
//   build/cpp/bench/node_bench --benchmark_min_time=3
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <future>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/websocket.hpp>

#include "agent/code_cache.hpp"
#include "agent/local_node.hpp"
#include "agent/session.hpp"
#include "common/code_archive.hpp"
#include "common/frame_socket.hpp"
#include "control/remote_node.hpp"
#include "runtime/driver.hpp"

namespace {

namespace fs = std::filesystem;
namespace net = boost::asio;
namespace v1 = blixard::v1;
using tcp = net::ip::tcp;

// The echo handler's directory as the server would keep it: an archive nodes fetch by digest.
const blixard::CodeArchive& echo_code() {
  static const blixard::CodeArchive archive =
      blixard::pack_code(fs::path(BLIXARD_BENCH_ECHO).parent_path());
  return archive;
}

v1::FunctionSpec echo_spec() {
  v1::FunctionSpec s;
  s.set_runtime("exec");
  s.add_command(fs::path(BLIXARD_BENCH_ECHO).filename().string());
  s.set_code_digest(echo_code().digest);
  s.set_memory_mib(64);
  s.mutable_timeout()->set_seconds(30);
  return s;
}

fs::path work_dir(const std::string& name) {
  return fs::temp_directory_path() /
         ("blixard-node-bench-" + std::to_string(::getpid()) + "-" + name);
}

std::shared_ptr<blixard::agent::LocalNode> make_node(const std::string& name) {
  blixard::runtime::SandboxOptions o;
  o.work_dir = work_dir(name);
  auto code = std::make_shared<blixard::agent::CodeCache>(
      work_dir(name) / "code", [](const std::string&) { return echo_code().bytes; });
  return std::make_shared<blixard::agent::LocalNode>(
      name, v1::NodeSpec{}, blixard::runtime::make_sandbox_driver(o), std::move(code));
}

// A server end and an agent end joined by a WebSocket on 127.0.0.1, each on an io thread.
struct Channel {
  net::io_context server_io, agent_io;
  net::executor_work_guard<net::io_context::executor_type> g1{server_io.get_executor()},
      g2{agent_io.get_executor()};
  std::vector<std::thread> threads;
  std::shared_ptr<blixard::agent::LocalNode> agent_node = make_node("remote");
  std::shared_ptr<blixard::FrameSocket> server_end, agent_end;
  std::shared_ptr<blixard::agent::Session> session;
  std::shared_ptr<blixard::control::RemoteNode> remote;

  Channel() {
    threads.emplace_back([this] { server_io.run(); });
    threads.emplace_back([this] { agent_io.run(); });
    tcp::acceptor acceptor(server_io, {net::ip::make_address("127.0.0.1"), 0});
    auto accepted = std::async(std::launch::async, [&] {
      blixard::FrameSocket::Stream ws(acceptor.accept(net::make_strand(server_io)));
      ws.accept();
      return std::make_shared<blixard::FrameSocket>(std::move(ws));
    });
    blixard::FrameSocket::Stream ws(net::make_strand(agent_io));
    boost::beast::get_lowest_layer(ws).connect(acceptor.local_endpoint());
    ws.handshake("127.0.0.1", "/v1/agent");
    agent_end = std::make_shared<blixard::FrameSocket>(std::move(ws));
    server_end = accepted.get();
    session = std::make_shared<blixard::agent::Session>(
        agent_node, agent_io.get_executor(),
        [this](const v1::AgentFrame& f) { return agent_end->send(f); });
    blixard::control::RemoteNode::Link link;
    link.send = [this](const v1::AgentFrame& f) { return server_end->send(f); };
    remote = std::make_shared<blixard::control::RemoteNode>("remote", v1::NodeSpec{}, link);
    agent_end->start({[this](v1::AgentFrame& f) { session->receive(f); }, {}});
    server_end->start({[this](v1::AgentFrame& f) { remote->receive(f); }, {}});
  }
  ~Channel() {
    remote->lose("bench over");
    session->close();
    agent_node->shutdown();
    server_end->close("bench over");
    agent_end->close("bench over");
    g1.reset();
    g2.reset();
    server_io.stop();
    agent_io.stop();
    for (auto& t : threads) t.join();
  }
};

void report(benchmark::State& state, std::vector<double>& us) {
  if (us.empty()) return;
  std::sort(us.begin(), us.end());
  state.counters["p50_us"] = us[us.size() / 2];
  state.counters["p99_us"] = us[us.size() * 99 / 100];
}

void run_calls(benchmark::State& state, blixard::control::Node& node) {
  blixard::control::Assignment a;
  a.instance.function = "echo";
  a.instance.spec = echo_spec();
  auto instance = node.start(a);
  blixard::runtime::Invocation inv;
  inv.function = "echo";
  inv.spec = a.instance.spec;
  inv.payload = R"({"n":1})";
  inv.request_id = "bench";
  std::vector<double> us;
  us.reserve(1 << 16);
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = instance->call(inv);
    benchmark::DoNotOptimize(r);
    us.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  state.SetItemsProcessed(state.iterations());
  report(state, us);
  instance->stop(std::chrono::milliseconds(200));
}

void BM_WarmCall_LocalNode(benchmark::State& state) {
  {
    auto node = make_node("local");
    run_calls(state, *node);
    node->shutdown();
  }
  fs::remove_all(work_dir("local"));
}

void BM_WarmCall_RemoteNode(benchmark::State& state) {
  {
    Channel channel;
    run_calls(state, *channel.remote);
  }
  fs::remove_all(work_dir("remote"));
}

BENCHMARK(BM_WarmCall_LocalNode)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_WarmCall_RemoteNode)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
