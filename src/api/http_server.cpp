// The /v1 HTTP API over Beast: one session per connection (keep-alive, a strand each), Backend
// calls on a thread pool with the response posted back to the session's strand.
#include "api/http_server.hpp"

#include <google/protobuf/struct.pb.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <charconv>
#include <functional>
#include <optional>
#include <thread>
#include <vector>

#include "blixard/error.hpp"
#include "common/json.hpp"

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

bool wants_protobuf(std::string_view header) { return header.find(k_protobuf) != header.npos; }

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

Target parse_target(std::string_view target) {
  Target t;
  auto q = target.find('?');
  std::string_view path = target.substr(0, q);
  if (q != target.npos) {
    std::string_view query = target.substr(q + 1);
    while (!query.empty()) {
      auto amp = query.find('&');
      std::string_view item = query.substr(0, amp);
      query = amp == query.npos ? std::string_view{} : query.substr(amp + 1);
      if (item.empty()) continue;
      auto eq = item.find('=');
      t.query.emplace_back(percent_decode(item.substr(0, eq), true),
                           eq == item.npos ? "" : percent_decode(item.substr(eq + 1), true));
    }
  }
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  while (!path.empty()) {
    if (path.front() == '/') path.remove_prefix(1);
    auto slash = path.find('/');
    t.segments.push_back(percent_decode(path.substr(0, slash), false));
    path = slash == path.npos ? std::string_view{} : path.substr(slash);
  }
  return t;
}

// "2s", "500ms", "1.5s", "250us", "2m", "1h"; a bare number is seconds.
google::protobuf::Duration parse_duration(const std::string& text) {
  auto bad = [&] {
    return Error(errc::invalid_spec, "not a duration: \"" + text + "\" (use e.g. 30s, 500ms)",
                 "timeout");
  };
  double value = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || value < 0) throw bad();
  std::string_view unit(p, text.data() + text.size() - p);
  double scale = 0;  // to nanoseconds
  if (unit.empty() || unit == "s")
    scale = 1e9;
  else if (unit == "ms")
    scale = 1e6;
  else if (unit == "us")
    scale = 1e3;
  else if (unit == "ns")
    scale = 1;
  else if (unit == "m")
    scale = 60e9;
  else if (unit == "h")
    scale = 3600e9;
  else
    throw bad();
  double ns = value * scale;
  if (ns > 1e18) throw bad();
  auto total = static_cast<std::int64_t>(ns);
  google::protobuf::Duration d;
  d.set_seconds(total / 1'000'000'000);
  d.set_nanos(static_cast<std::int32_t>(total % 1'000'000'000));
  return d;
}

// Compares all of `expected` whatever `given` is, so timing does not reveal a matching prefix.
bool constant_time_equal(std::string_view given, std::string_view expected) {
  unsigned char diff = given.size() == expected.size() ? 0 : 1;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff |= static_cast<unsigned char>(g ^ static_cast<unsigned char>(expected[i]));
  }
  return diff == 0;
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

// Everything a server shares with its sessions.
struct Core {
  std::shared_ptr<detail::Backend> backend;
  HttpServerOptions options;
  std::unique_ptr<asio::io_context> ioc;
  std::optional<tcp::acceptor> acceptor;
  std::unique_ptr<asio::thread_pool> pool;
  std::vector<std::thread> io_threads;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  unsigned short port = 0;
  std::string host;  // for url()
  bool started = false;
  bool stopped = false;
  std::atomic<std::uint64_t> connections{0};
  std::atomic<std::uint64_t> requests{0};

  void accept();
  // Routes a request: cheap answers come back at once (blocking=false), Backend calls as a job
  // for the pool.
  Job route(std::shared_ptr<const Request> req, bool& blocking);
  Job route_kind(const std::shared_ptr<const Request>& req, Kind kind, const Target& t,
                 bool& blocking);
  Response invoke(const Request& req, const std::string& name, const Target& t);
  bool authorized(const Request& req) const;
};

Response run_job(const Job& job) {
  try {
    return job();
  } catch (const Error& e) {
    return error_response(e.status());
  } catch (const std::exception& e) {
    return error_response(errc::internal, e.what());
  } catch (...) {
    return error_response(errc::internal, "unknown exception");
  }
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, Core& server) : server_(server), stream_(std::move(socket)) {}

  void run() {
    asio::dispatch(stream_.get_executor(),
                   beast::bind_front_handler(&Session::read, shared_from_this()));
  }

 private:
  void read() {
    parser_.emplace();
    parser_->body_limit(server_.options.body_limit);
    stream_.expires_after(server_.options.idle_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            beast::bind_front_handler(&Session::on_header, shared_from_this()));
  }

  // Headers first: a body over the limit is refused before it is sent, and a client that asks
  // (curl does for large bodies) is told to go on.
  void on_header(beast::error_code ec, std::size_t) {
    if (ec) return on_read(ec, 0);
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

  void read_body() {
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&Session::on_read, shared_from_this()));
  }

  void on_read(beast::error_code ec, std::size_t) {
    if (ec == http::error::body_limit) {
      ++server_.requests;
      keep_alive_ = false;
      write(error_response(errc::payload_too_large, "request body is over the limit of " +
                                                        std::to_string(server_.options.body_limit) +
                                                        " bytes"),
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
    bool blocking = false;
    Job job;
    try {
      job = server_.route(req, blocking);
    } catch (const Error& e) {
      return write(error_response(e.status()), version, req);
    }
    if (!blocking) return write(run_job(job), version, req);
    // Backend calls block; run them on the pool and come back to this connection's strand.
    asio::post(*server_.pool, [self = shared_from_this(), job = std::move(job), version, req] {
      Response res = run_job(job);
      asio::post(self->stream_.get_executor(),
                 [self, res = std::move(res), version, req]() mutable {
                   self->write(std::move(res), version, req);
                 });
    });
  }

  void write(Response res, unsigned version, std::shared_ptr<const Request> req = nullptr) {
    res.version(version);
    res.set(http::field::server, "blixard");
    res.keep_alive(keep_alive_);
    res.prepare_payload();
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
    response_ = std::make_shared<Response>(std::move(res));
    stream_.expires_after(k_write_timeout);
    http::async_write(stream_, *response_,
                      beast::bind_front_handler(&Session::on_write, shared_from_this()));
  }

  void on_write(beast::error_code ec, std::size_t) {
    bool close_after = response_->need_eof();
    response_.reset();
    if (ec) return close();
    if (close_after) return linger();
    read();
  }

  // Half-close, then read and discard what the client still sends (a body we refused) until it
  // closes, so it reads our answer rather than a connection reset.
  void linger() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.expires_after(k_drain_timeout);
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
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<Response> response_;
  std::shared_ptr<http::response<http::empty_body>> continue_;
  std::vector<char> drain_buffer_;
  std::size_t drained_ = 0;
  bool keep_alive_ = true;
  std::chrono::steady_clock::time_point started_;
};

}  // namespace

struct HttpServer::Impl : Core {};

void Core::accept() {
  acceptor->async_accept(asio::make_strand(*ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor->is_open()) return;
    if (!ec) {
      ++connections;
      std::make_shared<Session>(std::move(socket), *this)->run();
    } else if (options.logger) {
      options.logger->warn("http accept failed: {}", ec.message());
    }
    accept();
  });
}

bool Core::authorized(const Request& req) const {
  if (options.token.empty()) return true;
  std::string_view header = req[http::field::authorization];
  constexpr std::string_view scheme = "bearer ";
  if (header.size() < scheme.size()) return false;
  for (std::size_t i = 0; i < scheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(header[i])) != scheme[i]) return false;
  }
  header.remove_prefix(scheme.size());
  return constant_time_equal(header, options.token);
}

Job Core::route(std::shared_ptr<const Request> req, bool& blocking) {
  blocking = false;
  const Target t = parse_target(req->target());
  const auto method = req->method();
  const auto& s = t.segments;
  auto not_found = [req] {
    return [req] {
      return error_response(errc::not_found, "no such endpoint: " + std::string(req->target()));
    };
  };
  auto not_allowed = [req](std::string_view allow) {
    return [req, allow] { return method_not_allowed(*req, allow); };
  };

  if (s.size() == 1 && s[0] == "healthz") {
    if (method != http::verb::get) return not_allowed("GET");
    return [] {
      Response res{http::status::ok, 11};
      res.set(http::field::content_type, "text/plain");
      res.body() = "ok";
      return res;
    };
  }
  if (s.empty() || s[0] != "v1") return not_found();
  if (!authorized(*req)) {
    return [] {
      return error_response(errc::unauthenticated,
                            "this server needs a token: send \"Authorization: Bearer <token>\"");
    };
  }
  if (s.size() < 2) return not_found();
  const std::string& what = s[1];
  auto backend = this->backend;

  if (s.size() == 2 && what == "info") {
    if (method != http::verb::get) return not_allowed("GET");
    blocking = true;
    return [req, backend] { return message_response(*req, backend->info()); };
  }
  if (s.size() == 2 && what == "apply") {
    if (method != http::verb::post) return not_allowed("POST");
    blocking = true;
    return [req, backend, mode = parse_mode(t)] {
      return message_response(*req, backend->apply(decode_body<v1::ObjectSet>(*req), mode));
    };
  }
  if (s.size() == 2 && what == "nodes") {
    if (method != http::verb::get) return not_allowed("GET");
    blocking = true;
    return [req, backend] { return message_response(*req, backend->list_nodes()); };
  }
  if (auto kind = parse_kind(what)) return route_kind(req, *kind, t, blocking);
  return not_found();
}

Job Core::route_kind(const std::shared_ptr<const Request>& req, Kind kind, const Target& t,
                     bool& blocking) {
  const auto method = req->method();
  const auto& s = t.segments;
  auto backend = this->backend;
  auto not_allowed = [req](std::string_view allow) -> Job {
    return [req, allow] { return method_not_allowed(*req, allow); };
  };

  if (s.size() == 2) {
    if (method == http::verb::get) {
      blocking = true;
      return [req, backend, kind]() -> Response {
        switch (kind) {
          case Kind::function:
            return message_response(*req, backend->list_functions());
          case Kind::vm:
            return message_response(*req, backend->list_vms());
          case Kind::trigger:
            return message_response(*req, backend->list_triggers());
        }
        return error_response(errc::internal, "unknown kind");
      };
    }
    if (method == http::verb::post) {
      blocking = true;
      // Create = apply(create) of a one-object set, then read back what the store holds.
      return [req, backend, kind]() -> Response {
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
      };
    }
    return not_allowed("GET, POST");
  }

  const std::string name = s[2];
  if (s.size() == 3) {
    if (method == http::verb::get) {
      blocking = true;
      return [req, backend, kind, name]() -> Response {
        switch (kind) {
          case Kind::function:
            return message_response(*req, backend->get_function(name));
          case Kind::vm:
            return message_response(*req, backend->get_vm(name));
          case Kind::trigger:
            return message_response(*req, backend->get_trigger(name));
        }
        return error_response(errc::internal, "unknown kind");
      };
    }
    if (method == http::verb::delete_) {
      blocking = true;
      return [req, backend, kind, name]() -> Response {
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
      };
    }
    return not_allowed("GET, DELETE");
  }

  if (s.size() == 4 && kind == Kind::function && s[3] == "invoke") {
    if (method != http::verb::post) return not_allowed("POST");
    blocking = true;
    return [this, req, name, t] { return invoke(*req, name, t); };
  }
  return [req] {
    return error_response(errc::not_found, "no such endpoint: " + std::string(req->target()));
  };
}

Response Core::invoke(const Request& req, const std::string& name, const Target& t) {
  v1::InvokeRequest call;
  call.set_function(name);
  std::string_view body = req.body();
  if (body.find_first_not_of(" \t\r\n") == body.npos) {
    call.set_payload("null");  // no body: the handler gets a JSON null
  } else {
    google::protobuf::Value any;  // any JSON value parses into a Value
    try {
      from_json(body, any);
    } catch (const Error&) {
      throw Error(errc::invalid_spec, "the invocation payload is not valid JSON", "payload");
    }
    call.set_payload(std::string(body));
  }
  call.set_request_id(std::string(req["X-Blixard-Request-Id"]));
  if (const std::string* timeout = t.param("timeout")) {
    *call.mutable_timeout() = parse_duration(*timeout);
  }
  v1::InvokeResponse out = backend->invoke(call);
  if (out.has_error() && !out.error().code().empty()) return error_response(out.error());
  Response res{http::status::ok, 11};
  res.set(http::field::content_type, k_json);
  res.set("X-Blixard-Request-Id", out.request_id());
  res.set("X-Blixard-Cold-Start", out.cold_start() ? "true" : "false");
  res.set("X-Blixard-Node", out.node());
  const auto& d = out.duration();
  res.set("X-Blixard-Duration-Us", std::to_string(d.seconds() * 1'000'000 + d.nanos() / 1000));
  res.body() = out.result();
  return res;
}

HttpServer::HttpServer(std::shared_ptr<detail::Backend> backend, HttpServerOptions options)
    : impl_(std::make_unique<Impl>()) {
  if (!backend) throw Error(errc::internal, "HttpServer needs a backend");
  impl_->backend = std::move(backend);
  impl_->options = std::move(options);
  if (impl_->options.workers == 0) impl_->options.workers = 1;
  if (impl_->options.io_threads == 0) impl_->options.io_threads = 1;
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
  im.ioc = std::make_unique<asio::io_context>(static_cast<int>(im.options.io_threads));
  im.acceptor.emplace(asio::make_strand(*im.ioc));
  tcp::endpoint endpoint(address, im.options.port);
  auto fail = [&](const char* what) {
    im.acceptor.reset();
    im.ioc.reset();
    return Error(errc::unavailable,
                 "cannot listen on " + where + ": " + what + ": " + ec.message());
  };
  if (im.acceptor->open(endpoint.protocol(), ec)) throw fail("open");
  if (im.acceptor->set_option(asio::socket_base::reuse_address(true), ec)) throw fail("option");
  if (im.acceptor->bind(endpoint, ec)) throw fail("bind");
  if (im.acceptor->listen(asio::socket_base::max_listen_connections, ec)) throw fail("listen");
  im.port = im.acceptor->local_endpoint().port();
  im.host = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
  im.pool = std::make_unique<asio::thread_pool>(im.options.workers);
  im.work.emplace(im.ioc->get_executor());
  im.accept();
  for (unsigned i = 0; i < im.options.io_threads; ++i) {
    im.io_threads.emplace_back([&ioc = *im.ioc] { ioc.run(); });
  }
  im.started = true;
  if (im.options.logger) im.options.logger->info("HTTP API listening on {}", url());
}

void HttpServer::stop() {
  auto& im = *impl_;
  if (!im.started || im.stopped) return;
  im.stopped = true;
  // Stop the io threads first (no new work reaches the pool), then let running Backend calls
  // finish; their answers land in the stopped io_context and are dropped with it.
  im.work.reset();
  im.ioc->stop();
  for (auto& t : im.io_threads) t.join();
  im.io_threads.clear();
  im.pool->stop();
  im.pool->join();
  im.pool.reset();  // drops queued jobs (and their sessions) while the io_context still exists
  beast::error_code ignored;
  im.acceptor->close(ignored);
  im.acceptor.reset();
  im.ioc.reset();  // destroys the remaining sessions, closing their sockets
}

unsigned short HttpServer::port() const { return impl_->port; }

std::string HttpServer::url() const {
  return "http://" + impl_->host + ":" + std::to_string(impl_->port);
}

HttpServer::Stats HttpServer::stats() const {
  return {impl_->connections.load(), impl_->requests.load()};
}

}  // namespace blixard::api
