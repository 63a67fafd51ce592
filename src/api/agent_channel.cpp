// The server's end of the agent channel (see agent_channel.hpp).
#include "api/agent_channel.hpp"

#include <spdlog/spdlog.h>
#include <boost/asio/steady_timer.hpp>

#include "api/websocket.hpp"
#include "common/frame_socket.hpp"
#include "control/remote_node.hpp"

namespace blixard::api {
namespace {

// How many peers an agent times at once, and every how many pings it is told which.
constexpr std::size_t k_probe_peers = 16;
constexpr int k_peers_every = 10;

// A name a node may have: what a hostname may be, so it reads well in `node list` and logs.
bool valid_node_name(const std::string& name) {
  if (name.empty() || name.size() > 63) return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) {
      return false;
    }
  }
  return true;
}

class AgentConnection : public std::enable_shared_from_this<AgentConnection> {
 public:
  AgentConnection(std::shared_ptr<FrameSocket> socket, std::shared_ptr<control::NodeRegistry> nodes,
                  std::shared_ptr<spdlog::logger> logger)
      : socket_(std::move(socket)),
        nodes_(std::move(nodes)),
        logger_(std::move(logger)),
        hello_timer_(socket_->executor()),
        ping_timer_(socket_->executor()) {}

  void start() {
    auto self = shared_from_this();
    socket_->start({[self](v1::AgentFrame& f) { self->on_frame(f); },
                    [self](const std::string& why) { self->on_closed(why); }});
    // An agent says hello at once; a connection that does not is not an agent.
    hello_timer_.expires_after(std::chrono::seconds(10));
    hello_timer_.async_wait([self](boost::system::error_code ec) {
      if (!ec && !self->node_) self->refuse(errc::invalid_spec, "no hello within 10 s");
    });
  }

 private:
  void refuse(errc code, const std::string& why) {
    logger_->warn("agent connection refused: {}", why);
    v1::AgentFrame f;
    *f.mutable_error() = Error(code, why).status();
    socket_->send(f);
    socket_->close(why);
  }

  void on_frame(v1::AgentFrame& frame) {
    if (!node_) return on_hello(frame);
    nodes_->heard(node_->name());
    if (frame.has_hello()) return refuse(errc::invalid_spec, "a second hello");
    if (frame.has_pong()) return on_pong(frame.pong());
    if (frame.has_peer_round_trips()) {
      for (const auto& p : frame.peer_round_trips().peers()) {
        if (p.rtt_us() > 0) {
          nodes_->peer_measured(node_->name(), p.node(), std::chrono::microseconds(p.rtt_us()));
        }
      }
      return;
    }
    node_->receive(frame);
  }

  // Names a few other nodes for the agent to time its round trips to.
  void send_peers() {
    v1::AgentFrame f;
    for (auto& t : nodes_->probe_targets(node_->name(), k_probe_peers)) {
      auto& p = *f.mutable_peers()->add_peers();
      p.set_node(std::move(t.node));
      p.set_address(std::move(t.address));
      p.set_probe_port(t.probe_port);
    }
    if (f.peers().peers_size() > 0) socket_->send(f);
  }

  static std::int64_t now_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  // Times the round trip to the agent every heartbeat interval; the first few 100 ms apart from
  // the join, so a node's latency (the least of recent samples) settles before much is placed.
  void ping() {
    v1::AgentFrame f;
    f.mutable_ping()->set_sent_us(now_us());
    if (!socket_->send(f)) return;
    // Peers to time: soon after the join, then every k_peers_every pings.
    if (pings_ % k_peers_every == 3) send_peers();
    ping_timer_.expires_after(++pings_ <= 3 ? std::chrono::milliseconds(100)
                                            : nodes_->options().heartbeat);
    ping_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (!ec) self->ping();
    });
  }

  void on_pong(const v1::Pong& pong) {
    const std::int64_t sent = pong.sent_us();
    const std::int64_t now = now_us();
    // Only a value this server sent, and not from the future: an agent cannot make itself near.
    if (sent <= 0 || sent > now || now - sent > 60'000'000) return;
    nodes_->measured(node_->name(), std::chrono::microseconds(now - sent));
  }

  void on_hello(v1::AgentFrame& frame) {
    if (!frame.has_hello()) return refuse(errc::invalid_spec, "the first frame must be a hello");
    hello_timer_.cancel();
    const auto& hello = frame.hello();
    if (!valid_node_name(hello.name())) {
      return refuse(errc::invalid_spec, "node name \"" + hello.name().substr(0, 64) +
                                            "\" is not 1-63 letters, digits, '-', '_' or '.'");
    }
    std::weak_ptr<FrameSocket> weak = socket_;
    control::RemoteNode::Link link;
    link.send = [weak](const v1::AgentFrame& f) {
      auto s = weak.lock();
      return s && s->send(f);
    };
    link.close = [weak] {
      if (auto s = weak.lock()) s->close("the server gave the node up");
    };
    v1::NodeSpec spec = hello.spec();
    if (spec.address().empty()) spec.set_address(socket_->peer_address());
    auto node = std::make_shared<control::RemoteNode>(hello.name(), spec, link);
    std::int64_t epoch = 0;
    std::vector<std::string> adopted;
    try {
      epoch = nodes_->join(node, /*in_process=*/false,
                           {hello.running().begin(), hello.running().end()}, &adopted);
    } catch (const Error& e) {
      return refuse(e.code(), e.message());
    }
    node_ = node;
    v1::AgentFrame welcome;
    auto& w = *welcome.mutable_welcome();
    w.set_epoch(epoch);
    w.set_heartbeat_ms(nodes_->options().heartbeat.count());
    w.set_lease_ms(nodes_->options().lease.count());
    for (const auto& name : adopted) w.add_adopted(name);
    socket_->send(welcome);
    ping();
    logger_->info(
        "node {} joined (epoch {}; of {} instance(s) from before, {} adopted, the rest "
        "to fence)",
        hello.name(), epoch, hello.running_size(), adopted.size());
  }

  void on_closed(const std::string& why) {
    hello_timer_.cancel();
    ping_timer_.cancel();
    if (!node_) return;
    logger_->warn("node {} disconnected: {}", node_->name(), why);
    nodes_->disconnected(node_, "disconnected: " + why);
  }

  std::shared_ptr<FrameSocket> socket_;
  std::shared_ptr<control::NodeRegistry> nodes_;
  std::shared_ptr<spdlog::logger> logger_;
  boost::asio::steady_timer hello_timer_;
  boost::asio::steady_timer ping_timer_;
  int pings_ = 0;
  std::shared_ptr<control::RemoteNode> node_;
};

}  // namespace

void serve_agent(std::unique_ptr<WebSocketConnection> connection,
                 std::shared_ptr<control::NodeRegistry> nodes,
                 std::shared_ptr<spdlog::logger> logger) {
  // The connection keeps its place under the server's connection cap while the socket lives.
  std::shared_ptr<WebSocketConnection> held(std::move(connection));
  auto socket = std::make_shared<FrameSocket>(std::move(held->ws), held);
  std::make_shared<AgentConnection>(std::move(socket), std::move(nodes), std::move(logger))
      ->start();
}

}  // namespace blixard::api
