// A request's head, judged before any of its body is read: which side owns the path (API or
// trigger gateway), the limits on the head's size, the bearer token, the body's declared length.
// Beast's parser and these need nothing of the server, so a fuzz target links them alone.
#pragma once

#include <boost/beast/http/fields.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/optional.hpp>
#include <boost/system/error_code.hpp>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace blixard::api {

// A request target longer than this is answered 414; a head (request line and fields) larger
// than this 431. They bound what a connection buffers before it is authenticated.
inline constexpr std::size_t k_max_target = 8 << 10;
inline constexpr std::size_t k_max_header = 16 << 10;

std::string percent_decode(std::string_view s, bool plus_is_space);

struct Target {
  std::vector<std::string> segments;  // decoded path segments
  std::vector<std::pair<std::string, std::string>> query;

  const std::string* param(std::string_view key) const {
    for (const auto& [k, v] : query) {
      if (k == key) return &v;
    }
    return nullptr;
  }
};

// "a=1&b=x+y" as decoded pairs, in order (empty items skipped).
std::vector<std::pair<std::string, std::string>> parse_query(std::string_view query);
Target parse_target(std::string_view target);

// The paths the API owns (/v1/..., /healthz, /metrics, /ui/...); every other path belongs to the
// trigger gateway.
bool is_api_path(const Target& t);
// The API paths that need no token: /healthz and the dashboard's files under /ui/.
bool is_public_path(const Target& t);
// is_api_path(parse_target(target)) without building the Target, as every gateway request asks.
bool is_api_target(std::string_view target);

// Compares all of `expected` whatever `given` is, so timing does not reveal a matching prefix.
bool constant_time_equal(std::string_view given, std::string_view expected);
// An Authorization header value that carries `token` ("Bearer <token>", scheme in any case);
// any value does when `token` is empty (a server without one).
bool bearer_matches(std::string_view authorization, std::string_view token);

struct HeadLimits {
  bool token_required = false;  // the server has a token: API paths but public ones need one
  bool authenticated = false;   // the request's token is good (the caller checked it)
  std::string_view why;         // when not: what was wrong, for the 401
  std::size_t body_limit = 0;
  std::size_t gateway_body_limit = 0;
  // PUT /v1/blobs/... by an admin (a code archive's upload): this limit instead of body_limit.
  bool admin = false;
  std::size_t blob_body_limit = 0;
};

struct HeadVerdict {
  bool gateway = false;        // a trigger gateway path (public: no token)
  bool authenticated = false;  // an API request with the server's token
  std::size_t body_limit = 0;  // for this request's body
  unsigned status = 0;         // non-zero: answer this at once, reading no body
  std::string message;         // why, when status is set
};

// Target length (414), token (401 for API paths but public ones) and declared body length (413),
// in that order: an unauthenticated client learns nothing of the limits.
HeadVerdict check_head(const boost::beast::http::request_header<>& head,
                       boost::optional<std::uint64_t> content_length, const HeadLimits& limits);

// The answer to a head Beast could not parse: 414 for a target over k_max_target, 431 for another
// head over k_max_header, 400 for a malformed one; 0 when the client is gone (reset, end of
// stream): close without answering. `target` is the parser's, set once it has read the request
// line; before that, `buffered` (the bytes read and not consumed) begins with that line.
unsigned head_error_status(const boost::system::error_code& ec, std::string_view target,
                           std::string_view buffered);

}  // namespace blixard::api
