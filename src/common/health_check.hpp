// The checks a VM replica's readiness and health are made of (proto Readiness): a TCP connect,
// and an HTTP GET that must answer 2xx or 3xx. Blocking, each bounded by `timeout`; used by the
// sandbox driver (readiness, on the replica's node) and the VM controller (health, on the server).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace blixard {

// Connects to address:port ("" is 127.0.0.1).
bool tcp_accepts(const std::string& address, std::uint32_t port, std::chrono::milliseconds timeout);

// GET `path` over HTTP/1.0; true for a 2xx or 3xx status line.
bool http_ok(const std::string& address, std::uint32_t port, const std::string& path,
             std::chrono::milliseconds timeout);

}  // namespace blixard
