// Load driver: one `blixard-agent --server` holding N simulated agents, each a real WebSocket on
// the agent channel that says hello (a name, labels, capacity), heartbeats at the interval its
// welcome gives (1 s by default) and answers the server's pings. Reports the server's CPU (share
// of one core, from /proc) and resident memory per agent once every agent has joined, beside the
// same server idle, measured in the same run.
//
//   build/cpp/bench/agent_swarm [--agents 10000] [--seconds 20] [--agent-binary PATH]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/json.hpp>

#include "common/frame_socket.hpp"

namespace {

namespace fs = std::filesystem;
namespace net = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
using tcp = net::ip::tcp;
using namespace std::chrono_literals;

struct Args {
  int agents = 10000;
  int seconds = 20;
  std::string agent_binary = BLIXARD_AGENT_BINARY;
};

struct ProcStat {
  double cpu_seconds = 0;
  double rss_mib = 0;
};

ProcStat read_proc(pid_t pid) {
  ProcStat out;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), {});
  // Fields after the command (in parentheses, which may hold spaces): utime and stime are 14
  // and 15.
  std::istringstream rest(text.substr(text.rfind(')') + 2));
  std::vector<std::string> f;
  for (std::string s; rest >> s;) f.push_back(s);
  if (f.size() > 13) {
    out.cpu_seconds =
        (std::stod(f[11]) + std::stod(f[12])) / static_cast<double>(sysconf(_SC_CLK_TCK));
  }
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) out.rss_mib = std::stod(line.substr(6)) / 1024.0;
  }
  return out;
}

// One simulated agent: dial, hello, heartbeat, answer pings.
class SimAgent : public std::enable_shared_from_this<SimAgent> {
 public:
  SimAgent(net::io_context& io, std::string name, std::atomic<int>& joined)
      : io_(io), name_(std::move(name)), joined_(joined), timer_(net::make_strand(io)) {}

  void start(const tcp::resolver::results_type& endpoints, const std::string& host,
             const std::string& token) {
    auto ws = std::make_unique<blixard::FrameSocket::Stream>(timer_.get_executor());
    beast::get_lowest_layer(*ws).expires_after(30s);
    beast::get_lowest_layer(*ws).connect(endpoints);
    beast::get_lowest_layer(*ws).expires_never();
    ws->set_option(websocket::stream_base::decorator([token](websocket::request_type& req) {
      req.set(beast::http::field::authorization, "Bearer " + token);
    }));
    ws->handshake(host, "/v1/agent");
    socket_ = std::make_shared<blixard::FrameSocket>(std::move(*ws));
    auto self = shared_from_this();
    socket_->start({[self](blixard::v1::AgentFrame& f) { self->on_frame(f); },
                    [self](const std::string& why) { self->closed_ = why; }});
    blixard::v1::AgentFrame hello;
    auto& h = *hello.mutable_hello();
    h.set_name(name_);
    h.set_version("swarm");
    auto& spec = *h.mutable_spec();
    (*spec.mutable_labels())["zone"] = "az" + std::to_string(std::hash<std::string>{}(name_) % 3);
    spec.set_memory_mib(8192);
    spec.set_vcpu(4);
    socket_->send(hello);
  }

  const std::string& closed() const { return closed_; }
  void stop() {
    timer_.cancel();
    if (socket_) socket_->close("the swarm is done");
  }

 private:
  void on_frame(blixard::v1::AgentFrame& f) {
    if (f.has_welcome()) {
      every_ = std::chrono::milliseconds(f.welcome().heartbeat_ms());
      ++joined_;
      beat();
    } else if (f.has_ping()) {
      blixard::v1::AgentFrame pong;
      pong.mutable_pong()->set_sent_us(f.ping().sent_us());
      socket_->send(pong);
    }
  }
  void beat() {
    timer_.expires_after(every_);
    timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec) return;
      blixard::v1::AgentFrame f;
      f.mutable_heartbeat()->set_sequence(++self->sequence_);
      self->socket_->send(f);
      self->beat();
    });
  }

  net::io_context& io_;
  std::string name_;
  std::atomic<int>& joined_;
  net::steady_timer timer_;
  std::shared_ptr<blixard::FrameSocket> socket_;
  std::chrono::milliseconds every_{1000};
  std::uint64_t sequence_ = 0;
  std::string closed_;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--agents")
      a.agents = std::stoi(argv[i + 1]);
    else if (k == "--seconds")
      a.seconds = std::stoi(argv[i + 1]);
    else if (k == "--agent-binary")
      a.agent_binary = argv[i + 1];
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  // A descriptor per agent in this process and in the server (a child: it inherits the limit).
  rlimit files{};
  getrlimit(RLIMIT_NOFILE, &files);
  files.rlim_cur = std::min<rlim_t>(files.rlim_max, static_cast<rlim_t>(args.agents) + 1024);
  if (setrlimit(RLIMIT_NOFILE, &files) != 0 ||
      files.rlim_cur < static_cast<rlim_t>(args.agents) + 256) {
    std::fprintf(stderr, "cannot open %d descriptors (hard limit %llu)\n", args.agents + 1024,
                 static_cast<unsigned long long>(files.rlim_max));
    return 1;
  }
  const fs::path dir = fs::temp_directory_path() / ("blixard-swarm-" + std::to_string(getpid()));
  fs::create_directories(dir);
  const pid_t server = fork();
  if (server == 0) {
    const std::string max = std::to_string(args.agents + 100);
    const std::string log = (dir / "server.log").string();
    std::freopen(log.c_str(), "w", stderr);
    execl(args.agent_binary.c_str(), args.agent_binary.c_str(), "--server", "--no-local-node",
          "--listen", "127.0.0.1:0", "--data-dir", dir.c_str(), "--max-connections", max.c_str(),
          "--log-level", "warn", nullptr);
    std::perror("exec blixard-agent");
    _exit(127);
  }
  auto finish = [&](int code) {
    kill(server, SIGTERM);
    waitpid(server, nullptr, 0);
    fs::remove_all(dir);
    return code;
  };
  const fs::path state = dir / "server.json";
  for (int i = 0; i < 300 && !fs::exists(state); ++i) std::this_thread::sleep_for(100ms);
  if (!fs::exists(state)) {
    std::cerr << "the server did not start; see its log\n";
    return finish(1);
  }
  std::this_thread::sleep_for(200ms);
  std::ifstream in(state);
  const auto info = boost::json::parse(std::string((std::istreambuf_iterator<char>(in)), {}));
  const std::string address(info.at("address").as_string());
  const std::string token(info.at("token").as_string());
  const auto hostport = address.substr(address.find("//") + 2);
  const std::string host = hostport.substr(0, hostport.rfind(':'));
  const std::string port = hostport.substr(hostport.rfind(':') + 1);

  // The server idle, before any agent.
  const ProcStat idle0 = read_proc(server);
  std::this_thread::sleep_for(std::chrono::seconds(std::min(args.seconds, 5)));
  const ProcStat idle1 = read_proc(server);
  const double idle_cpu = (idle1.cpu_seconds - idle0.cpu_seconds) / std::min(args.seconds, 5);

  net::io_context io;
  auto guard = net::make_work_guard(io);
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) threads.emplace_back([&] { io.run(); });
  tcp::resolver resolver(io);
  const auto endpoints = resolver.resolve(host, port);
  std::atomic<int> joined{0};
  std::vector<std::shared_ptr<SimAgent>> agents;
  const auto dial_start = std::chrono::steady_clock::now();
  for (int i = 0; i < args.agents; ++i) {
    auto a = std::make_shared<SimAgent>(io, "sim-" + std::to_string(i), joined);
    try {
      a->start(endpoints, host, token);
    } catch (const std::exception& e) {
      std::cerr << "agent " << i << ": " << e.what() << "\n";
      return finish(1);
    }
    agents.push_back(std::move(a));
  }
  while (joined < args.agents &&
         std::chrono::steady_clock::now() - dial_start < std::chrono::minutes(5)) {
    std::this_thread::sleep_for(100ms);
  }
  const double join_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - dial_start).count();
  if (joined < args.agents) {
    std::cerr << "only " << joined << " of " << args.agents << " agents joined\n";
    return finish(1);
  }
  std::this_thread::sleep_for(3s);  // past the joins' store writes
  const ProcStat busy0 = read_proc(server);
  std::this_thread::sleep_for(std::chrono::seconds(args.seconds));
  const ProcStat busy1 = read_proc(server);
  int closed = 0;
  for (const auto& a : agents) closed += a->closed().empty() ? 0 : 1;
  const double cpu = (busy1.cpu_seconds - busy0.cpu_seconds) / args.seconds;
  std::printf("agents %d (joined in %.1f s), heartbeat 1 Hz, pings answered\n", args.agents,
              join_s);
  std::printf("server CPU: idle %.1f%% of a core, with the agents %.1f%% of a core\n",
              idle_cpu * 100, cpu * 100);
  std::printf("server RSS: idle %.1f MiB, with the agents %.1f MiB: %.1f KiB per agent\n",
              idle1.rss_mib, busy1.rss_mib, (busy1.rss_mib - idle1.rss_mib) * 1024.0 / args.agents);
  std::printf("connections closed during the run: %d\n", closed);
  for (auto& a : agents) a->stop();
  std::this_thread::sleep_for(500ms);
  guard.reset();
  io.stop();
  for (auto& t : threads) t.join();
  return finish(closed == 0 ? 0 : 2);
}
