// The HTTP/1.1 API server (DESIGN §4): maps /v1 requests onto a detail::Backend. Beast stays in
// the .cpp; Backend calls block (an invoke runs a handler), so they run on a worker pool, never on
// an io thread, and a slow invocation does not hold up other requests.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "blixard/detail/backend.hpp"

namespace spdlog {
class logger;
}

namespace blixard::api {

struct HttpServerOptions {
  std::string address = "127.0.0.1";
  unsigned short port = 0;  // 0: any free port; port() tells which
  // When set, every /v1 request needs "Authorization: Bearer <token>".
  std::string token;
  std::size_t body_limit = 8 << 20;  // larger request bodies get 413
  std::size_t workers = 16;          // threads running Backend calls
  unsigned io_threads = 1;
  // Idle keep-alive connections are closed after this long without a request.
  std::chrono::seconds idle_timeout{60};
  std::shared_ptr<spdlog::logger> logger;  // none: quiet
};

class HttpServer {
 public:
  struct Stats {
    std::uint64_t connections = 0;  // accepted since start
    std::uint64_t requests = 0;     // requests read (any outcome)
  };

  HttpServer(std::shared_ptr<detail::Backend> backend, HttpServerOptions options = {});
  ~HttpServer();  // stop()s
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and starts serving. Throws Error(unavailable) naming the address when it cannot bind.
  void start();
  // Closes the listener and every connection, waits for running Backend calls. Idempotent.
  void stop();

  unsigned short port() const;
  // "http://127.0.0.1:PORT" (IPv6 addresses in brackets).
  std::string url() const;
  Stats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace blixard::api
