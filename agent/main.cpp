// blixard-agent: the node agent. With --server it also hosts the control plane (API, store,
// controllers) in the same process, as one-machine clusters and `blixard up` use it.
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <google/protobuf/stubs/logging.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <boost/json.hpp>

#include "agent/fence_watchdog.hpp"
#include "agent/join.hpp"
#include "agent/local_node.hpp"
#include "api/agent_channel.hpp"
#include "api/http_server.hpp"
#include "api/vm_balancer.hpp"
#include "api/websocket.hpp"
#include "blixard/error.hpp"
#include "blixard/version.hpp"
#include "client/http_backend.hpp"
#include "control/vm_sets.hpp"
#include "runtime/driver.hpp"
#include "runtime/libvirt_driver.hpp"
#include "server/local.hpp"
#include "spec/units.hpp"

namespace fs = std::filesystem;

namespace {

constexpr const char* k_usage = R"(usage: blixard-agent --server [options]
       blixard-agent --join HOST:PORT --token TOKEN [options]

Runs a Blixard node. With --server the node also hosts the control plane (HTTP API,
scheduler, controllers, SQLite store) in this process; with --join it runs instances for
the server at HOST:PORT, dialing it over one WebSocket and dialing again when it drops.

options:
  --server              host the control plane
  --join HOST:PORT      join the server there as a node
  --token TOKEN         the token to join with (default: $BLIXARD_TOKEN)
  --name NAME           this node's name, unique in the cluster (default: local with
                        --server, the hostname with --join); --node-name is the same
  --labels K=V,...      labels the scheduler matches (zone=az1,gpu=available)
  --capacity K=V,...    override the detected capacity: memory=4G,vcpu=2
  --data-paths P,...    data this node holds (/data,/srv/media): a cold start whose input
                        path (placement.dataPathFrom) lies under one prefers this node
  --probe-port PORT     with --join: the UDP port other agents time their round trips to
                        (default 0: any free one; "off": none)
  --no-local-node       with --server: run instances only on joined agents
  --node-lease DURATION with --server: a node not heard from for this long is Lost
                        (default 4s)
  --data-dir DIR        state, logs and instance scratch dirs (default: ~/.blixard)
  --listen HOST:PORT    API address (default 127.0.0.1:7070; port 0 picks a free one)
  --max-connections N   with --server: connections open at once, agents' included
                        (default 1024)
  --python PATH         interpreter for Python handlers (default: python3)
  --vm-driver DRIVER    what runs VM replicas: sandbox (a confined process, the default)
                        or libvirt (real guests: KVM where the CPU has it, else TCG)
  --libvirt-uri URI     with --vm-driver libvirt (default: qemu:///system)
  --vm-snapshots N      with --vm-driver libvirt: save images kept per guest shape to
                        restore replicas from instead of booting them (default 2; 0: off)
  --log-level LEVEL     trace, debug, info, warn, error (default: info)
  --version             print the version and exit
  -h, --help            this text

With --server it writes DIR/server.json {"address", "token", "pid"}; SIGTERM or SIGINT stop it.
With --join, SIGTERM or SIGINT stop it and what it runs; SIGUSR2 stops it but leaves its guests
(libvirt) running for the next agent on its data dir, which takes them back if it joins within
the node's lease (an upgrade in place; a killed or crashed agent's guests are taken back too).
exit codes: 0 stopped cleanly, 1 could not start, 2 bad usage.
)";

struct Args {
  bool server = false;
  std::string join;
  std::string token;
  bool local_node = true;
  std::chrono::milliseconds node_lease{4000};
  std::map<std::string, std::string> labels;
  std::map<std::string, std::string> capacity;
  std::vector<std::string> data_paths;
  std::size_t max_connections = 1024;
  int probe_port = 0;  // -1: off
  fs::path data_dir;
  std::string host = "127.0.0.1";
  unsigned short port = 7070;
  std::string node_name;
  std::string python = "python3";
  std::string log_level = "info";
  std::string vm_driver = "sandbox";
  std::string libvirt_uri = "qemu:///system";
  std::size_t vm_snapshots = 2;
};

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "blixard-agent: " << message << "\n(see blixard-agent --help)\n";
  std::exit(2);
}

// "k=v,k2=v2" as a map; a pair without '=' or with an empty key is a usage error.
std::map<std::string, std::string> parse_pairs(const std::string& flag, const std::string& text) {
  std::map<std::string, std::string> out;
  std::size_t at = 0;
  while (at <= text.size()) {
    const auto comma = std::min(text.find(',', at), text.size());
    const std::string pair = text.substr(at, comma - at);
    const auto eq = pair.find('=');
    if (eq == std::string::npos || eq == 0)
      usage_error(flag + ": expected KEY=VALUE, got \"" + pair + "\"");
    out[pair.substr(0, eq)] = pair.substr(eq + 1);
    at = comma + 1;
  }
  return out;
}

Args parse_args(int argc, char** argv) {
  Args args;
  if (const char* home = std::getenv("HOME")) args.data_dir = fs::path(home) / ".blixard";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::cout << k_usage;
      std::exit(0);
    } else if (a == "--version") {
      std::cout << "blixard-agent " << blixard::version() << "\n";
      std::exit(0);
    } else if (a == "--server") {
      args.server = true;
    } else if (a == "--data-dir") {
      args.data_dir = value();
    } else if (a == "--listen") {
      auto listen = value();
      auto colon = listen.rfind(':');
      if (colon == std::string::npos) usage_error("--listen: expected HOST:PORT, got " + listen);
      args.host = listen.substr(0, colon);
      try {
        std::size_t used = 0;
        int port = std::stoi(listen.substr(colon + 1), &used);
        if (used != listen.size() - colon - 1 || port < 0 || port > 65535) throw 0;
        args.port = static_cast<unsigned short>(port);
      } catch (...) {
        usage_error("--listen: bad port in " + listen);
      }
    } else if (a == "--node-name" || a == "--name") {
      args.node_name = value();
    } else if (a == "--join") {
      args.join = value();
    } else if (a == "--token") {
      args.token = value();
    } else if (a == "--labels") {
      args.labels = parse_pairs(a, value());
    } else if (a == "--capacity") {
      args.capacity = parse_pairs(a, value());
      for (const auto& [k, v] : args.capacity) {
        if (k != "memory" && k != "vcpu")
          usage_error("--capacity: unknown key " + k + " (memory, vcpu)");
      }
    } else if (a == "--data-paths") {
      std::stringstream list(value());
      for (std::string path; std::getline(list, path, ',');) {
        if (path.empty() || path.front() != '/') {
          usage_error("--data-paths: \"" + path + "\" is not an absolute path");
        }
        args.data_paths.push_back(path);
      }
    } else if (a == "--probe-port") {
      const std::string v = value();
      if (v == "off") {
        args.probe_port = -1;
      } else {
        try {
          std::size_t used = 0;
          const int n = std::stoi(v, &used);
          if (used != v.size() || n < 0 || n > 65535) throw 0;
          args.probe_port = n;
        } catch (...) {
          usage_error("--probe-port: expected a port (0-65535) or off, got " + v);
        }
      }
    } else if (a == "--max-connections") {
      const std::string v = value();
      try {
        std::size_t used = 0;
        const long n = std::stol(v, &used);
        if (used != v.size() || n < 1) throw 0;
        args.max_connections = static_cast<std::size_t>(n);
      } catch (...) {
        usage_error("--max-connections: expected a positive number, got " + v);
      }
    } else if (a == "--no-local-node") {
      args.local_node = false;
    } else if (a == "--node-lease") {
      auto d = blixard::spec_detail::duration(value());
      if (!d.error.empty() || d.value.count() <= 0)
        usage_error("--node-lease: " + (d.error.empty() ? "must be positive" : d.error));
      args.node_lease = d.value;
    } else if (a == "--vm-driver") {
      args.vm_driver = value();
      if (args.vm_driver != "sandbox" && args.vm_driver != "libvirt") {
        usage_error("--vm-driver: expected sandbox or libvirt, got " + args.vm_driver);
      }
    } else if (a == "--libvirt-uri") {
      args.libvirt_uri = value();
    } else if (a == "--vm-snapshots") {
      const std::string v = value();
      if (v.empty() || v.size() > 3 || v.find_first_not_of("0123456789") != std::string::npos) {
        usage_error("--vm-snapshots: expected a count from 0 to 999, got " + v);
      }
      args.vm_snapshots = std::stoul(v);
    } else if (a == "--python") {
      args.python = value();
    } else if (a == "--log-level") {
      args.log_level = value();
    } else {
      usage_error("unknown option " + a);
    }
  }
  if (args.server == !args.join.empty()) usage_error("give one of --server and --join");
  if (!args.join.empty() && args.token.empty()) {
    if (const char* t = std::getenv("BLIXARD_TOKEN")) args.token = t;
    if (args.token.empty()) usage_error("--join needs --token (or $BLIXARD_TOKEN)");
  }
  if (args.node_name.empty()) {
    if (args.server) {
      args.node_name = "local";
    } else {
      char host[256] = {};
      ::gethostname(host, sizeof host - 1);
      args.node_name = host;
    }
  }
  if (args.data_dir.empty()) usage_error("--data-dir is required when HOME is not set");
  return args;
}

std::string random_token() {
  std::random_device rd;
  std::string token;
  static constexpr std::string_view k_digits = "0123456789abcdef";
  for (int i = 0; i < 32; ++i) {
    auto b = rd() & 0xffu;
    token.push_back(k_digits[b >> 4]);
    token.push_back(k_digits[b & 0xf]);
  }
  return token;
}

// The admin token survives restarts so scripts keep working; it is readable by its owner only.
std::string load_or_create_token(const fs::path& dir) {
  auto path = dir / "admin.token";
  if (std::ifstream in(path); in) {
    std::string token;
    std::getline(in, token);
    if (!token.empty()) return token;
  }
  auto token = random_token();
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || ::write(fd, token.data(), token.size()) != static_cast<ssize_t>(token.size())) {
    throw blixard::Error(blixard::errc::unavailable, "cannot write " + path.string());
  }
  ::close(fd);
  return token;
}

void write_atomically(const fs::path& path, const std::string& content) {
  auto tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << content;
    if (!out) throw blixard::Error(blixard::errc::unavailable, "cannot write " + tmp.string());
  }
  ::chmod(tmp.c_str(), 0600);
  fs::rename(tmp, path);
}

// --join: this machine as a node of the server there, until a signal.
int run_joined(const Args& args, const std::shared_ptr<spdlog::logger>& logger,
               const sigset_t& signals) {
  std::shared_ptr<blixard::agent::LocalNode> node;
  std::unique_ptr<blixard::agent::Joiner> joiner;
  std::unique_ptr<blixard::server::DataDirLock> lock;
  try {
    lock = std::make_unique<blixard::server::DataDirLock>(args.data_dir);
    ::chmod(args.data_dir.c_str(), 0700);
    auto spec = blixard::agent::describe_this_machine();
    for (const auto& [k, v] : args.labels) (*spec.mutable_labels())[k] = v;
    for (const auto& path : args.data_paths) spec.add_data_paths(path);
    if (auto it = args.capacity.find("memory"); it != args.capacity.end()) {
      auto mib = blixard::spec_detail::size_mib(it->second);
      if (!mib.error.empty() || mib.value == 0) {
        usage_error("--capacity memory: " + (mib.error.empty() ? "must be positive" : mib.error));
      }
      spec.set_memory_mib(mib.value);
    }
    if (auto it = args.capacity.find("vcpu"); it != args.capacity.end()) {
      try {
        spec.set_vcpu(static_cast<std::uint32_t>(std::stoul(it->second)));
      } catch (...) {
        usage_error("--capacity vcpu: expected a number, got " + it->second);
      }
    }
    blixard::runtime::SandboxOptions sandbox;
    sandbox.work_dir = args.data_dir / "instances";
    sandbox.python = args.python;
    // Its VM replicas outlive it as guests do, for the next agent within the lease (docs/vms.md).
    sandbox.keep_replicas = true;
    // Functions' code comes from the server's blob store, by digest, with this node's token.
    const std::string url = args.join.starts_with("http://") ? args.join : "http://" + args.join;
    auto server = blixard::client::make_http_backend(url, args.token, std::chrono::minutes(2));
    auto code = std::make_shared<blixard::agent::CodeCache>(
        args.data_dir / "code", [server](const std::string& digest) {
          auto bytes = server->get_blob(digest);
          if (!bytes) {
            throw blixard::Error(blixard::errc::not_found,
                                 "the server holds no code archive " + digest);
          }
          return std::move(*bytes);
        });
    std::unique_ptr<blixard::runtime::Driver> vm_driver;
    if (args.vm_driver == "libvirt") {
      auto options =
          blixard::runtime::libvirt_options(args.data_dir, args.libvirt_uri, args.vm_snapshots);
      options.adopt = true;  // the guests of an agent that ended within the lease run on
      vm_driver = blixard::runtime::make_libvirt_driver(std::move(options));
    }
    node = std::make_shared<blixard::agent::LocalNode>(
        args.node_name, spec, blixard::runtime::make_sandbox_driver(sandbox), code,
        std::move(vm_driver));
    blixard::agent::JoinOptions options;
    options.server = args.join;
    options.token = args.token;
    options.logger = logger;
    options.probe = args.probe_port >= 0;
    options.probe_port = static_cast<std::uint16_t>(std::max(args.probe_port, 0));
    options.watchdog_binary = std::filesystem::read_symlink("/proc/self/exe");
    joiner = std::make_unique<blixard::agent::Joiner>(node, options);
  } catch (const std::exception& e) {
    std::cerr << "blixard-agent: error: " << e.what() << "\n";
    return 1;
  }
  logger->info("blixard-agent {} joining {} as {} (data dir {})", blixard::version(), args.join,
               args.node_name, args.data_dir.string());
  std::thread serving([&] { joiner->run(); });
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  const bool leave_guests = signal_number == SIGUSR2;
  logger->info("received signal {}, stopping{}", signal_number,
               leave_guests ? ", leaving its guests for the next agent" : "");
  joiner->stop();
  serving.join();
  if (leave_guests) {
    node->detach();
    logger->info("stopped; its guests run on");
    logger->flush();
    // At once: the guests' watchers (blocked reading their consoles) end with the process, not
    // under a driver being destroyed.
    std::_Exit(0);
  }
  node->shutdown();
  logger->info("stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // The joined agent's own fence watchdog (agent/fence_watchdog.hpp): not a user-facing mode.
  if (argc == 3 && std::string_view(argv[1]) == "--fence-watchdog") {
    try {
      return blixard::agent::run_fence_watchdog(0, std::chrono::milliseconds(std::stol(argv[2])));
    } catch (const std::exception& e) {
      std::cerr << "blixard-agent --fence-watchdog: " << e.what() << "\n";
      return 2;
    }
  }
  Args args = parse_args(argc, argv);

  // Signals are taken synchronously by the main thread; every thread started later inherits the
  // mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  sigaddset(&signals, SIGUSR2);  // a joined agent: stop, leaving the guests (docs/vms.md)
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  auto logger = spdlog::stderr_color_mt("blixard");
  logger->set_level(spdlog::level::from_str(args.log_level));
  // libprotobuf logs each string it refuses as invalid UTF-8 (a hostile peer's frame or body,
  // refused anyway): into our log at debug, not onto stderr once per message.
  google::protobuf::SetLogHandler(
      [](google::protobuf::LogLevel, const char*, int, const std::string& message) {
        if (auto log = spdlog::get("blixard")) log->debug("protobuf: {}", message);
      });
  if (!args.join.empty()) return run_joined(args, logger, signals);

  std::shared_ptr<blixard::api::Service> service;
  std::unique_ptr<blixard::api::HttpServer> server;
  std::unique_ptr<blixard::api::VmBalancer> balancer;
  const auto state_file = args.data_dir / "server.json";
  try {
    blixard::server::LocalServiceOptions options;
    options.node_name = args.node_name;
    options.python = args.python;
    options.logger = logger;
    options.local_node = args.local_node;
    options.labels = args.labels;
    options.data_paths = args.data_paths;
    options.nodes.lease = args.node_lease;
    if (args.vm_driver == "libvirt") options.libvirt_uri = args.libvirt_uri;
    options.vm_snapshots = args.vm_snapshots;
    service = blixard::server::open_local_service(args.data_dir, options);
    // Only its owner may look inside: it holds the admin token and the store.
    ::chmod(args.data_dir.c_str(), 0700);

    blixard::api::HttpServerOptions http;
    http.address = args.host;
    http.port = args.port;
    http.token = load_or_create_token(args.data_dir);
    http.max_connections = args.max_connections;
    http.logger = logger;
    server = std::make_unique<blixard::api::HttpServer>(service, http);
    server->add_websocket("/v1/agent", blixard::api::Scope::node,
                          [nodes = service->nodes(), logger](auto connection) {
                            blixard::api::serve_agent(std::move(connection), nodes, logger);
                          });
    server->start();
    service->set_public_url(server->url());
    blixard::api::VmBalancerOptions lb;
    lb.address = args.host;
    balancer = std::make_unique<blixard::api::VmBalancer>(*service->vm_sets(), lb, logger);

    boost::json::object state;
    state["address"] = server->url();
    state["token"] = http.token;
    state["pid"] = static_cast<std::int64_t>(::getpid());
    state["data_dir"] = fs::absolute(args.data_dir).string();
    write_atomically(state_file, boost::json::serialize(state));
    logger->info("blixard-agent {} serving {} (data dir {})", blixard::version(), server->url(),
                 args.data_dir.string());
  } catch (const std::exception& e) {
    std::cerr << "blixard-agent: error: " << e.what() << "\n";
    return 1;
  }

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  logger->info("received signal {}, stopping", signal_number);
  std::error_code ec;
  fs::remove(state_file, ec);
  // The Service first: calls in flight fail with `unavailable` and their answers (503) go out
  // while the server still runs; stopping the server first would wait for them to end (a long
  // handler outlives `blixard down`'s grace and its caller gets an empty reply).
  service->shutdown();
  balancer->stop();
  server->stop();
  logger->info("stopped");
  return 0;
}
