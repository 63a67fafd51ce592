// The HTTP/1.1 API server (DESIGN §4): maps /v1 requests onto a detail::Backend through its route
// table (api/route_table.hpp, api/routes.hpp), serves /metrics, is the gateway of HTTP triggers
// (any other path, api/trigger_gateway.hpp), and hands WebSocket upgrades on the paths given to
// add_websocket() to their hooks (api/websocket.hpp). Beast stays in the .cpp files. A Backend call
// blocks (an invoke runs a handler); it runs on the io thread that read its request, which saves
// two thread handoffs per call, and when it runs long (past about a millisecond) a spare thread
// takes that io thread's other connections over, so a slow invocation does not hold up other
// requests. Long polls and streams (logs --follow, watch) wait on a pool of their own, capped, so
// they cannot starve calls.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "api/auth.hpp"
#include "api/websocket_fwd.hpp"
#include "blixard/detail/backend.hpp"
#include "common/defaults.hpp"

namespace spdlog {
class logger;
}

namespace blixard::api {

struct HttpServerOptions {
  std::string address = "127.0.0.1";
  unsigned short port = 0;  // 0: any free port; port() tells which
  // When set, every /v1 request and /metrics need "Authorization: Bearer <token>". The trigger
  // gateway is public (as Lambda function URLs are): its functions authenticate callers themselves.
  std::string token;
  // Larger request bodies get 413, from Content-Length before any is read. Heads are checked
  // before bodies: a request target over 8 KiB gets 414, a head over 16 KiB 431, and an API
  // request without the token 401, its body never read.
  std::size_t body_limit = 8 << 20;
  // Request bodies sent to an HTTP trigger (gateway paths) larger than this get 413: a function's
  // default payload limit (its own maxPayloadBytes is checked when it is called).
  std::size_t gateway_body_limit = k_default_max_payload_bytes;
  // A code archive uploaded by an admin (PUT /v1/blobs/{digest}) may be this large.
  std::size_t blob_body_limit = k_max_code_archive_bytes;
  // Request bodies not authenticated by the token (the gateway's, and every one on a server
  // without a token) buffered at once, server-wide, counted by Content-Length (a chunked body as
  // its limit); a request that would pass it is answered 503 before its body is read.
  std::size_t unauthenticated_buffer_limit = 256 << 20;
  // Connections open at once; one more is answered 503 and closed at once, nothing read from it.
  std::size_t max_connections = 1024;
  std::size_t workers = 16;  // Backend calls running at once (more wait their turn)
  // Streams (?follow=1, ?watch=1) and waiting long polls (wait > 0) open at once, each holding a
  // thread of their own pool; one more gets 503 unavailable.
  std::size_t max_streams = 16;
  // A stream long-polls the Backend with this wait in a loop, so it notices a client gone or the
  // server stopping within about this long.
  std::chrono::milliseconds stream_poll_wait{1000};
  // Longest `wait` a long poll may ask for; larger ones are cut to it.
  std::chrono::milliseconds max_wait{std::chrono::seconds(60)};
  // The gateway's routing table (the http triggers) is re-read when older than this, so a new
  // trigger routes within it; a path that matches nothing re-reads it at most every 1/4 of it.
  std::chrono::milliseconds route_refresh{1000};
  // Threads reading and answering requests, each with a reactor of its own (connections are
  // spread over them) and running the calls of its connections, so this many warm calls of
  // different connections run at once without any handoff. `workers` spare threads take over
  // from one held by a long call.
  unsigned io_threads = 2;
  // Idle keep-alive connections are closed after this long without a request.
  std::chrono::seconds idle_timeout{60};
  std::shared_ptr<spdlog::logger> logger;  // none: quiet
};

class HttpServer {
 public:
  struct Stats {
    std::uint64_t connections = 0;  // accepted since start
    std::uint64_t requests = 0;     // requests read (any outcome)
    std::uint64_t streams = 0;      // streams and waiting long polls open now
  };

  HttpServer(std::shared_ptr<detail::Backend> backend, HttpServerOptions options = {});
  ~HttpServer();  // stop()s
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Before start(): WebSocket connections to `path` (a route pattern under /v1, e.g. "/v1/agent";
  // {name} captures allowed) are upgraded once the request passed the route table's checks (401
  // without a good token, 403 without `scope`; a plain GET gets 426): the server answers the
  // handshake, then calls `handler` on the connection's strand with the accepted stream, the
  // upgrade request and the token's principal (api/websocket.hpp says what the hook owes).
  // Throws Error(invalid_spec) for a path off /v1, Error(internal) after start() or for a path
  // already routed.
  void add_websocket(const std::string& path, Scope scope, WebSocketHandler handler);

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
