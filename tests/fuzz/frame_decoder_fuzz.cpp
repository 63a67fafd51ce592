// libFuzzer target: the instance protocol's frame decoder (runtime/frame), fed what a hostile
// handler writes to its response pipe, in chunks the input chooses. It must never crash, never
// buffer more than a frame's limit plus a read, and after too_large/malformed stay there.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include <google/protobuf/stubs/logging.h>

#include "runtime/frame.hpp"

// Protobuf logs every string field that is not UTF-8: quiet, or the fuzzer's output is that.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  // The first byte picks the chunk size (as pipe reads split the stream), the rest is the stream.
  const std::size_t chunk = 1 + data[0] % 64;
  constexpr std::size_t k_limit = 4096;
  blixard::runtime::FrameDecoder decoder(k_limit);
  blixard::v1::InstanceFrame frame;
  auto failed = blixard::runtime::FrameDecoder::Status::need_more;
  for (std::size_t at = 1; at < size; at += chunk) {
    const std::size_t n = std::min(chunk, size - at);
    decoder.feed(std::string_view(reinterpret_cast<const char*>(data + at), n));
    for (;;) {
      const auto status = decoder.next(frame);
      using S = blixard::runtime::FrameDecoder::Status;
      if (failed != S::need_more && status != failed) std::abort();  // no resynchronising
      if (status == S::frame) {
        if (frame.ByteSizeLong() > k_limit) std::abort();
        continue;
      }
      if (status == S::too_large && decoder.rejected_length() <= k_limit) std::abort();
      if (status == S::too_large || status == S::malformed) failed = status;
      break;
    }
    // What is held is at most a frame's header and body plus the chunk just fed.
    if (failed == blixard::runtime::FrameDecoder::Status::need_more &&
        decoder.buffered() > k_limit + blixard::runtime::k_frame_header_bytes + chunk) {
      std::abort();
    }
  }
  return 0;
}
