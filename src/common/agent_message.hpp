// A message of the agent channel (DESIGN §4): one or more serialized AgentFrames, each preceded
// by its length as a varint (protobuf's delimited form). FrameSocket writes them and reads them
// with this parser, kept apart (no Beast) so a fuzz target links it alone.
#pragma once

#include <functional>
#include <string_view>

#include "blixard/v1/agent.pb.h"

namespace blixard {

// Calls `each` with every frame of `message`, in order; false (after the frames before it) when
// the message is empty or a frame is malformed, cut short or of no kind.
bool decode_frames(std::string_view message, const std::function<void(v1::AgentFrame&)>& each);

}  // namespace blixard
