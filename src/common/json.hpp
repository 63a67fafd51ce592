// Protobuf <-> canonical JSON for the wire (HTTP bodies, CLI -o json): one place that fixes the
// options, so the server, the client and the bindings print and read the same JSON.
#pragma once

#include <string>
#include <string_view>

namespace google::protobuf {
class Message;
}

namespace blixard {

// Canonical JSON mapping with json_name keys ("memory", "resourceVersion"); default values omitted.
std::string to_json(const google::protobuf::Message& message);

// Parses canonical JSON into `out` (cleared first). Unknown fields are rejected unless asked
// otherwise, so a typo in a body is an error rather than silently ignored (a client reading a
// newer server's answers ignores them). Throws Error(invalid_spec) naming what is wrong.
void from_json(std::string_view json, google::protobuf::Message& out,
               bool ignore_unknown_fields = false);

}  // namespace blixard
