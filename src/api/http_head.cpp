// Judging a request head before its body (see http_head.hpp).
#include "api/http_head.hpp"

#include <boost/beast/http/error.hpp>
#include <cctype>
#include <charconv>

namespace blixard::api {

std::string percent_decode(std::string_view s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%' && i + 2 < s.size()) {
      unsigned value = 0;
      auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, value, 16);
      if (ec == std::errc() && p == s.data() + i + 3) {
        out.push_back(static_cast<char>(value));
        i += 2;
        continue;
      }
    }
    out.push_back(plus_is_space && c == '+' ? ' ' : c);
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> parse_query(std::string_view query) {
  std::vector<std::pair<std::string, std::string>> out;
  while (!query.empty()) {
    auto amp = query.find('&');
    std::string_view item = query.substr(0, amp);
    query = amp == query.npos ? std::string_view{} : query.substr(amp + 1);
    if (item.empty()) continue;
    auto eq = item.find('=');
    out.emplace_back(percent_decode(item.substr(0, eq), true),
                     eq == item.npos ? "" : percent_decode(item.substr(eq + 1), true));
  }
  return out;
}

Target parse_target(std::string_view target) {
  Target t;
  auto q = target.find('?');
  std::string_view path = target.substr(0, q);
  if (q != target.npos) t.query = parse_query(target.substr(q + 1));
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  while (!path.empty()) {
    if (path.front() == '/') path.remove_prefix(1);
    auto slash = path.find('/');
    t.segments.push_back(percent_decode(path.substr(0, slash), false));
    path = slash == path.npos ? std::string_view{} : path.substr(slash);
  }
  return t;
}

bool constant_time_equal(std::string_view given, std::string_view expected) {
  unsigned char diff = given.size() == expected.size() ? 0 : 1;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff |= static_cast<unsigned char>(g ^ static_cast<unsigned char>(expected[i]));
  }
  return diff == 0;
}

bool is_api_path(const Target& t) {
  const auto& s = t.segments;
  return (!s.empty() && (s[0] == "v1" || s[0] == "ui")) ||
         (s.size() == 1 && (s[0] == "healthz" || s[0] == "metrics"));
}

bool is_public_path(const Target& t) {
  const auto& s = t.segments;
  return (s.size() == 1 && s[0] == "healthz") || (!s.empty() && s[0] == "ui");
}

bool is_api_target(std::string_view target) {
  std::string_view path = target.substr(0, target.find('?'));
  if (path.find('%') != path.npos) return is_api_path(parse_target(target));
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  if (!path.empty() && path.front() == '/') path.remove_prefix(1);
  const auto slash = path.find('/');
  const std::string_view first = path.substr(0, slash);
  return first == "v1" || first == "ui" ||
         (slash == path.npos && (first == "healthz" || first == "metrics"));
}

bool bearer_matches(std::string_view authorization, std::string_view token) {
  if (token.empty()) return true;
  constexpr std::string_view scheme = "bearer ";
  if (authorization.size() < scheme.size()) return false;
  for (std::size_t i = 0; i < scheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != scheme[i]) return false;
  }
  authorization.remove_prefix(scheme.size());
  return constant_time_equal(authorization, token);
}

HeadVerdict check_head(const boost::beast::http::request_header<>& head,
                       boost::optional<std::uint64_t> content_length, const HeadLimits& limits) {
  namespace http = boost::beast::http;
  HeadVerdict v;
  const std::string_view target = head.target();
  if (target.size() > k_max_target) {
    v.status = 414;
    v.message = "the request target is " + std::to_string(target.size()) + " bytes; the limit is " +
                std::to_string(k_max_target);
    return v;
  }
  v.gateway = !is_api_target(target);
  v.body_limit = v.gateway ? limits.gateway_body_limit : limits.body_limit;
  if (limits.admin && head.method() == http::verb::put && target.starts_with("/v1/blobs/")) {
    v.body_limit = limits.blob_body_limit;
  }
  // The same rule as routing: every API path but /healthz and the dashboard's needs a good token.
  v.authenticated = !v.gateway && limits.token_required && limits.authenticated;
  if (!v.gateway && limits.token_required && !v.authenticated) {
    if (!is_public_path(parse_target(target))) {
      v.status = 401;
      v.message = limits.why.empty()
                      ? "this server needs a token: send \"Authorization: Bearer <token>\""
                      : std::string(limits.why);
      return v;
    }
  }
  if (content_length && *content_length > v.body_limit) {
    v.status = 413;
    v.message = "request body is over the limit of " + std::to_string(v.body_limit) + " bytes";
  }
  return v;
}

unsigned head_error_status(const boost::system::error_code& ec, std::string_view target,
                           std::string_view buffered) {
  namespace http = boost::beast::http;
  if (!ec || ec == http::error::end_of_stream || ec == http::error::partial_message ||
      ec == http::error::need_more) {
    return 0;
  }
  if (ec == http::error::header_limit) {
    if (target.empty()) {
      // The request line did not end within the limit: the target as far as it came.
      const std::string_view line = buffered.substr(0, buffered.find('\n'));
      const auto space = line.find(' ');
      target = space == line.npos ? std::string_view{} : line.substr(space + 1);
      target = target.substr(0, target.find(' '));
    }
    return target.size() > k_max_target ? 414 : 431;
  }
  if (ec.category() == make_error_code(http::error::bad_target).category()) return 400;
  return 0;  // reset, timeout, shutting down
}

}  // namespace blixard::api
