// The agent channel's WebSocket framing (see frame_socket.hpp).
#include "common/frame_socket.hpp"

#include "common/agent_message.hpp"

#include <google/protobuf/io/coded_stream.h>
#include <boost/asio/buffer.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/websocket/error.hpp>

namespace blixard {

namespace beast = boost::beast;
namespace websocket = beast::websocket;

FrameSocket::FrameSocket(Stream ws, std::shared_ptr<void> keep)
    : ws_(std::move(ws)), keep_(std::move(keep)) {
  ws_.binary(true);
  ws_.read_message_max(k_max_frame);
  // Pings at half the idle time find a peer that is gone without a word (a cut link, a paused
  // process), so the agent reconnects and the server stops writing into a dead socket.
  websocket::stream_base::timeout t{};
  t.handshake_timeout = std::chrono::seconds(10);
  t.idle_timeout = std::chrono::seconds(6);
  t.keep_alive_pings = true;
  ws_.set_option(t);
}

FrameSocket::~FrameSocket() = default;

std::string FrameSocket::peer_address() {
  beast::error_code ec;
  auto endpoint = beast::get_lowest_layer(ws_).socket().remote_endpoint(ec);
  return ec ? std::string() : endpoint.address().to_string();
}

void FrameSocket::start(Handlers handlers) {
  handlers_ = std::move(handlers);
  beast::get_lowest_layer(ws_).expires_never();
  boost::asio::post(ws_.get_executor(), [self = shared_from_this()] { self->read(); });
}

void FrameSocket::read() {
  ws_.async_read(buffer_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
    if (ec) {
      self->finish(ec == websocket::error::closed ? "closed by the peer" : ec.message());
      return;
    }
    if (!self->ws_.got_binary()) {
      self->close("a text message on the agent channel");
      return;
    }
    const auto data = self->buffer_.cdata();
    const bool ok =
        decode_frames(std::string_view(static_cast<const char*>(data.data()), data.size()),
                      [&](v1::AgentFrame& frame) {
                        if (self->handlers_.frame) self->handlers_.frame(frame);
                      });
    self->buffer_.consume(self->buffer_.size());
    if (!ok) {
      self->close("a malformed frame on the agent channel");
      return;
    }
    self->read();
  });
}

bool FrameSocket::send(const v1::AgentFrame& frame) {
  std::string bytes = frame.SerializeAsString();
  {
    std::lock_guard lock(mutex_);
    if (closing_) return false;
    queue_.push_back(std::move(bytes));
    if (writing_) return true;
    writing_ = true;
  }
  boost::asio::post(ws_.get_executor(), [self = shared_from_this()] { self->write_next(); });
  return true;
}

void FrameSocket::write_next() {
  {
    std::lock_guard lock(mutex_);
    if (finished_) {
      writing_ = false;
      return;
    }
    // Every frame queued so far goes out in this one message: under load, the results that pile
    // up behind a write cost one message and one system call, not one each.
    std::size_t bytes = 0;
    while (!queue_.empty() && (batch_.empty() || bytes + queue_.front().size() <= k_max_frame)) {
      bytes += queue_.front().size();
      batch_.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    if (batch_.empty()) {
      writing_ = false;
      if (!closing_) return;
    }
  }
  if (batch_.empty()) return close_now();  // closing, and what was queued before has gone out
  prefixes_.resize(batch_.size() * k_max_prefix);
  buffers_.clear();
  for (std::size_t i = 0; i < batch_.size(); ++i) {
    std::uint8_t* prefix = prefixes_.data() + i * k_max_prefix;
    const std::uint8_t* end = google::protobuf::io::CodedOutputStream::WriteVarint32ToArray(
        static_cast<std::uint32_t>(batch_[i].size()), prefix);
    buffers_.emplace_back(prefix, static_cast<std::size_t>(end - prefix));
    buffers_.emplace_back(batch_[i].data(), batch_[i].size());
  }
  ws_.async_write(buffers_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
    self->batch_.clear();
    if (ec) {
      self->finish(ec.message());
      return;
    }
    self->write_next();
  });
}

void FrameSocket::close(const std::string& why) {
  {
    std::lock_guard lock(mutex_);
    if (closing_) return;
    closing_ = true;
    close_why_ = why;
    if (writing_) return;  // write_next() closes once the queue is out
    writing_ = true;
  }
  boost::asio::post(ws_.get_executor(), [self = shared_from_this()] { self->write_next(); });
}

void FrameSocket::close_now() {
  // The close frame says why; the peer's reply (or the timeout) ends it, and finish() runs then.
  beast::get_lowest_layer(ws_).expires_after(std::chrono::seconds(2));
  ws_.async_close(
      websocket::close_reason(websocket::close_code::policy_error, close_why_.substr(0, 120)),
      [self = shared_from_this()](beast::error_code) { self->finish(self->close_why_); });
}

void FrameSocket::finish(const std::string& why) {
  Handlers handlers;
  {
    std::lock_guard lock(mutex_);
    if (finished_) return;
    finished_ = true;
    closing_ = true;
    // Dropped here: the handlers hold their owner, which holds this socket.
    handlers = std::move(handlers_);
    handlers_ = {};
  }
  beast::error_code ignored;
  beast::get_lowest_layer(ws_).socket().close(ignored);
  if (handlers.closed) handlers.closed(why);
}

}  // namespace blixard
