// The instance protocol's framing, sans-io: a 4-byte little-endian length followed by one
// serialized blixard.v1.InstanceFrame. The sandbox driver (and tests) feed it bytes from a pipe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "blixard/v1/instance.pb.h"

namespace blixard::runtime {

inline constexpr std::size_t k_frame_header_bytes = 4;

// Length prefix + serialized frame, ready to write to the pipe.
std::string encode_frame(const v1::InstanceFrame& frame);

class FrameDecoder {
 public:
  enum class Status {
    frame,      // `out` holds the next frame
    need_more,  // feed more bytes
    too_large,  // the length prefix is over the limit (see rejected_length())
    malformed,  // the body is not an InstanceFrame
  };

  explicit FrameDecoder(std::size_t max_frame_bytes) : max_frame_(max_frame_bytes) {}

  void feed(std::string_view bytes);
  // Pulls the next complete frame. After too_large/malformed the stream cannot be resynchronised:
  // every later call returns the same status.
  Status next(v1::InstanceFrame& out);

  std::size_t buffered() const noexcept { return buffer_.size() - offset_; }
  std::uint32_t rejected_length() const noexcept { return rejected_length_; }
  std::size_t max_frame_bytes() const noexcept { return max_frame_; }

 private:
  std::size_t max_frame_;
  std::string buffer_;
  std::size_t offset_ = 0;  // consumed prefix of buffer_, compacted lazily
  Status failed_ = Status::need_more;
  std::uint32_t rejected_length_ = 0;
};

}  // namespace blixard::runtime
