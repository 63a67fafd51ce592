// blixard::Error and the errc category: the one error vocabulary of the SDK and the wire.
#include "blixard/error.hpp"

#include <array>
#include <utility>

namespace blixard {
namespace {

struct CodeInfo {
  errc code;
  std::string_view name;
  int http;
};

constexpr std::array<CodeInfo, 12> k_codes{{
    {errc::invalid_spec, "invalid_spec", 400},
    {errc::not_found, "not_found", 404},
    {errc::already_exists, "already_exists", 409},
    {errc::conflict, "conflict", 409},
    {errc::throttled, "throttled", 429},
    {errc::timeout, "timeout", 504},
    {errc::handler_failed, "handler_failed", 502},
    {errc::payload_too_large, "payload_too_large", 413},
    {errc::unavailable, "unavailable", 503},
    {errc::unauthenticated, "unauthenticated", 401},
    {errc::permission_denied, "permission_denied", 403},
    {errc::internal, "internal", 500},
}};

class Category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "blixard"; }
  std::string message(int value) const override {
    return std::string(to_string(static_cast<errc>(value)));
  }
};

std::string describe(const v1::Status& s) {
  std::string out;
  if (!s.file().empty()) {
    out += s.file();
    if (s.line() != 0) {
      out += ":" + std::to_string(s.line());
      if (s.column() != 0) out += ":" + std::to_string(s.column());
    }
    out += ": ";
  }
  if (!s.field().empty()) out += s.field() + ": ";
  out += s.message();
  return out;
}

v1::Status make_status(errc code, const std::string& message, std::string field) {
  v1::Status s;
  s.set_code(std::string(to_string(code)));
  s.set_message(message);
  s.set_field(std::move(field));
  return s;
}

}  // namespace

const std::error_category& blixard_category() noexcept {
  static const Category category;
  return category;
}

std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), blixard_category()};
}

std::string_view to_string(errc e) noexcept {
  for (const auto& c : k_codes) {
    if (c.code == e) return c.name;
  }
  return "internal";
}

std::optional<errc> errc_from_string(std::string_view s) noexcept {
  for (const auto& c : k_codes) {
    if (c.name == s) return c.code;
  }
  return std::nullopt;
}

int http_status(errc e) noexcept {
  for (const auto& c : k_codes) {
    if (c.code == e) return c.http;
  }
  return 500;
}

Error::Error(errc code, const std::string& message, std::string field)
    : Error(make_status(code, message, std::move(field))) {}

Error::Error(v1::Status status)
    : std::system_error(make_error_code(errc_from_string(status.code()).value_or(errc::internal)),
                        describe(status)),
      status_(std::move(status)),
      what_(describe(status_)) {}

}  // namespace blixard
