// The /v1 routes, one file per resource, each adding its entries to a RouteTable. Handlers map a
// request onto the Backend and say how it is to be run (Routed); the transport runs it.
#pragma once

#include <atomic>
#include <memory>

#include "api/route_table.hpp"
#include "blixard/detail/backend.hpp"

namespace blixard::api {

// What routes need of the server; it outlives them.
struct RouteContext {
  std::shared_ptr<detail::Backend> backend;
  milliseconds max_wait{0};          // HttpServerOptions::max_wait
  milliseconds stream_poll_wait{0};  // HttpServerOptions::stream_poll_wait
  const std::atomic<bool>* stopping = nullptr;
};

// GET /healthz (public), GET /metrics, GET /v1/info, GET /v1/nodes, POST /v1/apply.
void add_server_routes(RouteTable& table, const RouteContext& context);
// /v1/functions, /v1/vms, /v1/triggers: GET (list), POST (create); /{name}: GET, DELETE.
void add_object_routes(RouteTable& table, const RouteContext& context);
// POST /v1/functions/{name}/invoke, GET .../metrics, GET .../logs (long poll, ?follow=1 stream).
void add_function_routes(RouteTable& table, const RouteContext& context);
// GET /v1/events (long poll, ?watch=1 stream).
void add_event_routes(RouteTable& table, const RouteContext& context);

// /v1/tokens: GET (list), POST (create, 201 with the secret); /{name}: DELETE (revoke). Admin.
void add_token_routes(RouteTable& table, const RouteContext& context);

// /v1/blobs/{digest}: PUT (admin; 201), GET (node: the bytes), HEAD (read: 200 or 404).
void add_blob_routes(RouteTable& table, const RouteContext& context);

// /v1/queues (GET), /{name} (GET), /{name}/messages (POST: send; GET: peek), /{name}/receive,
// /{name}/ack, /{name}/purge; POST /v1/events (publish); POST /v1/functions/{name}/invocations
// (async invoke, 202) and GET /v1/invocations/{id}.
void add_queue_routes(RouteTable& table, const RouteContext& context);
// GET /ui/ (the dashboard page), /ui/app.js, /ui/style.css: public (the page holds no data).
void add_ui_routes(RouteTable& table, const RouteContext& context);

// All of the above.
void add_api_routes(RouteTable& table, const RouteContext& context);

}  // namespace blixard::api
