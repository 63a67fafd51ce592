// Dialing the server and staying joined (see join.hpp).
#include "agent/join.hpp"

#include <future>
#include <random>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>
#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/websocket.hpp>

#include "agent/fence_watchdog.hpp"
#include "agent/probe.hpp"
#include "agent/session.hpp"
#include "blixard/error.hpp"
#include "blixard/version.hpp"
#include "common/frame_socket.hpp"
#include "common/json.hpp"

namespace blixard::agent {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
using std::chrono::milliseconds;

// "HTTP 403: the token \"reader\" lacks the node scope" from the answer to a declined handshake
// (its body is the API's Status, when the server sent one).
std::string refusal(const websocket::response_type& answer) {
  std::string text = "HTTP " + std::to_string(answer.result_int());
  v1::Status status;
  try {
    from_json(answer.body(), status, true);
  } catch (const std::exception&) {
    status.Clear();
  }
  if (!status.message().empty()) text += ": " + status.message();
  if (answer.result() == beast::http::status::unauthorized ||
      answer.result() == beast::http::status::forbidden) {
    text += " (give --token a token with the node scope: blixard token create --role node)";
  }
  return text;
}

struct Joiner::Impl {
  std::shared_ptr<LocalNode> node;
  JoinOptions options;
  std::string host, port;
  net::io_context io;
  net::executor_work_guard<net::io_context::executor_type> guard{io.get_executor()};
  std::vector<std::thread> threads;
  std::mutex mutex;
  std::condition_variable wake;
  bool stopping = false;
  std::shared_ptr<FrameSocket> socket;
  // Times round trips to the peers the server names, and answers theirs.
  std::unique_ptr<LatencyProbe> probe;
  // Kills this node's primaries when the server is no longer heard from (options.watchdog_binary).
  std::shared_ptr<FenceWatchdog> watchdog;
  // The replicas that outlive a connection, until the next welcome (Session::Keeper).
  std::shared_ptr<Session::Keeper> keeper = std::make_shared<Session::Keeper>();

  // Probes the peers a Peers frame names; their round trips go up on `weak`.
  void measure_peers(const v1::Peers& peers, const std::weak_ptr<FrameSocket>& weak) {
    if (!probe) return;
    std::vector<LatencyProbe::Peer> targets;
    for (const auto& p : peers.peers()) {
      if (p.probe_port() > 0 && p.probe_port() <= 65535) {
        targets.push_back({p.node(), p.address(), static_cast<std::uint16_t>(p.probe_port())});
      }
    }
    probe->measure(std::move(targets), [weak](const std::vector<LatencyProbe::RoundTrip>& trips) {
      auto s = weak.lock();
      if (!s || trips.empty()) return;
      v1::AgentFrame f;
      for (const auto& t : trips) {
        auto& out = *f.mutable_peer_round_trips()->add_peers();
        out.set_node(t.node);
        out.set_rtt_us(t.rtt.count());
      }
      s->send(f);
    });
  }

  // One connection, from dial to its end. Returns why it ended; true in `joined` once welcomed.
  std::string serve_once(bool& joined) {
    auto ws = std::make_unique<FrameSocket::Stream>(net::make_strand(io));
    net::ip::tcp::resolver resolver(io);
    beast::get_lowest_layer(*ws).expires_after(std::chrono::seconds(5));
    auto endpoints = resolver.async_resolve(host, port, net::use_future).get();
    beast::get_lowest_layer(*ws).async_connect(endpoints, net::use_future).get();
    beast::get_lowest_layer(*ws).expires_never();
    ws->set_option(websocket::stream_base::decorator([token = options.token](auto& req) {
      req.set(beast::http::field::authorization, "Bearer " + token);
      req.set(beast::http::field::user_agent, "blixard-agent/" + std::string(version()));
    }));
    websocket::response_type answer;
    try {
      ws->async_handshake(answer, host + ":" + port, "/v1/agent", net::use_future).get();
    } catch (const boost::system::system_error&) {
      if (answer.result() == beast::http::status::switching_protocols) throw;
      throw std::runtime_error("the server refused the join: " + refusal(answer));
    }

    auto s = std::make_shared<FrameSocket>(std::move(*ws));
    auto ended = std::make_shared<std::promise<std::string>>();
    auto end = ended->get_future();
    auto session = std::make_shared<Session>(
        node, io.get_executor(),
        [weak = std::weak_ptr(s)](const v1::AgentFrame& f) {
          auto sock = weak.lock();
          return sock && sock->send(f);
        },
        watchdog, keeper);
    auto heartbeat = std::make_shared<std::atomic<std::int64_t>>(0);
    auto refused = std::make_shared<std::string>();
    s->start({[session, heartbeat, refused, weak = std::weak_ptr(s), this](v1::AgentFrame& f) {
                // Any frame (the server pings every heartbeat) says the server still has us.
                if (watchdog) watchdog->beat();
                if (f.has_peers()) return measure_peers(f.peers(), weak);
                if (f.has_welcome()) {
                  heartbeat->store(std::max<std::int64_t>(50, f.welcome().heartbeat_ms()));
                  if (watchdog && f.welcome().lease_ms() > 0) {
                    watchdog->set_after(milliseconds(f.welcome().lease_ms() / 2));
                  }
                  options.logger->info("joined as {} (epoch {}, {} replica(s) kept)", node->name(),
                                       f.welcome().epoch(), f.welcome().adopted_size());
                } else if (f.has_error()) {
                  *refused = f.error().message();
                }
                session->receive(f);
              },
              [ended](const std::string& why) { ended->set_value(why); }});
    {
      std::lock_guard lock(mutex);
      socket = s;
      if (stopping) s->close("the agent is stopping");
    }
    auto hello = session->hello(std::string(version()));
    if (probe) hello.mutable_hello()->mutable_spec()->set_probe_port(probe->port());
    s->send(hello);
    std::uint64_t sequence = 0;
    for (;;) {
      const auto every = heartbeat->load();
      if (every > 0) joined = true;
      if (end.wait_for(milliseconds(every > 0 ? every : 100)) == std::future_status::ready) break;
      if (every > 0) {
        v1::AgentFrame beat;
        beat.mutable_heartbeat()->set_sequence(++sequence);
        s->send(beat);
      }
    }
    session->close();  // the server gave this connection's instances up
    {
      std::lock_guard lock(mutex);
      socket.reset();
    }
    std::string why = end.get();
    if (!refused->empty()) why = "refused: " + *refused;
    return why;
  }
};

Joiner::Joiner(std::shared_ptr<LocalNode> node, JoinOptions options)
    : impl_(std::make_unique<Impl>()) {
  impl_->node = std::move(node);
  impl_->options = std::move(options);
  if (!impl_->options.logger) impl_->options.logger = std::make_shared<spdlog::logger>("agent");
  std::string address = impl_->options.server;
  if (address.rfind("http://", 0) == 0) address = address.substr(7);
  while (!address.empty() && address.back() == '/') address.pop_back();
  const auto colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    throw Error(errc::invalid_spec,
                "server address \"" + impl_->options.server + "\" is not HOST:PORT", "join");
  }
  impl_->host = address.substr(0, colon);
  impl_->port = address.substr(colon + 1);
  if (!impl_->options.watchdog_binary.empty()) {
    // Until the welcome says the lease: the server's default (4 s) / 2.
    impl_->watchdog =
        FenceWatchdog::start(impl_->options.watchdog_binary, std::chrono::milliseconds(2000));
  }
  // The guests an earlier agent on this node left running: kept until the first welcome says
  // which the server still holds.
  auto taken_back = impl_->node->adopt_leftovers(impl_->keeper->on_log(), impl_->keeper->on_exit());
  impl_->keeper->keep(taken_back);
  if (!taken_back.empty()) {
    impl_->options.logger->info("took back {} replica(s) an earlier agent left running",
                                taken_back.size());
  }
  if (impl_->options.probe) {
    impl_->probe =
        std::make_unique<LatencyProbe>(impl_->io.get_executor(), impl_->options.probe_port);
  }
  for (int i = 0; i < 2; ++i) impl_->threads.emplace_back([this] { impl_->io.run(); });
}

Joiner::~Joiner() {
  stop();
  if (impl_->probe) impl_->probe->close();
  impl_->guard.reset();
  impl_->io.stop();
  for (auto& t : impl_->threads) t.join();
}

void Joiner::run() {
  auto& in = *impl_;
  std::mt19937 jitter(std::random_device{}());
  milliseconds backoff(100);
  for (;;) {
    {
      std::lock_guard lock(in.mutex);
      if (in.stopping) return;
    }
    bool joined = false;
    std::string why;
    try {
      why = in.serve_once(joined);
    } catch (const std::exception& e) {
      why = e.what();
    }
    if (joined) backoff = milliseconds(100);
    std::unique_lock lock(in.mutex);
    if (in.stopping) return;
    // Full jitter: many agents that lost one server do not dial it back in step.
    const auto wait = milliseconds(
        std::uniform_int_distribution<long>(backoff.count() / 2, backoff.count())(jitter));
    in.options.logger->warn("connection to {}:{} ended ({}); dialing again in {} ms", in.host,
                            in.port, why, wait.count());
    in.wake.wait_for(lock, wait, [&] { return in.stopping; });
    backoff = std::min(in.options.max_backoff, backoff * 2);
  }
}

void Joiner::stop() {
  std::lock_guard lock(impl_->mutex);
  impl_->stopping = true;
  if (impl_->socket) impl_->socket->close("the agent is stopping");
  impl_->wake.notify_all();
}

}  // namespace blixard::agent
