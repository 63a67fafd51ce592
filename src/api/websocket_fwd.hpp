// The WebSocket hook's types by name only (the full definition, with Beast, is api/websocket.hpp).
#pragma once

#include <functional>
#include <memory>

namespace blixard::api {

struct WebSocketConnection;
// Called on the connection's strand with the accepted connection; it must not block.
using WebSocketHandler = std::function<void(std::unique_ptr<WebSocketConnection>)>;

}  // namespace blixard::api
