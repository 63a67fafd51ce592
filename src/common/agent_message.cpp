// The agent channel's messages (see agent_message.hpp).
#include "common/agent_message.hpp"

#include <google/protobuf/io/coded_stream.h>

#include <cstdint>

namespace blixard {

bool decode_frames(std::string_view message, const std::function<void(v1::AgentFrame&)>& each) {
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const std::uint8_t*>(message.data()),
                                            static_cast<int>(message.size()));
  if (message.empty()) return false;
  v1::AgentFrame frame;
  while (in.CurrentPosition() < static_cast<int>(message.size())) {
    std::uint32_t length = 0;
    if (!in.ReadVarint32(&length) ||
        length > message.size() - static_cast<std::size_t>(in.CurrentPosition())) {
      return false;
    }
    const auto limit = in.PushLimit(static_cast<int>(length));
    frame.Clear();
    if (!frame.ParseFromCodedStream(&in) || !in.ConsumedEntireMessage() ||
        frame.kind_case() == v1::AgentFrame::KIND_NOT_SET) {
      return false;
    }
    in.PopLimit(limit);
    each(frame);
  }
  return true;
}

}  // namespace blixard
