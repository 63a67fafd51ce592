// Protobuf <-> canonical JSON with the options the wire uses everywhere.
#include "common/json.hpp"

#include <google/protobuf/message.h>
#include <google/protobuf/util/json_util.h>

#include "blixard/error.hpp"
#include "common/json_check.hpp"

namespace blixard {

std::string to_json(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = false;  // json_name: "memory", not "memory_mib"
  std::string out;
  auto status = google::protobuf::util::MessageToJsonString(message, &out, options);
  if (!status.ok()) {
    throw Error(errc::internal, "cannot print " + message.GetTypeName() +
                                    " as JSON: " + std::string(status.message()));
  }
  return out;
}

void from_json(std::string_view json, google::protobuf::Message& out, bool ignore_unknown_fields) {
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = ignore_unknown_fields;
  out.Clear();
  // protobuf's parser takes time quadratic in the nesting: deep input never reaches it.
  if (auto check = check_json_text(json); check.verdict == JsonVerdict::too_deep) {
    throw Error(errc::invalid_spec, json_problem(check, "body"));
  }
  auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), &out, options);
  if (!status.ok()) {
    throw Error(errc::invalid_spec, "body is not a valid " + out.GetTypeName() +
                                        " in JSON: " + std::string(status.message()));
  }
}

}  // namespace blixard
