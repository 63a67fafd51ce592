// The HTTP trigger gateway (see trigger_gateway.hpp): routing by the http triggers, the event a
// function gets, and the mapping of its result onto an HTTP answer.
#include "api/trigger_gateway.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/beast/core/detail/base64.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/json.hpp>
#include <cctype>
#include <map>
#include <vector>

#include "common/json.hpp"
#include "common/json_check.hpp"
#include "common/json_sax.hpp"

namespace blixard::api {
namespace {

namespace beast = boost::beast;

// Gateway errors are {"error": code, "message": ...}: what an HTTP client of a function expects.
}  // namespace

Response gateway_error(unsigned status, std::string_view code, const std::string& message) {
  Response res;
  res.result(status);
  res.set(http::field::content_type, k_json);
  boost::json::object body;
  body["error"] = code;
  body["message"] = message;
  res.body() = boost::json::serialize(body);
  if (status == 429 || status == 503) res.set(http::field::retry_after, "1");
  return res;
}

Response gateway_error(errc code, const std::string& message) {
  return gateway_error(static_cast<unsigned>(http_status(code)), to_string(code), message);
}

namespace {

// The gateway's answer for a failed call.
Response gateway_failure(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    return gateway_error(e.code(), e.message());
  } catch (const std::exception& e) {
    return gateway_error(errc::internal, e.what());
  } catch (...) {
    return gateway_error(errc::internal, "unknown exception");
  }
}

// "/a/b/" and "/a/b" are one path; "/" stays itself.
std::string normalize_path(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

struct GatewayRoute {
  std::string trigger;
  std::string function;
  std::string path;  // a prefix route's path without its "/*"
  std::vector<std::string> methods;
  bool prefix = false;
};

}  // namespace

// The http triggers as read at `fetched`.
struct TriggerGateway::Routes {
  Clock::time_point fetched;
  std::map<std::string, GatewayRoute> exact;
  std::vector<GatewayRoute> prefixes;  // longest first

  const GatewayRoute* find(const std::string& path) const {
    if (auto it = exact.find(path); it != exact.end()) return &it->second;
    for (const auto& r : prefixes) {
      if (path == r.path || (path.starts_with(r.path) && path.size() > r.path.size() &&
                             (path[r.path.size()] == '/' || r.path.empty()))) {
        return &r;
      }
    }
    return nullptr;
  }
};

namespace {

bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    std::uint32_t cp = 0;
    if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (std::size_t k = 1; k < len; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    const bool overlong =
        (len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
    if (overlong || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

std::string base64_encode(std::string_view s) {
  namespace b64 = beast::detail::base64;
  std::string out(b64::encoded_size(s.size()), '\0');
  out.resize(b64::encode(out.data(), s.data(), s.size()));
  return out;
}

std::optional<std::string> base64_decode(std::string_view s) {
  namespace b64 = beast::detail::base64;
  for (int i = 0; i < 2 && !s.empty() && s.back() == '='; ++i) s.remove_suffix(1);
  std::string out(b64::decoded_size(s.size()) + 3, '\0');
  auto [written, read] = b64::decode(out.data(), s.data(), s.size());
  if (read != s.size()) return std::nullopt;
  out.resize(written);
  return out;
}

bool valid_header(std::string_view name, std::string_view value) {
  if (name.empty()) return false;
  for (unsigned char c : name) {
    if (!std::isalnum(c) &&
        std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) == std::string_view::npos) {
      return false;
    }
  }
  return value.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

// Headers the server owns: a handler cannot frame the response itself.
bool hop_by_hop(std::string_view name) {
  for (std::string_view h : {"content-length", "transfer-encoding", "connection", "keep-alive",
                             "upgrade", "te", "trailer", "proxy-connection"}) {
    if (beast::iequals(name, h)) return true;
  }
  return false;
}

// Appends `s` as a JSON string, escaped as boost::json::serialize does.
void append_json_string(std::string& out, std::string_view s) {
  static constexpr char k_hex[] = "0123456789abcdef";
  out.push_back('"');
  std::size_t plain = 0;  // start of the run not yet copied
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(s.data() + plain, i - plain);
    plain = i + 1;
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default: {
        const char escaped[] = {'\\', 'u', '0', '0', k_hex[c >> 4], k_hex[c & 15]};
        out.append(escaped, sizeof escaped);
      }
    }
  }
  out.append(s.data() + plain, s.size() - plain);
  out.push_back('"');
}

// Name/value pairs in first-seen order; the values of a repeated name joined by a separator.
class JoinedPairs {
 public:
  void add(std::string name, std::string_view value, std::string_view separator) {
    for (auto& e : entries_) {
      if (e.name != name) continue;
      if (!e.repeated) e.joined.assign(e.first), e.repeated = true;
      e.joined.append(separator);
      e.joined.append(value);
      return;
    }
    entries_.push_back({std::move(name), value, {}, false});
  }

  // As a JSON object of strings.
  void append_json(std::string& out) const {
    out.push_back('{');
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      const auto& e = entries_[i];
      if (i != 0) out.push_back(',');
      append_json_string(out, e.name);
      out.push_back(':');
      append_json_string(out, e.repeated ? std::string_view(e.joined) : e.first);
    }
    out.push_back('}');
  }

 private:
  struct Entry {
    std::string name;
    std::string_view first;  // the first value (in the request or the decoded query)
    std::string joined;      // all values, once the name repeats
    bool repeated;
  };
  std::vector<Entry> entries_;
};

// The event an HTTP trigger's function gets: Lambda function URL's shape, trimmed (headers
// lower-case, repeats joined). Written straight to text: no JSON DOM per request.
std::string gateway_event(const Request& req, std::string_view raw_path, std::string_view raw_query,
                          std::string_view path) {
  const std::string& body = req.body();
  const bool text = valid_utf8(body);
  std::string out;
  out.reserve(256 + req.target().size() * 2 + body.size() +
              (text ? body.size() / 8 : body.size() / 3));
  out += "{\"method\":";
  append_json_string(out, req.method_string());
  out += ",\"path\":";
  append_json_string(out, path);
  out += ",\"rawPath\":";
  append_json_string(out, raw_path);
  out += ",\"rawQueryString\":";
  append_json_string(out, raw_query);

  JoinedPairs headers;
  for (const auto& field : req) {
    std::string name(field.name_string());
    for (auto& c : name) c = c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
    const std::string_view separator = name == "cookie" ? "; " : ", ";
    headers.add(std::move(name), field.value(), separator);
  }
  out += ",\"headers\":";
  headers.append_json(out);

  const auto query_pairs = parse_query(raw_query);  // owns the decoded text `query` points into
  JoinedPairs query;
  for (const auto& [key, value] : query_pairs) query.add(key, value, ",");
  out += ",\"query\":";
  query.append_json(out);

  out += ",\"body\":";
  if (text) {
    append_json_string(out, body);
  } else {
    append_json_string(out, base64_encode(body));
  }
  out += text ? ",\"isBase64Encoded\":false}" : ",\"isBase64Encoded\":true}";
  return out;
}

// Looks for a "statusCode" member of a top-level object without building a DOM; stops there.
struct StatusCodeFinder : json_sax::Ignore {
  int depth = 0;
  bool found = false;
  std::string key;  // the top-level key being read, when it comes in parts

  bool on_array_begin(ec&) { return ++depth, true; }
  bool on_array_end(std::size_t, ec&) { return --depth, true; }
  bool on_object_begin(ec&) { return ++depth, true; }
  bool on_object_end(std::size_t, ec&) { return --depth, true; }
  bool on_key_part(sv s, std::size_t, ec&) {
    if (depth == 1) key.append(s.data(), s.size());
    return true;
  }
  bool on_key(sv s, std::size_t, ec&) {
    if (depth != 1) return true;
    key.append(s.data(), s.size());
    found = key == "statusCode";
    key.clear();
    return !found;  // found: no need to read on
  }
};

// Whether a result has a top-level "statusCode". The scan checks the result as far as it reads
// (depth included, the same options as the DOM parse after it), so a result it cannot read is the
// handler's fault, never a 200 that hides the status it meant.
bool has_status_code(std::string_view json) {
  boost::json::basic_parser<StatusCodeFinder> parser{json_parse_options()};
  boost::system::error_code ec;
  const std::size_t n = parser.write_some(false, json.data(), json.size(), ec);
  if (parser.handler().found) return true;  // the DOM parse checks the rest
  if (!ec && n < json.size()) ec = boost::json::error::extra_data;
  if (ec) throw Error(errc::handler_failed, json_problem(json_verdict(ec), "the handler's result"));
  return false;
}

// The handler's result as an HTTP answer: {"statusCode", "headers", "body", "isBase64Encoded"}
// maps field by field; any other JSON result is a 200 with that JSON; a result that is not JSON
// (or nested too deep to read) is a 502.
Response gateway_result(v1::InvokeResponse&& out) {
  Response res{http::status::ok, 11};
  if (!out.request_id().empty()) res.set("X-Blixard-Request-Id", out.request_id());
  // Most results either are the answer's JSON or carry a statusCode: only these need a DOM.
  if (out.result().empty() || !has_status_code(out.result())) {
    res.set(http::field::content_type, k_json);
    res.body() = out.result().empty() ? std::string("null") : std::move(*out.mutable_result());
    return res;
  }
  boost::system::error_code ec;
  boost::json::value v = boost::json::parse(out.result(), ec, {}, json_parse_options());
  if (ec) throw Error(errc::handler_failed, json_problem(json_verdict(ec), "the handler's result"));
  const boost::json::object* obj = v.is_object() ? &v.as_object() : nullptr;
  const boost::json::value* status = obj ? obj->if_contains("statusCode") : nullptr;
  if (status == nullptr) {
    res.set(http::field::content_type, k_json);
    res.body() = out.result();
    return res;
  }
  std::int64_t code = 0;
  if (status->is_int64()) {
    code = status->as_int64();
  } else if (status->is_uint64()) {
    code = static_cast<std::int64_t>(std::min<std::uint64_t>(status->as_uint64(), 1000));
  } else if (status->is_double() && status->as_double() == static_cast<int>(status->as_double())) {
    code = static_cast<int>(status->as_double());
  }
  if (code < 200 || code > 599) {
    throw Error(errc::handler_failed, "the handler returned statusCode " +
                                          boost::json::serialize(*status) +
                                          ", which is not an HTTP status (200-599)");
  }
  res.result(static_cast<unsigned>(code));
  bool has_type = false;
  if (const auto* headers = obj->if_contains("headers"); headers && headers->is_object()) {
    for (const auto& [key, val] : headers->as_object()) {
      if (val.is_null()) continue;
      std::string value =
          val.is_string() ? std::string(val.as_string()) : boost::json::serialize(val);
      if (hop_by_hop(key) || !valid_header(key, value)) continue;
      if (beast::iequals(key, "content-type")) has_type = true;
      res.set(std::string_view(key), value);
    }
  }
  const boost::json::value* body = obj->if_contains("body");
  const boost::json::value* b64 = obj->if_contains("isBase64Encoded");
  const bool base64 = b64 != nullptr && b64->is_bool() && b64->as_bool();
  if (body == nullptr || body->is_null()) {
    // no body
  } else if (body->is_string()) {
    std::string_view text = body->as_string();
    if (base64) {
      auto bytes = base64_decode(text);
      if (!bytes) throw Error(errc::handler_failed, "the handler's body is not valid base64");
      res.body() = std::move(*bytes);
    } else {
      res.body() = std::string(text);
    }
    if (!has_type) {
      res.set(http::field::content_type,
              base64 ? "application/octet-stream" : "text/plain; charset=utf-8");
    }
  } else {
    res.body() = boost::json::serialize(*body);
    // Boost.JSON reads a number past a double's range as infinity (0e999 as NaN) and prints it
    // "Infinity" ("NaN"): not JSON, so not served as such (found by tests/fuzz/json_check_fuzz).
    if (!check_json_text(res.body()).ok()) {
      throw Error(errc::handler_failed, "the handler's body has a number a double cannot hold");
    }
    if (!has_type) res.set(http::field::content_type, k_json);
  }
  if (code == 204 || code == 304) res.body().clear();  // these carry no body
  return res;
}

}  // namespace

TriggerGateway::TriggerGateway(std::shared_ptr<detail::Backend> backend, milliseconds route_refresh,
                               std::shared_ptr<spdlog::logger> logger)
    : backend_(std::move(backend)), route_refresh_(route_refresh), logger_(std::move(logger)) {}

TriggerGateway::~TriggerGateway() = default;

Routed TriggerGateway::route(const std::shared_ptr<const Request>& req,
                             std::optional<Principal> principal) {
  return async_or_worker(
      [this, req, principal](const boost::asio::any_io_executor& executor, const Answer& answer,
                             CallerPtr caller) {
        v1::InvokeRequest call;
        try {
          if (auto early = gateway_request(*req, principal, call)) {
            answer(std::move(*early));
            return true;
          }
          return backend_->try_invoke_async(
              call, executor,
              [answer](const std::exception_ptr& error, v1::InvokeResponse out) {
                answer(error ? gateway_failure(error) : gateway_answer(std::move(out)));
              },
              std::move(caller));
        } catch (...) {
          answer(gateway_failure(std::current_exception()));
          return true;
        }
      },
      [this, req, principal] { return gateway(*req, principal); });
}

// The routing table, re-read when older than `route_refresh` (a quarter of it after a miss, so
// a trigger just created routes soon). One thread reads it; the others wait and share the result.
std::shared_ptr<const TriggerGateway::Routes> TriggerGateway::route_table(bool missed) {
  const auto max_age = missed ? route_refresh_ / 4 : route_refresh_;
  const auto now = Clock::now();
  {
    std::lock_guard lock(mu_);
    if (routes_ && now - routes_->fetched < max_age) return routes_;
  }
  std::lock_guard refresh(refresh_mu_);
  {
    std::lock_guard lock(mu_);
    if (routes_ && routes_->fetched >= now) return routes_;  // read afresh while this one waited
  }
  auto table = std::make_shared<Routes>();
  table->fetched = Clock::now();
  v1::TriggerList list;
  try {
    list = backend_->list_triggers();
  } catch (const std::exception& e) {
    std::lock_guard lock(mu_);
    if (!routes_) throw;
    if (logger_) logger_->warn("gateway routes not refreshed: {}", e.what());
    return routes_;  // a stale table beats none
  }
  for (const auto& trigger : list.items()) {
    const auto& spec = trigger.spec();
    if (spec.type() != "http" || spec.path().empty()) continue;
    GatewayRoute r;
    r.trigger = trigger.metadata().name();
    r.function = spec.function();
    r.methods.assign(spec.methods().begin(), spec.methods().end());
    for (auto& m : r.methods) {
      for (auto& c : m) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    }
    std::string path = spec.path();
    if (path.ends_with("/*")) {
      r.prefix = true;
      path.resize(path.size() - 2);
      r.path = path.empty() ? path : normalize_path(path);
      table->prefixes.push_back(std::move(r));
    } else {
      r.path = normalize_path(path);
      table->exact.emplace(r.path, std::move(r));
    }
  }
  std::sort(table->prefixes.begin(), table->prefixes.end(),
            [](const auto& a, const auto& b) { return a.path.size() > b.path.size(); });
  std::lock_guard lock(mu_);
  routes_ = table;
  return table;
}

std::optional<std::string> TriggerGateway::unrouted_path(std::string_view target) {
  try {
    std::string path = normalize_path(percent_decode(target.substr(0, target.find('?')), false));
    if (route_table(false)->find(path) != nullptr || route_table(true)->find(path) != nullptr) {
      return std::nullopt;
    }
    return path;
  } catch (...) {
    return std::nullopt;
  }
}

Response TriggerGateway::gateway(const Request& req, const std::optional<Principal>& principal) {
  try {
    v1::InvokeRequest call;
    if (auto early = gateway_request(req, principal, call)) return std::move(*early);
    return gateway_answer(backend_->invoke(call));
  } catch (...) {
    return gateway_failure(std::current_exception());
  }
}

Response TriggerGateway::gateway_answer(v1::InvokeResponse out) {
  try {
    if (out.has_error() && !out.error().code().empty()) throw Error(out.error());
    return gateway_result(std::move(out));
  } catch (...) {
    return gateway_failure(std::current_exception());
  }
}

std::optional<Response> TriggerGateway::gateway_request(const Request& req,
                                                        const std::optional<Principal>& principal,
                                                        v1::InvokeRequest& call) {
  std::string_view target = req.target();
  const auto q = target.find('?');
  const std::string_view raw_path = target.substr(0, q);
  const std::string_view raw_query = q == target.npos ? "" : target.substr(q + 1);
  const std::string decoded_path = percent_decode(raw_path, false);
  const std::string path = normalize_path(decoded_path);

  auto table = route_table(false);
  const GatewayRoute* route = table->find(path);
  if (route == nullptr) {
    table = route_table(true);
    route = table->find(path);
  }
  if (route == nullptr) throw Error(errc::not_found, "no HTTP trigger serves " + path);

  const std::string_view method = req.method_string();
  if (!route->methods.empty() &&
      std::find(route->methods.begin(), route->methods.end(), method) == route->methods.end()) {
    std::string allow;
    for (const auto& m : route->methods) allow += (allow.empty() ? "" : ", ") + m;
    auto res = gateway_error(
        405, "method_not_allowed",
        std::string(method) + " is not allowed on " + path + " (allowed: " + allow + ")");
    res.set(http::field::allow, allow);
    return res;
  }

  call.set_function(route->function);
  call.set_payload(gateway_event(req, raw_path, raw_query, decoded_path));
  call.set_request_id(std::string(req["X-Blixard-Request-Id"]));
  return std::nullopt;
}

}  // namespace blixard::api
