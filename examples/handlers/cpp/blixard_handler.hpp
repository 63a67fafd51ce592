// A header-only helper for native Blixard function handlers: speaks the instance protocol
// (docs/instance-protocol.md) with a hand-coded protobuf wire format, so a handler needs nothing
// but a C++17 compiler and POSIX. Usage:
//
//   #include "blixard_handler.hpp"
//   int main() {
//     return blixard_handler::serve([](const blixard_handler::Request& r) { return r.payload; });
//   }
//
// The callable gets the request (payload is the event as JSON text) and returns the result as JSON
// text; an exception becomes an error response (type "HandlerError" or the type of a
// blixard_handler::Failure). stdout and stderr are the handler's log.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

namespace blixard_handler {

struct Request {
  std::string request_id;
  std::string payload;  // the event, JSON text
  std::int64_t deadline_unix_ms = 0;
  std::string function;
  std::uint64_t memory_limit_mib = 0;

  std::int64_t remaining_ms() const {
    using namespace std::chrono;
    const auto now = duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
    return deadline_unix_ms > now ? deadline_unix_ms - now : 0;
  }
};

// Throw to answer with a chosen error type ("ValidationError: ...").
struct Failure : std::runtime_error {
  Failure(std::string type, const std::string& message)
      : std::runtime_error(message), type(std::move(type)) {}
  std::string type;
};

namespace detail {

inline constexpr int request_fd = 3;
inline constexpr int response_fd = 4;
inline constexpr std::uint32_t max_frame = 64u << 20;

inline void put_varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}

inline void put_bytes(std::string& out, int field, const std::string& data) {
  if (data.empty()) return;
  put_varint(out, static_cast<std::uint64_t>(field) << 3 | 2);
  put_varint(out, data.size());
  out += data;
}

inline bool get_varint(const std::string& in, std::size_t& pos, std::uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64 && pos < in.size(); shift += 7) {
    const auto byte = static_cast<unsigned char>(in[pos++]);
    v |= static_cast<std::uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

// Calls on_field(number, varint, bytes) for each field; false on malformed input.
template <class F>
bool for_each_field(const std::string& in, F&& on_field) {
  std::size_t pos = 0;
  while (pos < in.size()) {
    std::uint64_t key = 0, v = 0;
    if (!get_varint(in, pos, key)) return false;
    const int number = static_cast<int>(key >> 3);
    switch (key & 7) {
      case 0:
        if (!get_varint(in, pos, v)) return false;
        on_field(number, v, std::string());
        break;
      case 2:
        if (!get_varint(in, pos, v) || v > in.size() - pos) return false;
        on_field(number, 0, in.substr(pos, v));
        pos += v;
        break;
      case 1:
        pos += 8;
        break;
      case 5:
        pos += 4;
        break;
      default:
        return false;
    }
    if (pos > in.size()) return false;
  }
  return true;
}

// The request pipe, read in large chunks: one read takes every request queued so far, so a
// handler with several calls in flight (targetConcurrency > 1) wakes once for all of them.
class FrameReader {
 public:
  enum class Next { frame, need_more, too_big };

  // The next whole frame's body, if it is buffered.
  Next next(std::string& body) {
    const std::size_t have = end_ - start_;
    if (have < 4) return Next::need_more;
    std::uint32_t n = 0;
    for (std::size_t i = 0; i < 4; ++i) {
      n |= static_cast<std::uint32_t>(static_cast<unsigned char>(buffer_[start_ + i])) << (8 * i);
    }
    if (n > max_frame) return Next::too_big;
    if (have - 4 < n) return Next::need_more;
    body.assign(buffer_.get() + start_ + 4, n);
    start_ += 4 + n;
    return Next::frame;
  }

  // Reads what the pipe holds (waiting for at least a byte); false at its end.
  bool fill() {
    if (start_ > 0) {  // keep only the unread part, at the front
      std::memmove(buffer_.get(), buffer_.get() + start_, end_ - start_);
      end_ -= start_;
      start_ = 0;
    }
    if (end_ == capacity_) {  // a frame larger than the buffer
      auto larger = std::unique_ptr<char[]>(new char[capacity_ * 2]);
      std::memcpy(larger.get(), buffer_.get(), end_);
      buffer_ = std::move(larger);
      capacity_ *= 2;
    }
    ssize_t r = 0;
    do {
      r = ::read(request_fd, buffer_.get() + end_, capacity_ - end_);
    } while (r < 0 && errno == EINTR);
    if (r <= 0) return false;
    end_ += static_cast<std::size_t>(r);
    return true;
  }

  bool empty() const { return start_ == end_; }

 private:
  // Not zero-filled: a start touches only the pages its first requests are read into.
  std::size_t capacity_ = 64 * 1024;
  std::unique_ptr<char[]> buffer_{new char[capacity_]};
  std::size_t start_ = 0, end_ = 0;  // the unread bytes
};

inline void write_frame(const std::string& body) {
  std::string data;
  const auto n = static_cast<std::uint32_t>(body.size());
  for (int i = 0; i < 4; ++i) data += static_cast<char>((n >> (8 * i)) & 0xff);
  data += body;
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t w = ::write(response_fd, data.data() + done, data.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) throw std::runtime_error("response pipe closed");
    done += static_cast<std::size_t>(w);
  }
}

inline std::string wrap(int field, const std::string& inner) {
  std::string out;
  put_varint(out, static_cast<std::uint64_t>(field) << 3 | 2);
  put_varint(out, inner.size());
  return out + inner;
}

}  // namespace detail

// Writes `ready`, then answers requests until the agent closes fd 3. Returns the exit status.
// Each answer is written as soon as it is ready, so a slow call never holds back one before it.
template <class Handler>
int serve(Handler&& handler) {
  using namespace detail;
  std::string ready;
  put_varint(ready, 1 << 3);
  put_varint(ready, static_cast<std::uint64_t>(::getpid()));
  write_frame(wrap(1, ready));
  FrameReader reader;
  std::string body;
  for (;;) {
    const auto next = reader.next(body);
    if (next == FrameReader::Next::too_big) return 3;
    if (next == FrameReader::Next::need_more) {
      if (!reader.fill()) return reader.empty() ? 0 : 3;  // closed, or closed mid-frame
      continue;
    }
    bool is_request = false;
    Request req;
    const bool ok = for_each_field(body, [&](int number, std::uint64_t, const std::string& bytes) {
      if (number != 2) return;
      is_request = true;
      for_each_field(bytes, [&](int f, std::uint64_t v, const std::string& b) {
        if (f == 1) req.request_id = b;
        if (f == 2) req.payload = b;
        if (f == 3) req.deadline_unix_ms = static_cast<std::int64_t>(v);
        if (f == 4) req.function = b;
        if (f == 5) req.memory_limit_mib = v;
      });
    });
    if (!ok) return 3;
    if (!is_request) continue;
    std::string response;
    put_bytes(response, 1, req.request_id);
    try {
      put_bytes(response, 2, handler(static_cast<const Request&>(req)));
    } catch (const Failure& e) {
      put_bytes(response, 3, e.what());
      put_bytes(response, 4, e.type);
    } catch (const std::exception& e) {
      put_bytes(response, 3, e.what());
      put_bytes(response, 4, "HandlerError");
    }
    write_frame(wrap(3, response));
  }
}

}  // namespace blixard_handler
