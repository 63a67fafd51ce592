// The /v1 HTTP API and the HTTP trigger gateway over Beast: one session per connection (keep-alive,
// a strand each) on one of `io_threads` io_contexts. A Backend call runs on the thread that read
// its request, so a call costs no cross-thread wakeup beyond the Backend's own; when a call runs
// longer than k_call_handoff, a monitor hands that io_context to a spare thread, so a slow call
// never holds up other connections for long. At most `workers` calls run at once; more wait their
// turn. Long polls and NDJSON streams run on a capped pool of their own.
#include "api/http_server.hpp"

#include <sys/socket.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/core/detail/base64.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/json.hpp>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "api/http_head.hpp"
#include "blixard/error.hpp"
#include "blixard/spec.hpp"
#include "common/json.hpp"
#include "common/json_check.hpp"
#include "common/json_sax.hpp"
#include "common/sigpipe.hpp"

namespace blixard::api {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

constexpr std::string_view k_json = "application/json";
constexpr std::string_view k_protobuf = "application/x-protobuf";
// After an answer that closes the connection, unread request bytes are drained (bounded) so the
// client sees the answer instead of a reset.
constexpr std::size_t k_drain_limit = 64 << 20;
constexpr auto k_drain_timeout = std::chrono::seconds(5);
constexpr auto k_write_timeout = std::chrono::seconds(30);
// A call on an io thread longer than this gets its io_context handed to a spare thread. Most calls
// (a warm invocation, a store read) end well within it and so need no handoff at all.
constexpr auto k_call_handoff = std::chrono::milliseconds(1);
// The call monitor checks every k_call_handoff while calls come, and sleeps once none has for this.
constexpr auto k_monitor_linger = std::chrono::milliseconds(200);

bool wants_protobuf(std::string_view header) { return header.find(k_protobuf) != header.npos; }

// "2s", "500ms", "1.5s", "2m", "1h", "1m30s"; a bare number is seconds. The spec's parser, so a
// query parameter reads as a manifest's field does (nan, garbage and negatives are errors).
// `positive`: zero is an error too (a call's timeout; a wait of 0 means no wait).
google::protobuf::Duration parse_duration(const std::string& text,
                                          const std::string& field = "timeout",
                                          bool positive = true) {
  const auto ms = blixard::parse_duration(text, field).count();
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

Response error_response(const v1::Status& status) {
  Response res;
  res.result(http_status(errc_from_string(status.code()).value_or(errc::internal)));
  res.set(http::field::content_type, k_json);
  res.body() = to_json(status);
  if (status.code() == "unauthenticated") res.set(http::field::www_authenticate, "Bearer");
  return res;
}

Response error_response(errc code, const std::string& message, std::string field = {}) {
  return error_response(Error(code, message, std::move(field)).status());
}

Response method_not_allowed(const Request& req, std::string_view allow) {
  auto res = error_response(
      errc::invalid_spec, std::string(req.method_string()) + " is not allowed on " +
                              std::string(req.target()) + " (allowed: " + std::string(allow) + ")");
  res.result(http::status::method_not_allowed);
  res.set(http::field::allow, allow);
  return res;
}

Response message_response(const Request& req, const google::protobuf::Message& m,
                          http::status status = http::status::ok) {
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

template <class M>
M decode_body(const Request& req) {
  M m;
  if (wants_protobuf(req[http::field::content_type])) {
    if (!m.ParseFromString(req.body())) {
      throw Error(errc::invalid_spec, "body is not a valid " + m.GetTypeName() + " in protobuf");
    }
  } else {
    from_json(req.body(), m);  // JSON is the default, whatever else the client claims
  }
  return m;
}

detail::ApplyMode parse_mode(const Target& t) {
  const std::string* mode = t.param("mode");
  if (mode == nullptr || *mode == "apply") return detail::ApplyMode::apply;
  if (*mode == "create") return detail::ApplyMode::create;
  if (*mode == "remove") return detail::ApplyMode::remove;
  throw Error(errc::invalid_spec, "mode must be create, apply or remove, not \"" + *mode + "\"",
              "mode");
}

// The kinds that share list/get/create/delete routes.
enum class Kind { function, vm, trigger };

std::optional<Kind> parse_kind(const std::string& s) {
  if (s == "functions") return Kind::function;
  if (s == "vms") return Kind::vm;
  if (s == "triggers") return Kind::trigger;
  return std::nullopt;
}

// One object of `kind` named `name` in a set, for create (full object) or remove (name only).
template <class M>
void require_name(const M& m) {
  if (m.metadata().name().empty()) {
    throw Error(errc::invalid_spec, "a name is required", "metadata.name");
  }
}

using Job = std::function<Response()>;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr std::string_view k_ndjson = "application/x-ndjson";
constexpr std::string_view k_prometheus = "text/plain; version=0.0.4; charset=utf-8";

// ?after=N (a sequence of the log or event stream); ?from=N is after=N-1 (DESIGN §4's watch form).
// With `from_now`, after=-1 is taken too: only what comes after the stream's current position
// (the Backend resolves a negative `after` to it).
std::int64_t parse_after(const Target& t, bool from_now = false) {
  const char* key = t.param("after") ? "after" : "from";
  const std::string* text = t.param(key);
  if (text == nullptr || text->empty()) return 0;
  std::int64_t value = 0;
  auto [p, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
  const bool now = from_now && key[0] == 'a' && value == -1;
  if (ec != std::errc() || p != text->data() + text->size() || (value < 0 && !now)) {
    throw Error(errc::invalid_spec,
                std::string(key) + " must be a sequence number (0 or more" +
                    (from_now ? ", or -1 for from now" : "") + "), not \"" + *text + "\"",
                key);
  }
  return key[0] == 'f' ? std::max<std::int64_t>(value - 1, 0) : value;
}

milliseconds parse_wait(const Target& t, milliseconds max) {
  const std::string* text = t.param("wait");
  if (text == nullptr || text->empty()) return milliseconds(0);
  auto d = parse_duration(*text, "wait", false);
  return std::min(milliseconds(d.seconds() * 1000 + d.nanos() / 1'000'000), max);
}

bool parse_flag(const Target& t, const char* key) {
  const std::string* v = t.param(key);
  if (v == nullptr || *v == "0" || *v == "false") return false;
  if (v->empty() || *v == "1" || *v == "true") return true;  // a bare "?watch" counts
  throw Error(errc::invalid_spec, std::string(key) + " must be 1 or 0, not \"" + *v + "\"", key);
}

// The answer for whatever exception is being handled.
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

// ---- Streams ------------------------------------------------------------------------------

// One batch of a stream: NDJSON lines (each ending in '\n') and the sequence to continue after.
struct Batch {
  std::string lines;
  std::int64_t next = 0;
};
using Poll = std::function<Batch(std::int64_t after, milliseconds wait)>;

// Holds one of the `max_streams` places while a stream or a waiting long poll is open.
struct StreamSlot {
  explicit StreamSlot(std::atomic<std::size_t>& count) : open(count) {}
  StreamSlot(const StreamSlot&) = delete;
  StreamSlot& operator=(const StreamSlot&) = delete;
  ~StreamSlot() { --open; }
  std::atomic<std::size_t>& open;
};

// Where an asynchronous call's answer goes (any thread; the session takes it to its strand).
using Answer = std::function<void(Response)>;
// Starts a call that answers through Answer later (true), or does nothing (false).
// `caller` notices the client hang up while the call waits to start (Session::watch_caller).
using CallerPtr = std::shared_ptr<detail::Caller>;
using AsyncStart = std::function<bool(const asio::any_io_executor&, Answer, CallerPtr)>;

// How a routed request is answered.
struct Routed {
  enum class Mode {
    now,     // cheap: answered on the io thread
    worker,  // a Backend call on the worker pool
    async,   // `start` without a thread waiting, else `job` as a worker call
    waiter,  // a long poll that may wait: on the stream pool, holding a stream slot
    stream,  // an NDJSON stream: `poll` in a loop on the stream pool, holding a slot
  };
  Mode mode = Mode::now;
  Job job;
  Poll poll;
  std::int64_t after = 0;
  AsyncStart start;
};

// ---- The trigger gateway ------------------------------------------------------------------

// Gateway errors are {"error": code, "message": ...}: what an HTTP client of a function expects.
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

// The http triggers as read at `fetched`.
struct RouteTable {
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

// ---- The server core ----------------------------------------------------------------------

class Session;

// How often a reactor looks for connections past their read or write deadline: one timer per
// reactor instead of one armed, cancelled and re-armed around every read and write of every
// request (two timerfd updates and two more handlers a request).
constexpr auto k_deadline_sweep = std::chrono::seconds(1);

// One reactor and the connections on it. Normally one thread runs it; for a moment two do, when
// the monitor hands it to a spare thread while its runner is in a long call.
struct IoContext {
  // Before `ioc`: the sessions its handlers hold unregister when the context is destroyed.
  std::mutex sessions_mu;
  std::list<std::weak_ptr<Session>> sessions;  // the connections, for the deadline sweep
  asio::io_context ioc;                        // multi-thread safe (the default concurrency hint)
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work{
      ioc.get_executor()};
  asio::steady_timer sweep{ioc};
};

// A thread of the server: running an io_context (`context` set) or a spare.
struct IoWorker {
  IoContext* context = nullptr;  // guarded by Core::roles_mu
  std::condition_variable wake;  // a spare waits here for a context (or the stop)
  // Set by the monitor: another thread runs `context` now; this one becomes a spare after the
  // handler it is in.
  std::atomic<bool> displaced{false};
  // When its current Backend call began (steady clock, ns); 0: in none.
  std::atomic<std::int64_t> call_since{0};
  std::thread thread;
};

thread_local IoWorker* t_io_worker = nullptr;

std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

// Everything a server shares with its sessions.
struct Core {
  std::shared_ptr<detail::Backend> backend;
  HttpServerOptions options;
  std::vector<std::unique_ptr<IoContext>> contexts;  // io_threads of them
  std::size_t next_context = 0;                      // where the next connection goes
  std::optional<tcp::acceptor> acceptor;
  std::unique_ptr<asio::thread_pool> stream_pool;

  // io_threads threads run the contexts; `workers` spares take over from one in a long call.
  std::vector<std::unique_ptr<IoWorker>> io_workers;
  std::mutex roles_mu;
  std::vector<IoWorker*> spares;
  bool threads_stopping = false;  // guarded by roles_mu

  // Watches calls on io threads; asleep while none comes (a call wakes it then, once).
  std::thread monitor;
  std::mutex monitor_mu;
  std::condition_variable monitor_cv;
  std::atomic<bool> monitor_asleep{true};
  unsigned short port = 0;
  std::string host;  // for url()
  bool started = false;
  bool stopped = false;
  std::atomic<bool> stopping{false};
  std::atomic<std::uint64_t> connections{0};
  std::atomic<std::size_t> open_connections{0};  // sessions alive (max_connections caps them)
  // Bytes of unauthenticated request bodies being read or held (unauthenticated_buffer_limit).
  std::atomic<std::size_t> unauthenticated_bytes{0};
  bool reserve_unauthenticated(std::size_t n) {
    const std::size_t limit = options.unauthenticated_buffer_limit;
    std::size_t held = unauthenticated_bytes.load();
    do {
      if (held > limit || n > limit - held) return false;
    } while (!unauthenticated_bytes.compare_exchange_weak(held, held + n));
    return true;
  }
  std::atomic<std::uint64_t> requests{0};
  std::atomic<std::size_t> streams{0};

  std::mutex routes_mu;  // guards `routes`
  std::shared_ptr<const RouteTable> routes;
  std::mutex refresh_mu;  // one routing-table read at a time

  // Asynchronous calls whose answer has not come back: their reads run on the contexts, which
  // stop() keeps running until there are none.
  std::mutex async_mu;
  std::condition_variable async_cv;
  std::size_t async_calls = 0;
  bool async_closed = false;
  bool begin_async() {
    std::lock_guard lock(async_mu);
    if (async_closed) return false;
    ++async_calls;
    return true;
  }
  void end_async() {
    std::lock_guard lock(async_mu);
    if (--async_calls == 0 && async_closed) async_cv.notify_all();
  }

  // Backend calls running (at most options.workers) and those waiting for one of them to end.
  std::mutex calls_mu;
  std::size_t calls_running = 0;
  std::deque<std::function<void()>> calls_waiting;

  // Takes a place for a Backend call (true: the caller runs it now, then calls end_call), or,
  // when all `workers` places are taken, queues what `later()` makes: the call, to run when a
  // place is handed to it.
  template <class Later>
  bool begin_call(Later&& later) {
    std::lock_guard lock(calls_mu);
    if (calls_running < options.workers) {
      ++calls_running;
      return true;
    }
    calls_waiting.emplace_back(std::forward<Later>(later)());
    return false;
  }
  // Gives a call's place to the next waiting call (which posts itself to its connection's
  // strand), or frees it.
  void end_call() {
    std::function<void()> next;
    {
      std::lock_guard lock(calls_mu);
      if (calls_waiting.empty() || stopping) {
        --calls_running;
        return;
      }
      next = std::move(calls_waiting.front());
      calls_waiting.pop_front();
    }
    next();
  }

  // Runs a Backend call on this io thread, where the monitor can see how long it takes.
  Response run_blocking(const Job& job);
  void io_loop(IoWorker& me);
  void monitor_loop();

  void accept();
  // Closes the connections of `context` whose read or write is past its deadline, every
  // k_deadline_sweep.
  void sweep_deadlines(IoContext& context);
  Routed route(const std::shared_ptr<const Request>& req);
  Routed route_kind(const std::shared_ptr<const Request>& req, Kind kind, const Target& t);
  Routed route_logs(const std::shared_ptr<const Request>& req, const std::string& name,
                    const Target& t);
  Routed route_events(const std::shared_ptr<const Request>& req, const Target& t);
  // POST /v1/functions/NAME/invoke: the call and its answer.
  v1::InvokeRequest invoke_request(const Request& req, const std::string& name,
                                   const Target& t) const;
  static Response invoke_response(v1::InvokeResponse out);
  bool authorized(const Request& req) const;
  std::shared_ptr<StreamSlot> try_stream_slot();
  Response streams_busy() const;

  Response gateway(const Request& req);
  // The call a gateway request makes, or (returned) the answer when it makes none (405).
  std::optional<Response> gateway_request(const Request& req, v1::InvokeRequest& call);
  static Response gateway_answer(v1::InvokeResponse out);
  std::shared_ptr<const RouteTable> route_table(bool missed);
  // The path of a gateway target no trigger serves; nullopt when one does or the table cannot
  // be read (the request then takes its usual way, which reports that).
  std::optional<std::string> unrouted_path(std::string_view target);
};

std::shared_ptr<StreamSlot> Core::try_stream_slot() {
  std::size_t n = streams.load();
  do {
    if (n >= options.max_streams) return nullptr;
  } while (!streams.compare_exchange_weak(n, n + 1));
  return std::make_shared<StreamSlot>(streams);
}

Response Core::streams_busy() const {
  auto res = error_response(errc::unavailable,
                            "too many streams and long polls open at once (the limit is " +
                                std::to_string(options.max_streams) + "); try again shortly");
  res.set(http::field::retry_after, "1");
  return res;
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, Core& server, IoContext& context)
      : server_(server), context_(context), stream_(std::move(socket)) {
    ++server_.open_connections;
  }
  ~Session() {
    release_reserved();
    --server_.open_connections;
    if (!registered_) return;
    std::lock_guard lock(context_.sessions_mu);
    context_.sessions.erase(entry_);
  }

  void run() {
    {
      std::lock_guard lock(context_.sessions_mu);
      entry_ = context_.sessions.insert(context_.sessions.end(), weak_from_this());
      registered_ = true;
    }
    asio::dispatch(stream_.get_executor(),
                   beast::bind_front_handler(&Session::read, shared_from_this()));
  }

  // The sweep's verdict, on the session's strand: past the deadline of the read or write in
  // progress, the connection is closed (that operation ends with an error and the session with it).
  void expire_if_late(std::int64_t now_ns) {
    if (late(now_ns)) close();
  }
  // A read or write is in progress and past its deadline.
  bool late(std::int64_t now_ns) const {
    const std::int64_t deadline = deadline_ns_.load(std::memory_order_relaxed);
    return deadline != 0 && deadline <= now_ns;
  }
  asio::any_io_executor executor() { return stream_.get_executor(); }

 private:
  // The read or write about to start (and those after it, until disarm()) must end within `d`.
  template <class Duration>
  void arm(Duration d) {
    deadline_ns_.store(
        steady_ns() + std::chrono::duration_cast<std::chrono::nanoseconds>(d).count(),
        std::memory_order_relaxed);
  }
  // No I/O of ours is waiting (a call runs, a stream polls): nothing to time out.
  void disarm() { deadline_ns_.store(0, std::memory_order_relaxed); }

  void read() {
    parser_.emplace();
    // The limit depends on the path (API or gateway): set once the header is in.
    parser_->body_limit(boost::none);
    parser_->header_limit(static_cast<std::uint32_t>(k_max_header));
    gateway_ = false;
    arm(server_.options.idle_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            beast::bind_front_handler(&Session::on_header, shared_from_this()));
  }

  // Headers first: a request without the token, with a target or head over the limits, or with a
  // body over the limit is answered before any body is read (so an unauthenticated client gets
  // no more buffered than its head), and a client that asks (curl does for large bodies) is told
  // to go on.
  void on_header(beast::error_code ec, std::size_t) {
    if (ec) {
      const std::string_view buffered(static_cast<const char*>(buffer_.data().data()),
                                      buffer_.size());
      const unsigned status = head_error_status(ec, parser_->get().target(), buffered);
      if (status == 414 || status == 431) {
        return refuse(status,
                      status == 414 ? "the request target is over the limit of " +
                                          std::to_string(k_max_target) + " bytes"
                                    : "the request head is over the limit of " +
                                          std::to_string(k_max_header) + " bytes",
                      11);
      }
      return on_read(ec, 0);
    }
    auto verdict = check_head(
        parser_->get(), parser_->content_length(),
        {server_.options.token, server_.options.body_limit, server_.options.gateway_body_limit});
    gateway_ = verdict.gateway;
    limit_ = verdict.body_limit;
    parser_->body_limit(limit_);
    if (verdict.status != 0)
      return refuse(verdict.status, verdict.message, parser_->get().version());
    // The token was checked with the head (401 without it); a server without one is open.
    if (!verdict.gateway && (verdict.authenticated || server_.options.token.empty()) &&
        server_.options.agent_channel && parser_->get().target() == "/v1/agent" &&
        beast::websocket::is_upgrade(parser_->get())) {
      return upgrade_agent();
    }
    // What unauthenticated clients may make the server hold is capped server-wide, decided from
    // the head (a chunked body counts as its limit).
    if (!verdict.authenticated && !parser_->is_done()) {
      // A public body for a path no trigger serves is not read at all.
      if (gateway_) {
        if (auto path = server_.unrouted_path(parser_->get().target())) {
          return refuse(404, "no HTTP trigger serves " + *path, parser_->get().version());
        }
      }
      const auto length = parser_->content_length();
      const std::size_t want = length ? static_cast<std::size_t>(*length) : limit_;
      if (want != 0) {
        if (!server_.reserve_unauthenticated(want)) {
          return refuse(503,
                        "the server holds its limit of " +
                            std::to_string(server_.options.unauthenticated_buffer_limit) +
                            " bytes of unauthenticated request bodies; retry later",
                        parser_->get().version());
        }
        reserved_ = want;
      }
    }
    if (beast::iequals(parser_->get()[http::field::expect], "100-continue")) {
      continue_ = std::make_shared<http::response<http::empty_body>>(http::status::continue_, 11);
      http::async_write(stream_, *continue_,
                        [self = shared_from_this()](beast::error_code ec, std::size_t) {
                          self->continue_.reset();
                          if (ec) return self->close();
                          self->read_body();
                        });
      return;
    }
    read_body();
  }

  // The agent channel: the WebSocket handshake is answered here, the stream handed over.
  void upgrade_agent() {
    disarm();
    ++server_.requests;
    auto ws = std::make_shared<beast::websocket::stream<beast::tcp_stream>>(std::move(stream_));
    beast::get_lowest_layer(*ws).expires_after(std::chrono::seconds(10));
    auto req = std::make_shared<http::request<http::empty_body>>(parser_->get().base());
    ws->async_accept(*req,
                     [ws, req, handler = server_.options.agent_channel](beast::error_code ec) {
                       if (ec) return;
                       beast::get_lowest_layer(*ws).expires_never();
                       handler(std::move(*ws));
                     });
  }

  void read_body() {
    // A small body mostly comes with the header: parse what is buffered here, and read (a round
    // through the io_context) only when more is to come.
    beast::error_code ec;
    while (!parser_->is_done() && buffer_.size() != 0) {
      const std::size_t n = parser_->put(buffer_.data(), ec);
      buffer_.consume(n);
      if (ec == http::error::need_more) {
        ec = {};
        break;
      }
      if (ec || n == 0) break;
    }
    if (ec || parser_->is_done()) return on_read(ec, 0);
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&Session::on_read, shared_from_this()));
  }

  void release_reserved() {
    server_.unauthenticated_bytes -= reserved_;
    reserved_ = 0;
  }

  // Answers a request from its head alone and closes the connection after the answer (the body,
  // if any, is drained unread).
  void refuse(unsigned status, const std::string& message, unsigned version) {
    disarm();
    ++server_.requests;
    keep_alive_ = false;
    const errc code = status == 401   ? errc::unauthenticated
                      : status == 413 ? errc::payload_too_large
                      : status == 503 ? errc::unavailable
                      : status == 404 ? errc::not_found
                                      : errc::invalid_spec;
    Response res = gateway_ && (status == 404 || status == 413 || status == 503)
                       ? gateway_error(code, message)
                       : error_response(code, message);
    res.result(status);
    if (status == 503) res.set(http::field::retry_after, "1");
    write(std::move(res), version);
  }

  void on_read(beast::error_code ec, std::size_t) {
    disarm();
    if (ec == http::error::body_limit) {
      ++server_.requests;
      keep_alive_ = false;
      const std::string message =
          "request body is over the limit of " + std::to_string(limit_) + " bytes";
      write(gateway_ ? gateway_error(errc::payload_too_large, message)
                     : error_response(errc::payload_too_large, message),
            11);
      return;
    }
    if (ec == http::error::end_of_stream || ec == http::error::partial_message) return close();
    if (ec && ec.category() == http::make_error_code(http::error::bad_target).category()) {
      ++server_.requests;
      keep_alive_ = false;
      write(error_response(errc::invalid_spec, "malformed HTTP request: " + ec.message()), 11);
      return;
    }
    if (ec) return close();  // reset, idle timeout, shutting down

    ++server_.requests;
    auto req = std::make_shared<const Request>(parser_->release());
    keep_alive_ = req->keep_alive();
    unsigned version = req->version();
    started_ = std::chrono::steady_clock::now();
    Routed routed;
    try {
      routed = server_.route(req);
    } catch (...) {
      return write(error_from_current(), version, req);
    }
    switch (routed.mode) {
      case Routed::Mode::now:
        return write(run_job(routed.job), version, req);
      case Routed::Mode::worker:
        return run_call(std::move(routed.job), version, req);
      case Routed::Mode::async:
        return run_async(std::move(routed), version, req);
      case Routed::Mode::waiter:
      case Routed::Mode::stream: {
        auto slot = server_.try_stream_slot();
        if (!slot) return write(server_.streams_busy(), version, req);
        if (routed.mode == Routed::Mode::waiter) {
          return run_on(*server_.stream_pool, std::move(routed.job), version, req, std::move(slot));
        }
        return start_stream(std::move(routed), std::move(slot), version, req);
      }
    }
  }

  // A Backend call runs here, on this io thread, while fewer than `workers` run; otherwise it waits
  // its turn and then runs on this connection's strand.
  void run_call(Job job, unsigned version, std::shared_ptr<const Request> req) {
    const bool now = server_.begin_call([&] {
      return [self = shared_from_this(), job = std::move(job), version, req]() {
        asio::post(self->stream_.get_executor(), [self, job, version, req]() mutable {
          self->finish_call(job, version, std::move(req));
        });
      };
    });
    if (now) finish_call(job, version, std::move(req));
  }

  // A call that needs no thread while it runs (a warm invocation): its answer comes back to this
  // strand. A call the Backend cannot start that way runs as a worker call.
  void run_async(Routed routed, unsigned version, std::shared_ptr<const Request> req) {
    if (server_.begin_async()) {
      auto self = shared_from_this();
      Answer answer = [self, version, req](Response res) {
        asio::dispatch(self->stream_.get_executor(),
                       [self, version, req, res = std::move(res)]() mutable {
                         self->server_.end_async();
                         self->write(std::move(res), version, req);
                       });
      };
      bool started = false;
      try {
        started = routed.start(stream_.get_executor(), std::move(answer),
                               std::make_shared<Caller>(weak_from_this(), call_generation_));
      } catch (...) {
        server_.end_async();
        return write(error_from_current(), version, req);
      }
      if (started) return;
      server_.end_async();
    }
    run_call(std::move(routed.job), version, std::move(req));
  }

  // The client of this connection's call, for a call that has to wait before it starts.
  class Caller final : public detail::Caller, public std::enable_shared_from_this<Caller> {
   public:
    Caller(std::weak_ptr<Session> session, std::uint64_t generation)
        : session_(std::move(session)), generation_(generation) {}
    void watch() override {
      auto session = session_.lock();
      if (!session) return hung_up();
      asio::post(session->executor(),
                 [session, generation = generation_, self = shared_from_this()]() mutable {
                   session->watch_caller(generation, std::move(self));
                 });
    }
    void noticed_hang_up() { hung_up(); }

   private:
    std::weak_ptr<Session> session_;
    std::uint64_t generation_;
  };

  // Nothing reads this connection while its call waits: a wait for it to become readable shows
  // a client that hung up (EOF or reset), so the call is not started. Readable with data is a
  // pipelined request, left for after the answer. (A client that half-closes after its request
  // counts as gone, as nginx counts it.) Only a call that waits asks: a warm call costs nothing.
  void watch_caller(std::uint64_t generation, std::shared_ptr<Caller> caller) {
    if (generation != call_generation_ || !caller) return;  // answered already
    watching_ = true;
    stream_.socket().async_wait(
        tcp::socket::wait_read, [self = shared_from_this(), caller = std::move(caller),
                                 generation](beast::error_code ec) mutable {
          if (generation != self->call_generation_) return;  // the answer came first
          self->watching_ = false;
          if (ec) {
            if (ec != asio::error::operation_aborted) caller->noticed_hang_up();
            return;
          }
          char byte = 0;
          const ssize_t n =
              ::recv(self->stream_.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
          if (n > 0) return;
          if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            return self->watch_caller(generation, std::move(caller));
          }
          caller->noticed_hang_up();
        });
  }
  // An answer is about to be written: a watch of the call it answers ends.
  void unwatch_caller() {
    ++call_generation_;
    if (!watching_) return;
    watching_ = false;
    beast::error_code ignored;
    stream_.socket().cancel(ignored);
  }

  // Runs a call that holds one of the `workers` places, then answers.
  void finish_call(const Job& job, unsigned version, std::shared_ptr<const Request> req) {
    Response res = server_.run_blocking(job);
    server_.end_call();
    write(std::move(res), version, std::move(req));
  }

  // Backend calls that wait (long polls) run on `pool` and come back to this connection's strand.
  void run_on(asio::thread_pool& pool, Job job, unsigned version,
              std::shared_ptr<const Request> req, std::shared_ptr<StreamSlot> slot) {
    asio::post(pool, [self = shared_from_this(), job = std::move(job), version, req,
                      slot = std::move(slot)]() mutable {
      Response res = run_job(job);
      slot.reset();
      asio::post(self->stream_.get_executor(),
                 [self, res = std::move(res), version, req]() mutable {
                   self->write(std::move(res), version, req);
                 });
    });
  }

  void write(Response res, unsigned version, const std::shared_ptr<const Request>& req = nullptr) {
    unwatch_caller();
    res.version(version);
    res.set(http::field::server, "blixard");
    res.keep_alive(keep_alive_);
    res.prepare_payload();
    if (req && req->method() == http::verb::head) res.body().clear();  // headers only
    if (auto& log = server_.options.logger) {
      if (res.result_int() >= 500) log->warn("HTTP {}: {}", res.result_int(), res.body());
      if (req) {
        auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                      std::chrono::steady_clock::now() - started_)
                      .count();
        log->debug("{} {} -> {} ({} us)", std::string_view(req->method_string()),
                   std::string_view(req->target()), res.result_int(), us);
      }
    }
    close_after_write_ = res.need_eof();
    head_of(res, head_);
    body_ = std::move(res.body());
    arm(k_write_timeout);
    // Head and body in one gather write. Beast's serializer walks a view over many small buffers
    // and costs a warm call more instructions than the rest of its HTTP work together.
    const std::array<asio::const_buffer, 2> wire{asio::buffer(head_), asio::buffer(body_)};
    asio::async_write(stream_, wire,
                      beast::bind_front_handler(&Session::on_write, shared_from_this()));
  }

  // The status line and fields of `res` (whose payload is prepared: a Content-Length, never
  // chunked) into `out`.
  static void head_of(const Response& res, std::string& out) {
    out.clear();
    out += res.version() == 10 ? "HTTP/1.0 " : "HTTP/1.1 ";
    out += std::to_string(res.result_int());
    out += ' ';
    out += std::string_view(res.reason());
    out += "\r\n";
    for (const auto& field : res) {
      out += std::string_view(field.name_string());
      out += ": ";
      out += std::string_view(field.value());
      out += "\r\n";
    }
    out += "\r\n";
  }

  void on_write(beast::error_code ec, std::size_t) {
    disarm();
    release_reserved();     // the request, body and all, is answered
    body_ = std::string();  // a large answer's memory goes with it
    if (ec) return close();
    if (close_after_write_) return linger();
    read();
  }

  // ---- NDJSON streams: a chunked answer, one chunk per non-empty batch, until the client goes
  // away or the server stops. The connection is closed after the stream.

  void start_stream(Routed routed, std::shared_ptr<StreamSlot> slot, unsigned version,
                    std::shared_ptr<const Request> req) {
    slot_ = std::move(slot);
    poll_ = std::move(routed.poll);
    // The first poll does not wait, so a bad request (an unknown function) is still a plain
    // error answer rather than a stream that ends at once.
    asio::post(*server_.stream_pool, [self = shared_from_this(), after = routed.after, version,
                                      req] {
      std::optional<Response> failed;
      Batch batch;
      try {
        batch = self->poll_(after, milliseconds(0));
        batch.next = std::max(batch.next, after);
      } catch (...) {
        failed = error_from_current();
      }
      asio::post(self->stream_.get_executor(), [self, failed = std::move(failed),
                                                batch = std::move(batch), version, req]() mutable {
        if (failed) {
          self->slot_.reset();
          self->poll_ = nullptr;
          return self->write(std::move(*failed), version, req);
        }
        self->write_stream_head(std::move(batch), version, req);
      });
    });
  }

  void write_stream_head(Batch batch, unsigned version, const std::shared_ptr<const Request>& req) {
    auto head = std::make_shared<http::response<http::empty_body>>(http::status::ok, version);
    head->set(http::field::server, "blixard");
    head->set(http::field::content_type, k_ndjson);
    head->set(http::field::cache_control, "no-cache");
    head->chunked(true);
    head->keep_alive(false);
    if (auto& log = server_.options.logger) {
      log->debug("{} {} -> 200 stream", std::string_view(req->method_string()),
                 std::string_view(req->target()));
    }
    auto serializer = std::make_shared<http::response_serializer<http::empty_body>>(*head);
    arm(k_write_timeout);
    http::async_write_header(stream_, *serializer,
                             [self = shared_from_this(), head, serializer,
                              batch = std::move(batch)](beast::error_code ec, std::size_t) mutable {
                               self->disarm();
                               if (ec) return self->end_stream(false);
                               self->watch_client();
                               self->stream_batch(std::move(batch));
                             });
  }

  // The client sends nothing during a stream; a read that ends means it has gone.
  void watch_client() {
    stream_.socket().async_read_some(
        asio::buffer(client_buf_), [self = shared_from_this()](beast::error_code ec, std::size_t) {
          if (!ec) return self->watch_client();
          self->gone_ = true;
          self->pace_.cancel();
        });
  }

  void stream_batch(Batch batch) {
    after_ = std::max(after_, batch.next);
    if (batch.lines.empty()) return next_poll();
    chunk_ = std::make_shared<std::string>(std::move(batch.lines));
    arm(k_write_timeout);
    asio::async_write(stream_, http::make_chunk(asio::buffer(*chunk_)),
                      [self = shared_from_this()](beast::error_code ec, std::size_t) {
                        self->disarm();
                        self->chunk_.reset();
                        if (ec) return self->end_stream(false);
                        self->next_poll();
                      });
  }

  void next_poll() {
    if (gone_ || server_.stopping) return end_stream(!gone_);
    asio::post(*server_.stream_pool, [self = shared_from_this(), after = after_] {
      std::optional<Batch> batch;
      const auto wait = self->server_.options.stream_poll_wait;
      const auto began = Clock::now();
      if (!self->gone_ && !self->server_.stopping) {
        try {
          batch = self->poll_(after, wait);
        } catch (const std::exception& e) {
          if (auto& log = self->server_.options.logger) log->info("stream ended: {}", e.what());
        }
      }
      const auto took = Clock::now() - began;
      asio::post(self->stream_.get_executor(),
                 [self, batch = std::move(batch), took, wait]() mutable {
                   if (!batch) return self->end_stream(!self->gone_);
                   // A Backend that answers "nothing new" without waiting is paced, not spun on.
                   if (batch->lines.empty() && took < wait / 2) {
                     self->after_ = std::max(self->after_, batch->next);
                     self->pace_.expires_after(wait - took);
                     self->pace_.async_wait([self](beast::error_code) { self->next_poll(); });
                     return;
                   }
                   self->stream_batch(std::move(*batch));
                 });
    });
  }

  // Ends a stream: with the last chunk when the client is still there (server stopping, the
  // Backend gave up), or by closing when it is not.
  void end_stream(bool graceful) {
    if (stream_ended_) return;
    stream_ended_ = true;
    auto finish = [self = shared_from_this()] {
      self->slot_.reset();
      self->poll_ = nullptr;
      self->close();
    };
    if (!graceful) return finish();
    arm(k_drain_timeout);
    asio::async_write(stream_, http::make_chunk_last(),
                      [finish](beast::error_code, std::size_t) { finish(); });
  }

  // Half-close, then read and discard what the client still sends (a body we refused) until it
  // closes, so it reads our answer rather than a connection reset.
  void linger() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    arm(k_drain_timeout);
    drain_buffer_.resize(64 << 10);
    drain();
  }

  void drain() {
    stream_.async_read_some(asio::buffer(drain_buffer_),
                            [self = shared_from_this()](beast::error_code ec, std::size_t n) {
                              self->drained_ += n;
                              if (ec || self->drained_ > k_drain_limit) return self->close();
                              self->drain();
                            });
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }

  Core& server_;
  IoContext& context_;
  std::list<std::weak_ptr<Session>>::iterator entry_;  // in context_.sessions
  bool registered_ = false;
  // When the read or write in progress must have ended (steady clock, ns); 0: none is.
  std::atomic<std::int64_t> deadline_ns_{0};
  beast::tcp_stream stream_;
  // Bounded, so a connection holds at most this much before its head is judged.
  beast::flat_buffer buffer_{k_max_header + (16 << 10)};
  std::optional<http::request_parser<http::string_body>> parser_;
  std::string head_, body_;  // the response being written
  bool close_after_write_ = false;
  // A wait for the client to hang up while its call waits (watch_caller). The generation counts
  // answers written: a watch for an answered call is moot.
  bool watching_ = false;
  std::uint64_t call_generation_ = 0;
  std::shared_ptr<http::response<http::empty_body>> continue_;
  std::vector<char> drain_buffer_;
  std::size_t drained_ = 0;
  bool keep_alive_ = true;
  bool gateway_ = false;      // the request being read is for the trigger gateway
  std::size_t limit_ = 0;     // its body limit
  std::size_t reserved_ = 0;  // of Core::unauthenticated_bytes, for the request being served
  std::chrono::steady_clock::time_point started_;
  // Stream state: strand-only except `gone_`, and `poll_`, which the pool calls while the
  // strand leaves it alone (one poll at a time).
  std::shared_ptr<StreamSlot> slot_;
  Poll poll_;
  std::int64_t after_ = 0;
  std::shared_ptr<std::string> chunk_;
  std::array<char, 512> client_buf_{};
  std::atomic<bool> gone_{false};
  bool stream_ended_ = false;
  asio::steady_timer pace_{stream_.get_executor()};
};

}  // namespace

struct HttpServer::Impl : Core {};

void Core::sweep_deadlines(IoContext& context) {
  context.sweep.expires_after(k_deadline_sweep);
  context.sweep.async_wait([this, &context](beast::error_code ec) {
    if (ec) return;  // stopping
    const std::int64_t now = steady_ns();
    std::vector<std::shared_ptr<Session>> late;
    {
      std::lock_guard lock(context.sessions_mu);
      for (auto& weak : context.sessions) {
        auto session = weak.lock();
        if (session && session->late(now)) late.push_back(std::move(session));
      }
    }
    for (auto& session : late) {
      asio::post(session->executor(), [session, now] { session->expire_if_late(now); });
    }
    sweep_deadlines(context);
  });
}

// Over max_connections: a canned 503 written without waiting (a fresh socket's buffer takes it),
// then closed, with nothing read or buffered for the connection.
static void refuse_connection(tcp::socket socket) {
  static constexpr std::string_view k_busy_body =
      R"({"code":"unavailable","message":"the server is at its connection limit"})";
  static const std::string k_busy =
      "HTTP/1.1 503 Service Unavailable\r\nServer: blixard\r\nContent-Type: application/json\r\n"
      "Retry-After: 1\r\nConnection: close\r\nContent-Length: " +
      std::to_string(k_busy_body.size()) + "\r\n\r\n" + std::string(k_busy_body);
  beast::error_code ignored;
  socket.non_blocking(true, ignored);
  socket.write_some(asio::buffer(k_busy), ignored);
  socket.shutdown(tcp::socket::shutdown_both, ignored);
  socket.close(ignored);
}

void Core::accept() {
  auto& context = *contexts[next_context++ % contexts.size()];
  acceptor->async_accept(asio::make_strand(context.ioc),
                         [this, &context](beast::error_code ec, tcp::socket socket) {
                           if (ec == asio::error::operation_aborted || !acceptor->is_open()) return;
                           if (!ec && open_connections.load() >= options.max_connections) {
                             refuse_connection(std::move(socket));
                           } else if (!ec) {
                             ++connections;
                             // Answers go out as written (small ones must not wait for an ACK of
                             // the last).
                             beast::error_code ignored;
                             socket.set_option(tcp::no_delay(true), ignored);
                             std::make_shared<Session>(std::move(socket), *this, context)->run();
                           } else if (options.logger) {
                             options.logger->warn("http accept failed: {}", ec.message());
                           }
                           accept();
                         });
}

Response Core::run_blocking(const Job& job) {
  IoWorker* me = t_io_worker;
  if (me == nullptr) return run_job(job);
  me->call_since = steady_ns();
  if (monitor_asleep.load()) {
    std::lock_guard lock(monitor_mu);
    monitor_asleep = false;
    monitor_cv.notify_one();
  }
  Response res = run_job(job);
  me->call_since = 0;
  return res;
}

// A thread's life: run a context one handler at a time until displaced, then wait as a spare.
void Core::io_loop(IoWorker& me) {
  t_io_worker = &me;
  block_sigpipe_in_this_thread();  // Backend calls write to handlers' pipes from here
  std::unique_lock lock(roles_mu);
  for (;;) {
    me.wake.wait(lock, [&] { return me.context != nullptr || threads_stopping; });
    if (threads_stopping) return;
    IoContext& context = *me.context;
    lock.unlock();
    bool stopped = false;
    while (!me.displaced) {
      if (context.ioc.run_one() == 0) {
        stopped = true;
        break;
      }
    }
    if (!stopped) {
      // Handlers that ours queued for this thread now wait in the context's queue: the runner
      // that took over may be blocked in epoll_wait, so nudge it from outside a handler.
      asio::post(context.ioc, [] {});
    }
    lock.lock();
    me.context = nullptr;
    me.displaced = false;
    if (stopped) return;
    spares.push_back(&me);
  }
}

void Core::monitor_loop() {
  auto last_call = Clock::now();
  std::unique_lock lock(monitor_mu);
  while (!stopping) {
    if (monitor_asleep) {
      monitor_cv.wait(lock, [&] { return !monitor_asleep || stopping; });
      last_call = Clock::now();
      continue;
    }
    monitor_cv.wait_for(lock, k_call_handoff);
    const auto now = Clock::now();
    const std::int64_t late = steady_ns() - std::chrono::nanoseconds(k_call_handoff).count();
    bool calls = false;
    {
      std::lock_guard roles(roles_mu);
      for (auto& w : io_workers) {
        const std::int64_t since = w->call_since;
        if (since == 0) continue;
        calls = true;
        if (since > late || w->context == nullptr || w->displaced || spares.empty()) continue;
        // Its context goes on with a spare; it joins the spares once its call is over.
        IoWorker* spare = spares.back();
        spares.pop_back();
        spare->context = w->context;
        w->displaced = true;
        spare->wake.notify_one();
      }
    }
    if (calls) {
      last_call = now;
    } else if (now - last_call > k_monitor_linger) {
      monitor_asleep = true;
      // A call that began while this looked is seen now (or saw monitor_asleep and woke it).
      for (auto& w : io_workers) {
        if (w->call_since != 0) monitor_asleep = false;
      }
    }
  }
}

bool Core::authorized(const Request& req) const {
  return bearer_matches(req[http::field::authorization], options.token);
}

namespace {

Routed immediate(Job job) { return {Routed::Mode::now, std::move(job), {}, 0, {}}; }
Routed worker(Job job) { return {Routed::Mode::worker, std::move(job), {}, 0, {}}; }
Routed async_or_worker(AsyncStart start, Job job) {
  return {Routed::Mode::async, std::move(job), {}, 0, std::move(start)};
}
Routed waiter(Job job) { return {Routed::Mode::waiter, std::move(job), {}, 0, {}}; }

Routed not_found(const std::shared_ptr<const Request>& req) {
  return immediate([req] {
    return error_response(errc::not_found, "no such endpoint: " + std::string(req->target()));
  });
}

Routed not_allowed(const std::shared_ptr<const Request>& req, std::string_view allow) {
  return immediate([req, allow] { return method_not_allowed(*req, allow); });
}

// Calls `poll(slice)` with slices of at most `slice_max` until it has something or `wait` is
// over, so a waiting long poll notices the server stopping.
template <class F, class Empty>
auto sliced_poll(F poll, milliseconds wait, milliseconds slice_max,
                 const std::atomic<bool>& stopping, Empty empty) {
  const auto deadline = Clock::now() + wait;
  for (;;) {
    auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    auto m = poll(std::clamp(left, milliseconds(0), slice_max));
    if (!empty(m) || Clock::now() >= deadline || stopping) return m;
  }
}

}  // namespace

Routed Core::route(const std::shared_ptr<const Request>& req) {
  if (!is_api_target(req->target())) {
    return async_or_worker(
        [this, req](const asio::any_io_executor& executor, const Answer& answer, CallerPtr caller) {
          v1::InvokeRequest call;
          try {
            if (auto early = gateway_request(*req, call)) {
              answer(std::move(*early));
              return true;
            }
            return backend->try_invoke_async(
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
        [this, req] { return gateway(*req); });
  }
  const Target t = parse_target(req->target());
  const auto method = req->method();
  const auto& s = t.segments;

  if (s.size() == 1 && s[0] == "healthz") {
    if (method != http::verb::get) return not_allowed(req, "GET");
    return immediate([] {
      Response res{http::status::ok, 11};
      res.set(http::field::content_type, "text/plain");
      res.body() = "ok";
      return res;
    });
  }
  if (!authorized(*req)) {
    return immediate([] {
      return error_response(errc::unauthenticated,
                            "this server needs a token: send \"Authorization: Bearer <token>\"");
    });
  }
  auto backend = this->backend;
  if (s.size() == 1 && s[0] == "metrics") {
    if (method != http::verb::get) return not_allowed(req, "GET");
    return worker([backend] {
      Response res{http::status::ok, 11};
      res.set(http::field::content_type, k_prometheus);
      res.body() = backend->prometheus_metrics();
      return res;
    });
  }
  if (s.size() < 2) return not_found(req);
  const std::string& what = s[1];

  if (s.size() == 2 && what == "info") {
    if (method != http::verb::get) return not_allowed(req, "GET");
    return worker([req, backend] { return message_response(*req, backend->info()); });
  }
  if (s.size() == 2 && what == "apply") {
    if (method != http::verb::post) return not_allowed(req, "POST");
    return worker([req, backend, mode = parse_mode(t)] {
      return message_response(*req, backend->apply(decode_body<v1::ObjectSet>(*req), mode));
    });
  }
  if (s.size() == 2 && what == "nodes") {
    if (method != http::verb::get) return not_allowed(req, "GET");
    return worker([req, backend] { return message_response(*req, backend->list_nodes()); });
  }
  if (what == "nodes" && (s.size() == 3 || s.size() == 4)) {
    const std::string name = s[2];
    if (s.size() == 3) {
      if (method != http::verb::get) return not_allowed(req, "GET");
      return worker(
          [req, backend, name] { return message_response(*req, backend->get_node(name)); });
    }
    using Action = detail::Backend::NodeAction;
    std::optional<Action> action;
    if (s[3] == "cordon") action = Action::cordon;
    if (s[3] == "uncordon") action = Action::uncordon;
    if (s[3] == "drain") action = Action::drain;
    if (!action) return not_found(req);
    if (method != http::verb::post) return not_allowed(req, "POST");
    return worker([req, backend, name, a = *action] {
      return message_response(*req, backend->change_node(name, a));
    });
  }
  if (s.size() == 2 && what == "events") {
    if (method != http::verb::get) return not_allowed(req, "GET");
    return route_events(req, t);
  }
  if (auto kind = parse_kind(what)) return route_kind(req, *kind, t);
  return not_found(req);
}

Routed Core::route_events(const std::shared_ptr<const Request>& req, const Target& t) {
  auto backend = this->backend;
  const std::string kind = t.param("kind") ? *t.param("kind") : "";
  const std::string name = t.param("name") ? *t.param("name") : "";
  const std::int64_t after = parse_after(t, true);
  if (parse_flag(t, "watch")) {
    Routed r;
    r.mode = Routed::Mode::stream;
    r.after = after;
    r.poll = [backend, kind, name](std::int64_t from, milliseconds wait) {
      auto list = backend->events(kind, name, from, wait);
      Batch b;
      for (const auto& e : list.events()) b.lines += to_json(e) + "\n";
      b.next = list.next();
      return b;
    };
    return r;
  }
  const milliseconds wait = parse_wait(t, options.max_wait);
  Job job = [this, req, backend, kind, name, after, wait] {
    // Each slice goes on from where the last ended: after=-1 ("from now") is resolved once.
    std::int64_t from = after;
    auto list = sliced_poll(
        [&](milliseconds w) {
          auto l = backend->events(kind, name, from, w);
          from = l.next();
          return l;
        },
        wait, options.stream_poll_wait, stopping,
        [](const v1::WatchEventList& l) { return l.events_size() == 0; });
    return message_response(*req, list);
  };
  return wait.count() > 0 ? waiter(std::move(job)) : worker(std::move(job));
}

Routed Core::route_logs(const std::shared_ptr<const Request>& req, const std::string& name,
                        const Target& t) {
  auto backend = this->backend;
  const std::int64_t after = parse_after(t);
  if (parse_flag(t, "follow")) {
    Routed r;
    r.mode = Routed::Mode::stream;
    r.after = after;
    r.poll = [backend, name](std::int64_t from, milliseconds wait) {
      auto chunk = backend->function_logs(name, from, wait);
      Batch b;
      for (const auto& line : chunk.lines()) b.lines += to_json(line) + "\n";
      b.next = chunk.next();
      return b;
    };
    return r;
  }
  const milliseconds wait = parse_wait(t, options.max_wait);
  Job job = [this, req, backend, name, after, wait] {
    auto chunk = sliced_poll([&](milliseconds w) { return backend->function_logs(name, after, w); },
                             wait, options.stream_poll_wait, stopping,
                             [](const v1::LogChunk& c) { return c.lines_size() == 0; });
    return message_response(*req, chunk);
  };
  return wait.count() > 0 ? waiter(std::move(job)) : worker(std::move(job));
}

Routed Core::route_kind(const std::shared_ptr<const Request>& req, Kind kind, const Target& t) {
  const auto method = req->method();
  const auto& s = t.segments;
  auto backend = this->backend;

  if (s.size() == 2) {
    if (method == http::verb::get) {
      return worker([req, backend, kind]() -> Response {
        switch (kind) {
          case Kind::function:
            return message_response(*req, backend->list_functions());
          case Kind::vm:
            return message_response(*req, backend->list_vms());
          case Kind::trigger:
            return message_response(*req, backend->list_triggers());
        }
        return error_response(errc::internal, "unknown kind");
      });
    }
    if (method == http::verb::post) {
      // Create = apply(create) of a one-object set, then read back what the store holds.
      return worker([req, backend, kind]() -> Response {
        v1::ObjectSet set;
        switch (kind) {
          case Kind::function: {
            auto& f = *set.add_functions() = decode_body<v1::Function>(*req);
            require_name(f);
            backend->apply(set, detail::ApplyMode::create);
            return message_response(*req, backend->get_function(f.metadata().name()),
                                    http::status::created);
          }
          case Kind::vm: {
            auto& v = *set.add_vms() = decode_body<v1::Vm>(*req);
            require_name(v);
            backend->apply(set, detail::ApplyMode::create);
            return message_response(*req, backend->get_vm(v.metadata().name()),
                                    http::status::created);
          }
          case Kind::trigger: {
            auto& tr = *set.add_triggers() = decode_body<v1::Trigger>(*req);
            require_name(tr);
            backend->apply(set, detail::ApplyMode::create);
            return message_response(*req, backend->get_trigger(tr.metadata().name()),
                                    http::status::created);
          }
        }
        return error_response(errc::internal, "unknown kind");
      });
    }
    return not_allowed(req, "GET, POST");
  }

  const std::string name = s[2];
  if (s.size() == 3) {
    if (method == http::verb::get) {
      return worker([req, backend, kind, name]() -> Response {
        switch (kind) {
          case Kind::function:
            return message_response(*req, backend->get_function(name));
          case Kind::vm:
            return message_response(*req, backend->get_vm(name));
          case Kind::trigger:
            return message_response(*req, backend->get_trigger(name));
        }
        return error_response(errc::internal, "unknown kind");
      });
    }
    if (method == http::verb::delete_) {
      return worker([req, backend, kind, name]() -> Response {
        v1::ObjectSet set;
        switch (kind) {
          case Kind::function:
            set.add_functions()->mutable_metadata()->set_name(name);
            break;
          case Kind::vm:
            set.add_vms()->mutable_metadata()->set_name(name);
            break;
          case Kind::trigger:
            set.add_triggers()->mutable_metadata()->set_name(name);
            break;
        }
        return message_response(*req, backend->apply(set, detail::ApplyMode::remove));
      });
    }
    return not_allowed(req, "GET, DELETE");
  }

  if (s.size() == 4 && kind == Kind::function) {
    if (s[3] == "invoke") {
      if (method != http::verb::post) return not_allowed(req, "POST");
      auto call = std::make_shared<v1::InvokeRequest>(invoke_request(*req, name, t));
      return async_or_worker(
          [backend, call](const asio::any_io_executor& executor, const Answer& answer,
                          CallerPtr caller) {
            return backend->try_invoke_async(
                *call, executor,
                [answer](const std::exception_ptr& error, v1::InvokeResponse out) {
                  if (!error) return answer(invoke_response(std::move(out)));
                  try {
                    std::rethrow_exception(error);
                  } catch (...) {
                    answer(error_from_current());
                  }
                },
                std::move(caller));
          },
          [backend, call] { return invoke_response(backend->invoke(*call)); });
    }
    if (s[3] == "metrics") {
      if (method != http::verb::get) return not_allowed(req, "GET");
      return worker(
          [req, backend, name] { return message_response(*req, backend->function_metrics(name)); });
    }
    if (s[3] == "logs") {
      if (method != http::verb::get) return not_allowed(req, "GET");
      return route_logs(req, name, t);
    }
  }
  return not_found(req);
}

v1::InvokeRequest Core::invoke_request(const Request& req, const std::string& name,
                                       const Target& t) const {
  v1::InvokeRequest call;
  call.set_function(name);
  std::string_view body = req.body();
  if (body.find_first_not_of(" \t\r\n") == body.npos) {
    call.set_payload("null");  // no body: the handler gets a JSON null
  } else {
    // One linear pass (protobuf's Value parser took time quadratic in the nesting).
    if (auto check = check_json_text(body); !check.ok()) {
      throw Error(errc::invalid_spec, json_problem(check, "the invocation payload"), "payload");
    }
    call.set_payload(std::string(body));
  }
  call.set_request_id(std::string(req["X-Blixard-Request-Id"]));
  if (const std::string* timeout = t.param("timeout")) {
    *call.mutable_timeout() = parse_duration(*timeout);
  }
  return call;
}

Response Core::invoke_response(v1::InvokeResponse out) {
  if (out.has_error() && !out.error().code().empty()) return error_response(out.error());
  Response res{http::status::ok, 11};
  res.set(http::field::content_type, k_json);
  res.set("X-Blixard-Request-Id", out.request_id());
  res.set("X-Blixard-Cold-Start", out.cold_start() ? "true" : "false");
  res.set("X-Blixard-Node", out.node());
  const auto& d = out.duration();
  res.set("X-Blixard-Duration-Us", std::to_string(d.seconds() * 1'000'000 + d.nanos() / 1000));
  res.body() = std::move(*out.mutable_result());
  return res;
}

// ---- Gateway ------------------------------------------------------------------------------

// The routing table, re-read when older than `route_refresh` (a quarter of it after a miss, so
// a trigger just created routes soon). One thread reads it; the others wait and share the result.
std::shared_ptr<const RouteTable> Core::route_table(bool missed) {
  const auto max_age = missed ? options.route_refresh / 4 : options.route_refresh;
  const auto now = Clock::now();
  {
    std::lock_guard lock(routes_mu);
    if (routes && now - routes->fetched < max_age) return routes;
  }
  std::lock_guard refresh(refresh_mu);
  {
    std::lock_guard lock(routes_mu);
    if (routes && routes->fetched >= now) return routes;  // read afresh while this one waited
  }
  auto table = std::make_shared<RouteTable>();
  table->fetched = Clock::now();
  v1::TriggerList list;
  try {
    list = backend->list_triggers();
  } catch (const std::exception& e) {
    std::lock_guard lock(routes_mu);
    if (!routes) throw;
    if (options.logger) options.logger->warn("gateway routes not refreshed: {}", e.what());
    return routes;  // a stale table beats none
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
  std::lock_guard lock(routes_mu);
  routes = table;
  return table;
}

std::optional<std::string> Core::unrouted_path(std::string_view target) {
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

Response Core::gateway(const Request& req) {
  try {
    v1::InvokeRequest call;
    if (auto early = gateway_request(req, call)) return std::move(*early);
    return gateway_answer(backend->invoke(call));
  } catch (...) {
    return gateway_failure(std::current_exception());
  }
}

Response Core::gateway_answer(v1::InvokeResponse out) {
  try {
    if (out.has_error() && !out.error().code().empty()) throw Error(out.error());
    return gateway_result(std::move(out));
  } catch (...) {
    return gateway_failure(std::current_exception());
  }
}

std::optional<Response> Core::gateway_request(const Request& req, v1::InvokeRequest& call) {
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

HttpServer::HttpServer(std::shared_ptr<detail::Backend> backend, HttpServerOptions options)
    : impl_(std::make_unique<Impl>()) {
  if (!backend) throw Error(errc::internal, "HttpServer needs a backend");
  impl_->backend = std::move(backend);
  impl_->options = std::move(options);
  if (impl_->options.workers == 0) impl_->options.workers = 1;
  if (impl_->options.io_threads == 0) impl_->options.io_threads = 1;
  if (impl_->options.max_streams == 0) impl_->options.max_streams = 1;
  if (impl_->options.stream_poll_wait <= std::chrono::milliseconds(0)) {
    impl_->options.stream_poll_wait = std::chrono::milliseconds(1000);
  }
}

HttpServer::~HttpServer() { stop(); }

void HttpServer::start() {
  auto& im = *impl_;
  if (im.started) throw Error(errc::internal, "HttpServer::start called twice");
  beast::error_code ec;
  auto address = asio::ip::make_address(im.options.address, ec);
  if (ec) {
    throw Error(errc::invalid_spec, "not an IP address: \"" + im.options.address + "\"", "address");
  }
  const std::string where =
      (address.is_v6() ? "[" + im.options.address + "]" : im.options.address) + ":" +
      std::to_string(im.options.port);
  for (unsigned i = 0; i < im.options.io_threads; ++i) {
    im.contexts.push_back(std::make_unique<IoContext>());
  }
  im.acceptor.emplace(asio::make_strand(im.contexts.front()->ioc));
  tcp::endpoint endpoint(address, im.options.port);
  auto fail = [&](const char* what) {
    im.acceptor.reset();
    im.contexts.clear();
    return Error(errc::unavailable,
                 "cannot listen on " + where + ": " + what + ": " + ec.message());
  };
  if (im.acceptor->open(endpoint.protocol(), ec)) throw fail("open");
  if (im.acceptor->set_option(asio::socket_base::reuse_address(true), ec)) throw fail("option");
  if (im.acceptor->bind(endpoint, ec)) throw fail("bind");
  if (im.acceptor->listen(asio::socket_base::max_listen_connections, ec)) throw fail("listen");
  im.port = im.acceptor->local_endpoint().port();
  im.host = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
  im.stream_pool = std::make_unique<asio::thread_pool>(im.options.max_streams);
  im.accept();
  for (auto& context : im.contexts) im.sweep_deadlines(*context);
  // One thread per context, and `workers` spares: at most `workers` calls block at once, so a
  // spare is always there to take a context over.
  const std::size_t threads = im.options.io_threads + im.options.workers;
  {
    std::lock_guard lock(im.roles_mu);
    for (std::size_t i = 0; i < threads; ++i) {
      auto& w = *im.io_workers.emplace_back(std::make_unique<IoWorker>());
      if (i < im.contexts.size()) {
        w.context = im.contexts[i].get();
      } else {
        im.spares.push_back(&w);
      }
    }
  }
  for (auto& w : im.io_workers) {
    w->thread = std::thread([&im, &w = *w] { im.io_loop(w); });
  }
  im.monitor = std::thread([&im] { im.monitor_loop(); });
  im.started = true;
  if (im.options.logger) im.options.logger->info("HTTP API listening on {}", url());
}

void HttpServer::stop() {
  auto& im = *impl_;
  if (!im.started || im.stopped) return;
  im.stopped = true;
  im.stopping = true;  // streams and long polls end after their current Backend poll slice
  {
    // Asynchronous calls read their answers on the contexts: let them end first (a timeout or
    // the Backend's shutdown ends each), and start no more.
    std::unique_lock lock(im.async_mu);
    im.async_closed = true;
    im.async_cv.wait(lock, [&] { return im.async_calls == 0; });
  }
  // Stop the io threads, which waits for the Backend calls running on them (no new call starts:
  // the contexts are stopped, waiting ones are dropped below); the answers of calls that end
  // meanwhile are written if the socket takes them at once, or dropped with the contexts.
  for (auto& context : im.contexts) {
    context->work.reset();
    context->ioc.stop();
  }
  {
    std::lock_guard lock(im.roles_mu);
    im.threads_stopping = true;
    for (auto& w : im.io_workers) w->wake.notify_one();
  }
  {
    std::lock_guard lock(im.monitor_mu);
    im.monitor_cv.notify_one();
  }
  im.monitor.join();
  for (auto& w : im.io_workers) w->thread.join();
  im.io_workers.clear();
  im.spares.clear();
  im.stream_pool->stop();
  im.stream_pool->join();
  im.stream_pool.reset();
  std::deque<std::function<void()>> waiting;
  {
    std::lock_guard lock(im.calls_mu);
    waiting.swap(im.calls_waiting);
  }
  waiting.clear();  // drops waiting calls (and their sessions) while the contexts still exist
  beast::error_code ignored;
  im.acceptor->close(ignored);
  im.acceptor.reset();
  im.contexts.clear();  // destroys the remaining sessions, closing their sockets
}

unsigned short HttpServer::port() const { return impl_->port; }

std::string HttpServer::url() const {
  return "http://" + impl_->host + ":" + std::to_string(impl_->port);
}

HttpServer::Stats HttpServer::stats() const {
  return {impl_->connections.load(), impl_->requests.load(), impl_->streams.load()};
}

}  // namespace blixard::api
