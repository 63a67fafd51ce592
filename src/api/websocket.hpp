// The WebSocket hook of the HTTP server (HttpServer::add_websocket): a connection upgraded on a
// route of its own, handed over once its token passed the route's scope and the handshake is
// answered. Include this where a hook is written; the server's header names the types only.
#pragma once

#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/websocket/stream.hpp>
#include <memory>
#include <utility>

#include "api/auth.hpp"
#include "api/http_message.hpp"
#include "api/websocket_fwd.hpp"

namespace blixard::api {

using WebSocketStream = boost::beast::websocket::stream<boost::beast::tcp_stream>;

// An accepted WebSocket connection. `ws` runs on the connection's strand of one of the server's
// io threads: the hook uses it asynchronously (never blocks that thread) and keeps the connection
// alive through its own pending operations (a shared_ptr in their completion handlers, as Beast's
// examples do), so the server's stop(), which destroys its io contexts and the handlers waiting in
// them, ends the connection too. The WebSocket timeouts are Beast's suggested ones for a server
// (idle pings, a 30 s handshake); frames are the hook's own (the agent channel sends binary
// protobuf frames). The connection keeps its place under max_connections until destroyed.
struct WebSocketConnection {
  WebSocketConnection(boost::beast::tcp_stream&& stream, Request upgrade, Principal who,
                      std::shared_ptr<void> place)
      : ws(std::move(stream)),
        request(std::move(upgrade)),
        principal(std::move(who)),
        place_(std::move(place)) {}

  WebSocketStream ws;
  Request request;      // the upgrade request (target, headers); it has no body
  Principal principal;  // who its bearer token says the peer is

 private:
  std::shared_ptr<void> place_;
};

}  // namespace blixard::api
