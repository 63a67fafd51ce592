// Round trips between agents (DESIGN §7, latency to the caller): every agent answers 16-byte UDP
// probes on a port of its own (advertised in its hello) and times its round trips to the peers
// the server names, so the scheduler knows how far each node is from a caller's node. An answer
// is the probe itself, marked as an answer: never larger than what came, and at most
// k_answers_per_second of them, so the port cannot be used to amplify anything.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/any_io_executor.hpp>

namespace blixard::agent {

class LatencyProbe {
 public:
  struct Peer {
    std::string node;
    std::string address;  // an IP address
    std::uint16_t port = 0;
  };
  struct RoundTrip {
    std::string node;
    std::chrono::microseconds rtt{0};
  };
  using Report = std::function<void(std::vector<RoundTrip>)>;

  static constexpr int k_answers_per_second = 1000;

  // Answers probes on UDP `port` (0: one the system picks) of every address. Throws
  // Error(unavailable) when it cannot bind.
  explicit LatencyProbe(const boost::asio::any_io_executor& executor, std::uint16_t port = 0);
  ~LatencyProbe();
  LatencyProbe(const LatencyProbe&) = delete;
  LatencyProbe& operator=(const LatencyProbe&) = delete;

  std::uint16_t port() const;
  // Sends three probes to each peer, 10 ms apart; after `wait`, reports the least round trip of
  // each peer that answered (on the executor). A round started before the last one reported
  // replaces it.
  void measure(std::vector<Peer> peers, Report report,
               std::chrono::milliseconds wait = std::chrono::seconds(1));
  void close();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace blixard::agent
