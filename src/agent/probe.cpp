// UDP latency probes between agents (see probe.hpp).
#include "agent/probe.hpp"

#include <array>
#include <cstring>
#include <map>
#include <random>

#include <boost/asio/ip/udp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include "blixard/error.hpp"

namespace blixard::agent {

namespace net = boost::asio;
using udp = net::ip::udp;
using Clock = std::chrono::steady_clock;

namespace {
// A probe: "BLXP", 'Q' (question) or 'A' (answer), three zero bytes, then the sender's 64-bit
// sequence number.
constexpr std::size_t k_probe_size = 16;
constexpr char k_magic[4] = {'B', 'L', 'X', 'P'};  // NOLINT(modernize-avoid-c-arrays)
constexpr int k_probes_per_peer = 3;
constexpr auto k_probe_gap = std::chrono::milliseconds(10);
}  // namespace

struct LatencyProbe::Impl : std::enable_shared_from_this<Impl> {
  explicit Impl(const net::any_io_executor& executor)
      : strand(net::make_strand(executor)),
        socket(strand),
        round_timer(strand),
        send_timer(strand) {}

  net::strand<net::any_io_executor> strand;
  udp::socket socket;
  net::steady_timer round_timer, send_timer;
  std::array<char, 64> buffer{};
  udp::endpoint from;
  std::uint64_t next_sequence = std::random_device{}();
  // The round in progress: what was sent (by sequence) and the least round trip per node.
  struct Sent {
    std::string node;
    Clock::time_point at;
  };
  std::map<std::uint64_t, Sent> sent;
  std::map<std::string, std::chrono::microseconds> best;
  Report report;
  std::uint64_t round = 0;
  // Answers given in the current second.
  Clock::time_point window = Clock::now();
  int answered = 0;
  bool closed = false;

  void receive() {
    socket.async_receive_from(
        net::buffer(buffer), from,
        [self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
          if (ec == net::error::operation_aborted || self->closed) return;
          if (!ec && n == k_probe_size && std::memcmp(self->buffer.data(), k_magic, 4) == 0) {
            self->on_probe();
          }
          self->receive();
        });
  }

  void on_probe() {
    if (buffer[4] == 'Q') {
      const auto now = Clock::now();
      if (now - window >= std::chrono::seconds(1)) {
        window = now;
        answered = 0;
      }
      if (++answered > k_answers_per_second) return;
      buffer[4] = 'A';
      boost::system::error_code ignored;
      socket.send_to(net::buffer(buffer.data(), k_probe_size), from, 0, ignored);
    } else if (buffer[4] == 'A') {
      std::uint64_t sequence = 0;
      std::memcpy(&sequence, buffer.data() + 8, sizeof sequence);
      auto it = sent.find(sequence);
      if (it == sent.end()) return;  // not ours, or from an earlier round
      const auto rtt =
          std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - it->second.at);
      auto [slot, fresh] = best.try_emplace(it->second.node, rtt);
      if (!fresh && rtt < slot->second) slot->second = rtt;
      sent.erase(it);
    }
  }

  void send_probes(const std::shared_ptr<std::vector<Peer>>& peers, int left,
                   std::uint64_t this_round) {
    if (closed || this_round != round) return;
    for (const auto& peer : *peers) {
      boost::system::error_code ec;
      const auto address = net::ip::make_address(peer.address, ec);
      if (ec || peer.port == 0) continue;
      std::array<char, k_probe_size> probe{};
      std::memcpy(probe.data(), k_magic, 4);
      probe[4] = 'Q';
      const std::uint64_t sequence = ++next_sequence;
      std::memcpy(probe.data() + 8, &sequence, sizeof sequence);
      sent[sequence] = {peer.node, Clock::now()};
      socket.send_to(net::buffer(probe), udp::endpoint(address, peer.port), 0, ec);
    }
    if (left <= 1) return;
    send_timer.expires_after(k_probe_gap);
    send_timer.async_wait(
        [self = shared_from_this(), peers, left, this_round](boost::system::error_code ec) {
          if (!ec) self->send_probes(peers, left - 1, this_round);
        });
  }
};

LatencyProbe::LatencyProbe(const boost::asio::any_io_executor& executor, std::uint16_t port)
    : impl_(std::make_shared<Impl>(executor)) {
  boost::system::error_code ec;
  impl_->socket.open(udp::v4(), ec);
  if (!ec) impl_->socket.bind(udp::endpoint(udp::v4(), port), ec);
  if (ec) {
    throw Error(
        errc::unavailable,
        "cannot open the latency probe on UDP port " + std::to_string(port) + ": " + ec.message(),
        "probe-port");
  }
  net::post(impl_->strand, [impl = impl_] { impl->receive(); });
}

LatencyProbe::~LatencyProbe() { close(); }

std::uint16_t LatencyProbe::port() const {
  boost::system::error_code ec;
  const auto endpoint = impl_->socket.local_endpoint(ec);
  return ec ? 0 : endpoint.port();
}

void LatencyProbe::measure(std::vector<Peer> peers, Report report, std::chrono::milliseconds wait) {
  net::post(impl_->strand,
            [impl = impl_, peers = std::make_shared<std::vector<Peer>>(std::move(peers)),
             report = std::move(report), wait]() mutable {
              if (impl->closed) return;
              const std::uint64_t round = ++impl->round;
              impl->sent.clear();
              impl->best.clear();
              impl->report = std::move(report);
              impl->send_probes(peers, k_probes_per_peer, round);
              impl->round_timer.expires_after(wait);
              impl->round_timer.async_wait([impl, round](boost::system::error_code ec) {
                if (ec || impl->closed || round != impl->round) return;
                std::vector<RoundTrip> out;
                for (const auto& [node, rtt] : impl->best) out.push_back({node, rtt});
                impl->sent.clear();
                impl->best.clear();
                if (auto report = std::move(impl->report)) report(std::move(out));
              });
            });
}

void LatencyProbe::close() {
  net::post(impl_->strand, [impl = impl_] {
    if (impl->closed) return;
    impl->closed = true;
    boost::system::error_code ignored;
    impl->round_timer.cancel();
    impl->send_timer.cancel();
    impl->socket.close(ignored);
  });
}

}  // namespace blixard::agent
