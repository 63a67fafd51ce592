// The SDK's error policy: every failure that ends an operation is a blixard::Error carrying an
// errc, a message and, for bad input, the path of the offending field. The same codes travel on
// the wire as blixard.v1.Status.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <system_error>

#include "blixard/v1/common.pb.h"

namespace blixard {

enum class errc {
  invalid_spec = 1,   // bad input: a manifest, a flag, a name, a payload that is not JSON
  not_found,          // no such object
  already_exists,     // create of a name that exists
  conflict,           // compare-and-swap lost (stale resource_version)
  throttled,          // past maxInstances / concurrentExecutions
  timeout,            // the handler ran past its timeout
  handler_failed,     // the handler raised, crashed or broke the protocol
  payload_too_large,  // request or response over the limit
  unavailable,        // server not reachable, store closed, no node to run on
  unauthenticated,    // missing or wrong token
  permission_denied,  // token lacks the scope
  internal,           // a bug: please report it
};

const std::error_category& blixard_category() noexcept;
std::error_code make_error_code(errc e) noexcept;

// "invalid_spec", "not_found", ... as used in Status.code.
std::string_view to_string(errc e) noexcept;
std::optional<errc> errc_from_string(std::string_view s) noexcept;
// The HTTP status that carries the code (400, 404, 409, 429, 504, ...).
int http_status(errc e) noexcept;

class Error : public std::system_error {
 public:
  Error(errc code, const std::string& message, std::string field = {});
  explicit Error(v1::Status status);

  errc code() const noexcept { return static_cast<errc>(std::system_error::code().value()); }
  // Path of the offending field ("spec.functions[1].memory"), empty when not about input.
  const std::string& field() const noexcept { return status_.field(); }
  // The plain message, without the field prefix that what() carries.
  const std::string& message() const noexcept { return status_.message(); }
  const v1::Status& status() const noexcept { return status_; }
  // "file:line:col: field: message" (std::system_error would append the code's name).
  const char* what() const noexcept override { return what_.c_str(); }

 private:
  v1::Status status_;
  std::string what_;
};

}  // namespace blixard

template <>
struct std::is_error_code_enum<blixard::errc> : std::true_type {};
