// One end of the agent channel's WebSocket (DESIGN §4): binary messages, each holding one or more
// serialized AgentFrames, every one preceded by its length as a varint (protobuf's delimited
// form). Reads run a loop on the socket's executor and hand each frame on; writes from any
// thread queue up and go out in order, all the frames queued behind a write in the next message.
// A frame that does not parse (or a text message) closes this connection only. Both the server
// (api/agent_channel) and the agent (agent/join) use it.
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/buffer.hpp>

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/websocket/stream.hpp>

#include "blixard/v1/agent.pb.h"

namespace blixard {

class FrameSocket : public std::enable_shared_from_this<FrameSocket> {
 public:
  using Stream = boost::beast::websocket::stream<boost::beast::tcp_stream>;
  struct Handlers {
    // Each frame, on the socket's executor, in order.
    std::function<void(v1::AgentFrame&)> frame;
    // Once, when the connection ends (closed by either side, reset, malformed frame).
    std::function<void(const std::string& why)> closed;
  };

  // Largest message read or written (an invocation's payload and result travel in one frame).
  static constexpr std::size_t k_max_frame = 64u << 20;

  // `ws` has completed its handshake. Its executor must be a strand when its io_context runs on
  // several threads: every handler of this socket runs on it.
  // `keep` lives as long as the connection (the HTTP server's place for it under its cap).
  explicit FrameSocket(Stream ws, std::shared_ptr<void> keep = {});
  ~FrameSocket();

  // Starts reading (call once).
  void start(Handlers handlers);
  // Queues one frame; thread-safe. False once the connection is closing.
  bool send(const v1::AgentFrame& frame);
  // Closes the connection (a close frame, then the socket); thread-safe, idempotent.
  void close(const std::string& why);

  boost::asio::any_io_executor executor() { return ws_.get_executor(); }
  // The peer's IP address ("" once unknown).
  std::string peer_address();

 private:
  void read();
  void write_next();
  // Sends the close frame (the write queue is empty, no write is in flight).
  void close_now();
  void finish(const std::string& why);

  Stream ws_;
  std::shared_ptr<void> keep_;
  Handlers handlers_;
  boost::beast::flat_buffer buffer_;
  std::mutex mutex_;
  std::deque<std::string> queue_;
  // The message being written (touched by the write in flight only): its frames, their length
  // prefixes and the buffers over both.
  static constexpr std::size_t k_max_prefix = 5;
  std::vector<std::string> batch_;
  std::vector<std::uint8_t> prefixes_;
  std::vector<boost::asio::const_buffer> buffers_;
  bool writing_ = false;
  bool closing_ = false;
  bool finished_ = false;
  std::string close_why_;
};

}  // namespace blixard
