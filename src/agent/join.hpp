// Keeps this machine joined to a server (DESIGN §1): dials its /v1/agent over one WebSocket with
// a `node` token, says hello, serves the agent Session on it and heartbeats; when the connection
// ends it backs off (exponentially, with jitter, up to a cap) and dials again, so an agent
// outlives a server restart or a cut link.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>

#include "agent/local_node.hpp"

namespace spdlog {
class logger;
}

namespace blixard::agent {

struct JoinOptions {
  // The server: "HOST:PORT" or "http://HOST:PORT".
  std::string server;
  std::string token;
  std::chrono::milliseconds max_backoff{5000};
  // The UDP port other agents time their round trips to (0: one the system picks); `probe`
  // false: none (the scheduler then knows this node's distance to the server only).
  bool probe = true;
  std::uint16_t probe_port = 0;
  std::shared_ptr<spdlog::logger> logger;
  // The agent's own binary, run as its fence watchdog (agent/fence_watchdog.hpp): primaries
  // started here die within half the server's lease once this agent stops hearing from it.
  // Empty: no watchdog (primaries outlive a paused agent).
  std::filesystem::path watchdog_binary;
};

class Joiner {
 public:
  Joiner(std::shared_ptr<LocalNode> node, JoinOptions options);
  ~Joiner();
  // Serves until stop(); throws Error(invalid_spec) for a server address it cannot parse.
  void run();
  // Thread-safe; run() returns soon after.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace blixard::agent
