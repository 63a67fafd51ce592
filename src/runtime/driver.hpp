// The agent-side runtime: a Driver runs function handlers and VM replicas on this node.
// Drivers: sandbox (namespaces + cgroups, here), libvirt (later).
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>

#include "blixard/error.hpp"
#include "blixard/v1/function.pb.h"

namespace blixard::runtime {

struct Invocation {
  std::string function;
  v1::FunctionSpec spec;  // validated, defaults applied
  std::string payload;    // JSON text
  std::string request_id;
  std::chrono::milliseconds timeout{0};  // 0: the spec's timeout
};

struct InvocationResult {
  std::string result;  // JSON text from the handler
  std::chrono::microseconds duration{0};
  bool cold_start = true;
};

class Driver {
 public:
  virtual ~Driver() = default;
  virtual std::string name() const = 0;
  // Runs one invocation to completion. Throws blixard::Error: timeout, handler_failed (crash,
  // protocol error, raised exception; the message carries the handler's last log lines),
  // payload_too_large, unavailable.
  virtual InvocationResult invoke(const Invocation& invocation) = 0;
  // Kills every process this driver started (server shutdown).
  virtual void shutdown() = 0;
};

struct SandboxOptions {
  // Per-instance scratch dirs and logs live here.
  std::filesystem::path work_dir;
  // Interpreter for runtime "python".
  std::string python = "python3";
  // Parent cgroup under which each instance gets its own (v2 or v1 memory/pids); empty: auto.
  std::string cgroup_parent;
};

std::unique_ptr<Driver> make_sandbox_driver(SandboxOptions options);

}  // namespace blixard::runtime
