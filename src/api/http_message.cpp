// Answers, bodies and query parameters of the /v1 API (see http_message.hpp).
#include "api/http_message.hpp"

#include <google/protobuf/message.h>

#include <charconv>

#include "blixard/spec.hpp"
#include "common/json.hpp"

namespace blixard::api {
namespace {

bool wants_protobuf(std::string_view header) { return header.find(k_protobuf) != header.npos; }

}  // namespace

Response error_response(const v1::Status& status) {
  Response res;
  res.result(http_status(errc_from_string(status.code()).value_or(errc::internal)));
  res.set(http::field::content_type, k_json);
  res.body() = to_json(status);
  if (status.code() == "unauthenticated") res.set(http::field::www_authenticate, "Bearer");
  return res;
}

Response error_response(errc code, const std::string& message, std::string field) {
  return error_response(Error(code, message, std::move(field)).status());
}

Response error_from_current() {
  try {
    throw;
  } catch (const Error& e) {
    return error_response(e.status());
  } catch (const std::exception& e) {
    return error_response(errc::internal, e.what());
  } catch (...) {
    return error_response(errc::internal, "unknown exception");
  }
}

Response run_job(const Job& job) {
  try {
    return job();
  } catch (...) {
    return error_from_current();
  }
}

Response message_response(const Request& req, const google::protobuf::Message& m,
                          http::status status) {
  Response res;
  res.result(status);
  if (wants_protobuf(req[http::field::accept])) {
    res.set(http::field::content_type, k_protobuf);
    m.SerializeToString(&res.body());
  } else {
    res.set(http::field::content_type, k_json);
    res.body() = to_json(m);
  }
  return res;
}

void decode_body(const Request& req, google::protobuf::Message& m) {
  if (wants_protobuf(req[http::field::content_type])) {
    if (!m.ParseFromString(req.body())) {
      throw Error(errc::invalid_spec, "body is not a valid " + m.GetTypeName() + " in protobuf");
    }
  } else {
    from_json(req.body(), m);  // JSON is the default, whatever else the client claims
  }
}

google::protobuf::Duration duration_param(const std::string& text, const std::string& field,
                                          bool positive) {
  const auto ms = parse_duration(text, field).count();
  if (positive && ms <= 0) {
    throw Error(errc::invalid_spec,
                field + " must be a positive duration (e.g. 30s, 500ms), not \"" + text + "\"",
                field);
  }
  google::protobuf::Duration d;
  d.set_seconds(ms / 1000);
  d.set_nanos(static_cast<std::int32_t>((ms % 1000) * 1'000'000));
  return d;
}

std::int64_t parse_after(const Target& t, bool from_now) {
  const std::string* text = t.param("after");
  if (text == nullptr || text->empty()) return 0;
  std::int64_t value = 0;
  auto [p, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
  const bool now = from_now && value == -1;
  if (ec != std::errc() || p != text->data() + text->size() || (value < 0 && !now)) {
    throw Error(errc::invalid_spec,
                std::string("after must be a sequence number (0 or more") +
                    (from_now ? ", or -1 for from now" : "") + "), not \"" + *text + "\"",
                "after");
  }
  return value;
}

std::optional<std::int64_t> parse_from_revision(const Target& t) {
  const std::string* text = t.param("from");
  if (text == nullptr) return std::nullopt;
  std::int64_t value = 0;
  auto [p, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
  if (text->empty() || ec != std::errc() || p != text->data() + text->size() || value < 1) {
    throw Error(errc::invalid_spec,
                "from must be a store revision (1 or more), not \"" + *text + "\"", "from");
  }
  return value;
}

milliseconds parse_wait(const Target& t, milliseconds max) {
  const std::string* text = t.param("wait");
  if (text == nullptr || text->empty()) return milliseconds(0);
  return std::min(parse_duration(*text, "wait"), max);
}

bool parse_flag(const Target& t, const char* key) {
  const std::string* v = t.param(key);
  if (v == nullptr || *v == "0" || *v == "false") return false;
  if (v->empty() || *v == "1" || *v == "true") return true;  // a bare "?watch" counts
  throw Error(errc::invalid_spec, std::string(key) + " must be 1 or 0, not \"" + *v + "\"", key);
}

detail::ApplyOptions parse_apply_options(const Target& t) {
  detail::ApplyOptions options;
  const std::string* mode = t.param("mode");
  if (mode == nullptr || *mode == "apply") {
    options.mode = detail::ApplyMode::apply;
  } else if (*mode == "create") {
    options.mode = detail::ApplyMode::create;
  } else if (*mode == "remove") {
    options.mode = detail::ApplyMode::remove;
  } else {
    throw Error(errc::invalid_spec, "mode must be create, apply or remove, not \"" + *mode + "\"",
                "mode");
  }
  options.dry_run = parse_flag(t, "dryRun");
  options.prune = parse_flag(t, "prune");
  if (const std::string* stack = t.param("stack")) options.stack = *stack;
  return options;
}

}  // namespace blixard::api
