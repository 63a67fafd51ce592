// libFuzzer target: a message of the agent channel (common/agent_message), as the server reads
// what an agent sends and an agent what the server sends. Any input is frames or a refusal;
// never a crash, a hang, or a frame of no kind handed on.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include <google/protobuf/stubs/logging.h>

#include "common/agent_message.hpp"

// libprotobuf logs every invalid UTF-8 string it refuses; the refusal is what is tested.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::size_t frames = 0;
  blixard::decode_frames(std::string_view(reinterpret_cast<const char*>(data), size),
                         [&](blixard::v1::AgentFrame& frame) {
                           if (frame.kind_case() == blixard::v1::AgentFrame::KIND_NOT_SET) {
                             std::abort();
                           }
                           ++frames;
                         });
  if (frames > size) std::abort();  // every frame costs at least its length prefix
  return 0;
}
