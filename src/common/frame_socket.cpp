// The agent channel's WebSocket framing (see frame_socket.hpp).
#include "common/frame_socket.hpp"

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
    v1::AgentFrame frame;
    const auto data = self->buffer_.cdata();
    const bool ok = frame.ParseFromArray(data.data(), static_cast<int>(data.size()));
    self->buffer_.consume(self->buffer_.size());
    if (!ok || frame.kind_case() == v1::AgentFrame::KIND_NOT_SET) {
      self->close("a malformed frame on the agent channel");
      return;
    }
    if (self->handlers_.frame) self->handlers_.frame(frame);
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
  std::string* next = nullptr;
  {
    std::lock_guard lock(mutex_);
    if (finished_) {
      writing_ = false;
      return;
    }
    if (queue_.empty()) {
      writing_ = false;
      if (!closing_) return;
    } else {
      next = &queue_.front();
    }
  }
  if (next == nullptr) return close_now();  // closing, and what was queued before has gone out
  ws_.async_write(boost::asio::buffer(*next),
                  [self = shared_from_this()](beast::error_code ec, std::size_t) {
                    {
                      std::lock_guard lock(self->mutex_);
                      self->queue_.pop_front();
                    }
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
