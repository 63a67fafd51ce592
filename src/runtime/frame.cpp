// Instance protocol framing (see frame.hpp).
#include "runtime/frame.hpp"

namespace blixard::runtime {

std::string encode_frame(const v1::InstanceFrame& frame) {
  const std::size_t size = frame.ByteSizeLong();
  std::string out(k_frame_header_bytes + size, '\0');
  for (std::size_t i = 0; i < k_frame_header_bytes; ++i) {
    out[i] = static_cast<char>((size >> (8 * i)) & 0xff);
  }
  frame.SerializeWithCachedSizesToArray(reinterpret_cast<std::uint8_t*>(out.data()) +
                                        k_frame_header_bytes);
  return out;
}

void FrameDecoder::feed(std::string_view bytes) {
  if (failed_ != Status::need_more) return;
  // Drop what was consumed before growing, so a long-lived instance's buffer stays small.
  if (offset_ > 0 && offset_ == buffer_.size()) {
    buffer_.clear();
    offset_ = 0;
  } else if (offset_ > (1u << 16) && offset_ * 2 > buffer_.size()) {
    buffer_.erase(0, offset_);
    offset_ = 0;
  }
  buffer_.append(bytes);
}

FrameDecoder::Status FrameDecoder::next(v1::InstanceFrame& out) {
  if (failed_ != Status::need_more) return failed_;
  if (buffered() < k_frame_header_bytes) return Status::need_more;
  const auto* p = reinterpret_cast<const unsigned char*>(buffer_.data() + offset_);
  const std::uint32_t length =
      static_cast<std::uint32_t>(p[0]) | static_cast<std::uint32_t>(p[1]) << 8 |
      static_cast<std::uint32_t>(p[2]) << 16 | static_cast<std::uint32_t>(p[3]) << 24;
  if (length > max_frame_) {
    rejected_length_ = length;
    return failed_ = Status::too_large;
  }
  if (buffered() < k_frame_header_bytes + length) return Status::need_more;
  out.Clear();
  if (!out.ParseFromArray(p + k_frame_header_bytes, static_cast<int>(length))) {
    return failed_ = Status::malformed;
  }
  offset_ += k_frame_header_bytes + length;
  return Status::frame;
}

}  // namespace blixard::runtime
