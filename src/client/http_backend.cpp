// The HTTP client half of the /v1 API: each call is one request on a pooled keep-alive
// connection. Calls block; each connection runs its own io_context in the calling thread so
// Beast's timeouts apply.
#include "client/http_backend.hpp"

#include <algorithm>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <charconv>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "blixard/error.hpp"
#include "common/json.hpp"

namespace blixard::client {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;
using Clock = std::chrono::steady_clock;
// Retries of an idempotent request that found no server: 50, 100, 200, 400 ms apart.
constexpr int k_retries = 4;
constexpr std::chrono::milliseconds k_first_retry{50};

constexpr std::string_view k_json = "application/json";
constexpr std::string_view k_protobuf = "application/x-protobuf";
// An invoke waits for the handler's timeout (a long poll for its wait) plus this, so the
// server's answer wins.
constexpr auto k_invoke_margin = std::chrono::seconds(10);

struct Url {
  std::string text;  // as given, for messages
  std::string host;  // without brackets
  std::string port;
  std::string prefix;  // path before /v1, no trailing slash
  std::string host_header;
};

Url parse_url(const std::string& url) {
  constexpr std::string_view scheme = "http://";
  auto bad = [&](const std::string& why) {
    return Error(errc::invalid_spec, "\"" + url + "\" " + why, "url");
  };
  if (url.rfind(scheme, 0) != 0) {
    throw bad(url.find("://") == url.npos ? "is not a URL (use http://host:port)"
                                          : "has an unsupported scheme (use http://host:port)");
  }
  Url u;
  u.text = url;
  std::string_view rest = std::string_view(url).substr(scheme.size());
  auto slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  if (slash != rest.npos) {
    u.prefix = std::string(rest.substr(slash));
    while (!u.prefix.empty() && u.prefix.back() == '/') u.prefix.pop_back();
  }
  std::string_view port;
  if (!authority.empty() && authority.front() == '[') {
    auto close = authority.find(']');
    if (close == authority.npos) throw bad("has an unclosed '['");
    u.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') throw bad("has junk after the address");
      port = after.substr(1);
    }
  } else {
    auto colon = authority.rfind(':');
    u.host = std::string(authority.substr(0, colon));
    if (colon != authority.npos) port = authority.substr(colon + 1);
  }
  if (u.host.empty()) throw bad("names no host");
  if (port.empty()) port = "80";
  unsigned value = 0;
  auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || p != port.data() + port.size() || value == 0 || value > 65535) {
    throw bad("has a bad port");
  }
  u.port = std::string(port);
  u.host_header =
      (u.host.find(':') != std::string::npos ? "[" + u.host + "]" : u.host) + ":" + u.port;
  return u;
}

std::string percent_encode(std::string_view s) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    }
  }
  return out;
}

std::string format_duration(std::chrono::milliseconds d) {
  auto ms = d.count();
  return ms % 1000 == 0 ? std::to_string(ms / 1000) + "s" : std::to_string(ms) + "ms";
}

// The errc a bare HTTP status stands for, when the body is not a Status (a proxy's page).
errc errc_from_http(unsigned status) {
  switch (status) {
    case 400:
      return errc::invalid_spec;
    case 401:
      return errc::unauthenticated;
    case 403:
      return errc::permission_denied;
    case 404:
      return errc::not_found;
    case 409:
      return errc::conflict;
    case 413:
      return errc::payload_too_large;
    case 429:
      return errc::throttled;
    case 502:
      return errc::handler_failed;
    case 503:
      return errc::unavailable;
    case 504:
      return errc::timeout;
    default:
      return errc::internal;
  }
}

bool is_protobuf(const Response& res) {
  return res[http::field::content_type].find(k_protobuf) != std::string_view::npos;
}

// One keep-alive connection with its own io_context, run by whichever thread holds it.
struct Connection {
  asio::io_context ioc{1};
  std::optional<beast::tcp_stream> stream;
  beast::flat_buffer buffer;

  bool is_open() const { return stream && stream->socket().is_open(); }

  void close() {
    if (stream) {
      beast::error_code ignored;
      stream->socket().shutdown(tcp::socket::shutdown_both, ignored);
      stream->close();
    }
    stream.reset();
    buffer.clear();
  }

  // Runs the started operation to completion (or until the stream's deadline cancels it).
  void run() {
    ioc.restart();
    ioc.run();
  }

  beast::error_code connect(const Url& url, Clock::time_point deadline) {
    close();
    beast::error_code result;
    // Synchronous: async_resolve would start a resolver thread per connection.
    tcp::resolver resolver(ioc);
    auto endpoints = resolver.resolve(url.host, url.port, result);
    if (result) return result;
    stream.emplace(ioc);
    stream->expires_at(deadline);
    stream->async_connect(endpoints,
                          [&](beast::error_code ec, const tcp::endpoint&) { result = ec; });
    run();
    if (!result) stream->socket().set_option(tcp::no_delay(true), result);
    if (result) close();
    return result;
  }

  beast::error_code exchange(Request& req, Response& res, Clock::time_point deadline) {
    beast::error_code result;
    stream->expires_at(deadline);
    http::async_write(*stream, req, [&](beast::error_code ec, std::size_t) { result = ec; });
    run();
    if (result) return result;
    http::response_parser<http::string_body> parser;
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    if (req.method() == http::verb::head) parser.skip(true);  // its Content-Length is GET's
    http::async_read(*stream, buffer, parser,
                     [&](beast::error_code ec, std::size_t) { result = ec; });
    run();
    if (result) return result;
    res = parser.release();
    return result;
  }
};

class HttpBackend final : public detail::Backend {
 public:
  HttpBackend(Url url, HttpBackendOptions options)
      : url_(std::move(url)), options_(std::move(options)) {}

  v1::ApplyResult apply(const v1::ObjectSet& set, const detail::ApplyOptions& options) override {
    const char* name = options.mode == detail::ApplyMode::create   ? "create"
                       : options.mode == detail::ApplyMode::remove ? "remove"
                                                                   : "apply";
    std::string target = std::string("/v1/apply?mode=") + name;
    if (options.dry_run) target += "&dryRun=1";
    if (options.prune) target += "&prune=1";
    if (!options.stack.empty()) target += "&stack=" + percent_encode(options.stack);
    return call<v1::ApplyResult>(http::verb::post, target, &set);
  }

  v1::Function get_function(const std::string& name) override {
    return call<v1::Function>(http::verb::get, "/v1/functions/" + percent_encode(name));
  }
  v1::Vm get_vm(const std::string& name) override {
    return call<v1::Vm>(http::verb::get, "/v1/vms/" + percent_encode(name));
  }
  v1::Trigger get_trigger(const std::string& name) override {
    return call<v1::Trigger>(http::verb::get, "/v1/triggers/" + percent_encode(name));
  }
  v1::FunctionList list_functions() override {
    return call<v1::FunctionList>(http::verb::get, "/v1/functions");
  }
  v1::VmList list_vms() override { return call<v1::VmList>(http::verb::get, "/v1/vms"); }
  v1::TriggerList list_triggers() override {
    return call<v1::TriggerList>(http::verb::get, "/v1/triggers");
  }
  v1::NodeList list_nodes() override { return call<v1::NodeList>(http::verb::get, "/v1/nodes"); }
  v1::Node get_node(const std::string& name) override {
    return call<v1::Node>(http::verb::get, "/v1/nodes/" + percent_encode(name));
  }
  v1::Node change_node(const std::string& name, NodeAction action) override {
    const char* verb = action == NodeAction::cordon     ? "cordon"
                       : action == NodeAction::uncordon ? "uncordon"
                                                        : "drain";
    return call<v1::Node>(http::verb::post, "/v1/nodes/" + percent_encode(name) + "/" + verb);
  }
  v1::ServerInfo info() override { return call<v1::ServerInfo>(http::verb::get, "/v1/info"); }

  v1::StoragePool get_storage_pool(const std::string& name) override {
    return call<v1::StoragePool>(http::verb::get, "/v1/storagepools/" + percent_encode(name));
  }
  v1::StoragePoolList list_storage_pools() override {
    return call<v1::StoragePoolList>(http::verb::get, "/v1/storagepools");
  }
  v1::Network get_network(const std::string& name) override {
    return call<v1::Network>(http::verb::get, "/v1/networks/" + percent_encode(name));
  }
  v1::NetworkList list_networks() override {
    return call<v1::NetworkList>(http::verb::get, "/v1/networks");
  }
  v1::VolumeList list_volumes() override {
    return call<v1::VolumeList>(http::verb::get, "/v1/volumes");
  }
  v1::Volume delete_volume(const std::string& name) override {
    return call<v1::Volume>(http::verb::delete_, "/v1/volumes/" + percent_encode(name));
  }

  v1::TokenCreated create_token(const v1::TokenRequest& request) override {
    return call<v1::TokenCreated>(http::verb::post, "/v1/tokens", &request);
  }
  v1::TokenList list_tokens() override {
    return call<v1::TokenList>(http::verb::get, "/v1/tokens");
  }
  v1::Token revoke_token(const std::string& name_or_id) override {
    return call<v1::Token>(http::verb::delete_, "/v1/tokens/" + percent_encode(name_or_id));
  }

  bool has_blob(const std::string& digest) override {
    Request req = make_request(http::verb::head, "/v1/blobs/" + percent_encode(digest));
    try {
      send(req, options_.timeout);
      return true;
    } catch (const Error& e) {
      if (e.code() == errc::not_found) return false;
      throw;
    }
  }
  v1::Blob put_blob(const std::string& digest, const std::string& bytes) override {
    Request req = make_request(http::verb::put, "/v1/blobs/" + percent_encode(digest));
    req.set(http::field::content_type, "application/octet-stream");
    req.set(http::field::accept, k_protobuf);
    req.body() = bytes;
    Response res = send(req, options_.timeout);
    v1::Blob blob;
    if (!is_protobuf(res) || !blob.ParseFromString(res.body())) {
      throw Error(errc::internal, "cannot read the answer of " + url_.text + ": not a Blob");
    }
    return blob;
  }
  std::optional<std::string> get_blob(const std::string& digest) override {
    Request req = make_request(http::verb::get, "/v1/blobs/" + percent_encode(digest));
    req.set(http::field::accept, "application/octet-stream");
    try {
      return std::move(send(req, options_.timeout).body());
    } catch (const Error& e) {
      if (e.code() == errc::not_found) return std::nullopt;
      throw;
    }
  }

  v1::FunctionMetrics function_metrics(const std::string& name) override {
    return call<v1::FunctionMetrics>(http::verb::get,
                                     "/v1/functions/" + percent_encode(name) + "/metrics");
  }

  std::string prometheus_metrics() override {
    Request req = make_request(http::verb::get, "/metrics");
    req.set(http::field::accept, "text/plain");
    return std::move(send(req, options_.timeout).body());
  }

  v1::LogChunk function_logs(const std::string& name, std::int64_t after,
                             std::chrono::milliseconds wait) override {
    return call<v1::LogChunk>(http::verb::get,
                              "/v1/functions/" + percent_encode(name) +
                                  "/logs?after=" + std::to_string(after) + wait_param(wait),
                              nullptr, long_poll_timeout(wait));
  }

  v1::LogChunk vm_logs(const std::string& name, std::int64_t after,
                       std::chrono::milliseconds wait) override {
    return call<v1::LogChunk>(http::verb::get,
                              "/v1/vms/" + percent_encode(name) +
                                  "/logs?after=" + std::to_string(after) + wait_param(wait),
                              nullptr, long_poll_timeout(wait));
  }

  v1::WatchEventList events(const std::string& kind, const std::string& name, std::int64_t after,
                            std::chrono::milliseconds wait) override {
    std::string target = "/v1/events?after=" + std::to_string(after) + wait_param(wait);
    if (!kind.empty()) target += "&kind=" + percent_encode(kind);
    if (!name.empty()) target += "&name=" + percent_encode(name);
    return call<v1::WatchEventList>(http::verb::get, target, nullptr, long_poll_timeout(wait));
  }

  v1::WatchEventList changes(const std::string& kind, const std::string& name,
                             std::int64_t from_revision, std::chrono::milliseconds wait) override {
    std::string target = "/v1/events?from=" + std::to_string(from_revision) + wait_param(wait);
    if (!kind.empty()) target += "&kind=" + percent_encode(kind);
    if (!name.empty()) target += "&name=" + percent_encode(name);
    return call<v1::WatchEventList>(http::verb::get, target, nullptr, long_poll_timeout(wait));
  }

  v1::Queue get_queue(const std::string& name) override {
    return call<v1::Queue>(http::verb::get, "/v1/queues/" + percent_encode(name));
  }
  v1::QueueList list_queues() override {
    return call<v1::QueueList>(http::verb::get, "/v1/queues");
  }
  v1::SendResult send_messages(const std::string& queue, const v1::SendRequest& request) override {
    return call<v1::SendResult>(http::verb::post,
                                "/v1/queues/" + percent_encode(queue) + "/messages", &request);
  }
  v1::QueueMessageList receive_messages(const std::string& queue,
                                        const v1::ReceiveRequest& request) override {
    const auto wait = std::chrono::milliseconds(request.wait().seconds() * 1000 +
                                                request.wait().nanos() / 1000000);
    return call<v1::QueueMessageList>(http::verb::post,
                                      "/v1/queues/" + percent_encode(queue) + "/receive", &request,
                                      long_poll_timeout(wait));
  }
  v1::QueueMessageList peek_messages(const std::string& queue, std::uint32_t max) override {
    return call<v1::QueueMessageList>(http::verb::get, "/v1/queues/" + percent_encode(queue) +
                                                           "/messages?max=" + std::to_string(max));
  }
  v1::QueueCount acknowledge_messages(const std::string& queue,
                                      const v1::AckRequest& request) override {
    return call<v1::QueueCount>(http::verb::post, "/v1/queues/" + percent_encode(queue) + "/ack",
                                &request);
  }
  v1::QueueCount purge_queue(const std::string& queue) override {
    return call<v1::QueueCount>(http::verb::post, "/v1/queues/" + percent_encode(queue) + "/purge");
  }
  v1::PublishResult publish_event(const v1::PublishRequest& request) override {
    return call<v1::PublishResult>(http::verb::post, "/v1/events", &request);
  }
  v1::Invocation submit_invocation(const v1::InvokeRequest& request) override {
    Request req = make_request(
        http::verb::post, "/v1/functions/" + percent_encode(request.function()) + "/invocations");
    req.set(http::field::content_type, k_json);
    req.set(http::field::accept, k_json);
    req.body() = request.payload().empty() ? "null" : request.payload();
    Response res = send(req, options_.timeout);
    v1::Invocation out;
    try {
      from_json(res.body(), out, true);
    } catch (const Error& e) {
      throw Error(errc::internal, "cannot read the answer of " + url_.text + ": " + e.message());
    }
    return out;
  }
  v1::Invocation get_invocation(const std::string& id) override {
    return call<v1::Invocation>(http::verb::get, "/v1/invocations/" + percent_encode(id));
  }

  v1::InvokeResponse invoke(const v1::InvokeRequest& request) override {
    std::string target = "/v1/functions/" + percent_encode(request.function()) + "/invoke";
    auto timeout = options_.timeout;
    if (request.has_timeout()) {
      auto handler = std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::seconds(request.timeout().seconds()) +
          std::chrono::nanoseconds(request.timeout().nanos()));
      handler = std::max(handler, std::chrono::milliseconds(1));
      target += "?timeout=" + format_duration(handler);
      timeout = std::max(timeout, handler + k_invoke_margin);
    }
    Request req = make_request(http::verb::post, target);
    req.set(http::field::content_type, k_json);
    req.set(http::field::accept, k_json);
    if (!request.request_id().empty()) req.set("X-Blixard-Request-Id", request.request_id());
    req.body() = request.payload().empty() ? "null" : request.payload();
    Response res = send(req, timeout);

    v1::InvokeResponse out;
    out.set_request_id(std::string(res["X-Blixard-Request-Id"]));
    out.set_cold_start(res["X-Blixard-Cold-Start"] == "true");
    out.set_node(std::string(res["X-Blixard-Node"]));
    std::string_view us = res["X-Blixard-Duration-Us"];
    std::int64_t value = 0;
    std::from_chars(us.data(), us.data() + us.size(), value);
    out.mutable_duration()->set_seconds(value / 1'000'000);
    out.mutable_duration()->set_nanos(static_cast<std::int32_t>(value % 1'000'000) * 1000);
    out.set_result(std::move(res.body()));
    return out;
  }

 private:
  Request make_request(http::verb method, const std::string& target) const {
    Request req{method, url_.prefix + target, 11};
    req.set(http::field::host, url_.host_header);
    req.set(http::field::user_agent, "blixard-client");
    if (!options_.token.empty()) req.set(http::field::authorization, "Bearer " + options_.token);
    req.keep_alive(true);
    return req;
  }

  static std::string wait_param(std::chrono::milliseconds wait) {
    return wait.count() > 0 ? "&wait=" + format_duration(wait) : "";
  }

  // A long poll may take all of `wait`: the request waits that long plus a margin.
  std::chrono::milliseconds long_poll_timeout(std::chrono::milliseconds wait) const {
    return std::max(options_.timeout, wait + k_invoke_margin);
  }

  template <class M>
  M call(http::verb method, const std::string& target,
         const google::protobuf::Message* body = nullptr,
         std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
    Request req = make_request(method, target);
    const std::string_view type = options_.protobuf ? k_protobuf : k_json;
    req.set(http::field::accept, type);
    if (body != nullptr) {
      req.set(http::field::content_type, type);
      req.body() = options_.protobuf ? body->SerializeAsString() : to_json(*body);
    }
    Response res = send(req, timeout.value_or(options_.timeout));
    M out;
    if (is_protobuf(res)) {
      if (!out.ParseFromString(res.body())) {
        throw Error(errc::internal, "cannot read the answer of " + url_.text + ": not a valid " +
                                        out.GetTypeName());
      }
    } else {
      try {
        from_json(res.body(), out, true);
      } catch (const Error& e) {
        throw Error(errc::internal, "cannot read the answer of " + url_.text + ": " + e.message());
      }
    }
    return out;
  }

  // Sends on a pooled connection; a reused connection the server has closed meanwhile is
  // reopened once. An idempotent request (GET, HEAD, PUT, DELETE) is also retried, with backoff
  // and within its deadline, when the server cannot be reached or drops the connection (a
  // server restarting); a POST never is, past that stale connection: it may have taken effect.
  // Non-2xx answers become the Error they carry.
  Response send(Request& req, std::chrono::milliseconds timeout) {
    req.prepare_payload();
    const auto deadline = Clock::now() + timeout;
    const auto method = req.method();
    const bool idempotent = method == http::verb::get || method == http::verb::head ||
                            method == http::verb::put || method == http::verb::delete_;
    std::unique_ptr<Connection> conn = acquire();
    Response res;
    auto backoff = k_first_retry;
    for (int attempt = 0;; ++attempt) {
      const bool reused = conn->is_open();
      beast::error_code ec;
      if (!reused) ec = conn->connect(url_, deadline);
      if (!ec) ec = conn->exchange(req, res, deadline);
      if (!ec) break;
      conn->close();
      const bool dropped = ec == http::error::end_of_stream || ec == asio::error::eof ||
                           ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
                           ec == asio::error::connection_aborted;
      if (reused && dropped && attempt == 0) continue;
      const bool unreachable = dropped || ec == asio::error::connection_refused;
      if (!idempotent || !unreachable || attempt >= k_retries ||
          Clock::now() + backoff >= deadline) {
        throw transport_error(ec, timeout);
      }
      std::this_thread::sleep_for(backoff);
      backoff *= 2;
      res = {};
    }
    if (res.need_eof()) conn->close();
    release(std::move(conn));
    if (res.result_int() / 100 != 2) throw error_from(res);
    return res;
  }

  Error transport_error(const beast::error_code& ec, std::chrono::milliseconds timeout) const {
    if (ec == beast::error::timeout) {
      return Error(errc::timeout,
                   "no answer from " + url_.text + " within " + format_duration(timeout));
    }
    return Error(errc::unavailable, "cannot reach " + url_.text + ": " + ec.message());
  }

  Error error_from(const Response& res) const {
    v1::Status status;
    bool parsed = false;
    if (is_protobuf(res)) {
      parsed = status.ParseFromString(res.body());
    } else if (res[http::field::content_type].find(k_json) != std::string_view::npos) {
      try {
        from_json(res.body(), status, true);
        parsed = true;
      } catch (const Error&) {
      }
    }
    if (parsed && !status.code().empty()) return Error(std::move(status));
    std::string body = res.body().substr(0, 200);
    return Error(errc_from_http(res.result_int()), "HTTP " + std::to_string(res.result_int()) +
                                                       " from " + url_.text +
                                                       (body.empty() ? "" : ": " + body));
  }

  std::unique_ptr<Connection> acquire() {
    std::lock_guard lock(mutex_);
    if (idle_.empty()) return std::make_unique<Connection>();
    auto conn = std::move(idle_.back());
    idle_.pop_back();
    return conn;
  }

  void release(std::unique_ptr<Connection> conn) {
    if (!conn->is_open()) return;
    std::lock_guard lock(mutex_);
    if (idle_.size() < options_.max_idle_connections) idle_.push_back(std::move(conn));
  }

  const Url url_;
  const HttpBackendOptions options_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<Connection>> idle_;  // most recently used last
};

}  // namespace

std::shared_ptr<detail::Backend> make_http_backend(const std::string& url,
                                                   HttpBackendOptions options) {
  return std::make_shared<HttpBackend>(parse_url(url), std::move(options));
}

std::shared_ptr<detail::Backend> make_http_backend(const std::string& url, const std::string& token,
                                                   std::chrono::milliseconds timeout) {
  HttpBackendOptions options;
  options.token = token;
  options.timeout = timeout;
  return make_http_backend(url, std::move(options));
}

}  // namespace blixard::client
