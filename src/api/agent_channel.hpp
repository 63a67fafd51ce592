// The server's end of the agent channel (DESIGN §4): an agent dials the server's /v1/agent, the
// HTTP server upgrades the connection (after checking the token's `node` scope) and hands the
// WebSocket here. The first frame must be a hello (the node's name, labels, capacity, what it
// still runs); the node then joins the registry as a control::RemoteNode under a new epoch, is
// welcomed with it, and every later frame renews its liveness. When the connection ends the node
// is given up (NotReady, then Lost once its lease lapses); a malformed frame ends only this
// connection.
#pragma once

#include <memory>

#include "api/websocket_fwd.hpp"
#include "control/node_registry.hpp"

namespace spdlog {
class logger;
}

namespace blixard::api {

// The HTTP server's hook for /v1/agent (HttpServer::add_websocket with Scope::node).
void serve_agent(std::unique_ptr<WebSocketConnection> connection,
                 std::shared_ptr<control::NodeRegistry> nodes,
                 std::shared_ptr<spdlog::logger> logger);

}  // namespace blixard::api
