// The HTTP transport over Beast: one session per connection (keep-alive, a strand each) on one of
// `io_threads` io_contexts; heads judged before bodies (api/http_head), the connection cap, the
// buffer bound on unauthenticated bodies, responses as one gather write, NDJSON streams, and
// WebSocket upgrades handed to their hooks. What a request means is the route table's
// (api/route_table, api/routes_*) or, off /v1, the trigger gateway's (api/trigger_gateway). A
// Backend call runs on the thread that read its request, so a call costs no cross-thread wakeup
// beyond the Backend's own; when a call runs longer than k_call_handoff, a monitor hands that
// io_context to a spare thread, so a slow call never holds up other connections for long. At most
// `workers` calls run at once; more wait their turn. Long polls and NDJSON streams run on a capped
// pool of their own.
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
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <functional>
#include <list>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "api/http_head.hpp"
#include "api/http_message.hpp"
#include "api/route_table.hpp"
#include "api/routes.hpp"
#include "api/trigger_gateway.hpp"
#include "api/websocket.hpp"
#include "blixard/error.hpp"
#include "common/sigpipe.hpp"

namespace blixard::api {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
using tcp = asio::ip::tcp;
namespace websocket = beast::websocket;
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

// Holds one of the `max_streams` places while a stream or a waiting long poll is open.
struct StreamSlot {
  explicit StreamSlot(std::atomic<std::size_t>& count) : open(count) {}
  StreamSlot(const StreamSlot&) = delete;
  StreamSlot& operator=(const StreamSlot&) = delete;
  ~StreamSlot() { --open; }
  std::atomic<std::size_t>& open;
};

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

  std::unique_ptr<Authenticator> auth;
  RouteTable table;                         // the /v1 routes, fixed once started
  std::unique_ptr<TriggerGateway> gateway;  // every other path

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
  // How a request is answered: by the trigger gateway off /v1, else by the route table.
  // `principal`: who the request's token says (nullopt: no good token).
  Routed route(const std::shared_ptr<const Request>& req,
               const std::optional<Principal>& principal);
  std::shared_ptr<StreamSlot> try_stream_slot();
  Response streams_busy() const;
};

// A connection's place under max_connections, held by a WebSocket after its session is gone.
struct ConnectionPlace {
  explicit ConnectionPlace(std::atomic<std::size_t>& count) : open(count) {}
  ConnectionPlace(const ConnectionPlace&) = delete;
  ConnectionPlace& operator=(const ConnectionPlace&) = delete;
  ~ConnectionPlace() { --open; }
  std::atomic<std::size_t>& open;
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
    boost::system::error_code ec;
    const auto peer = stream_.socket().remote_endpoint(ec);
    if (!ec) peer_address_ = peer.address().to_string();
  }
  ~Session() {
    release_reserved();
    if (!handed_over_) --server_.open_connections;
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
    // The token, when the request carries one (a gateway request without any costs nothing).
    const std::string_view authorization = parser_->get()[http::field::authorization];
    Authenticator::Result who;
    if (!server_.auth->required() || !authorization.empty() ||
        is_api_target(parser_->get().target())) {
      who = server_.auth->authenticate(authorization);
    }
    const bool admin =
        !server_.auth->required() || (who.principal && who.principal->has(Scope::admin));
    auto verdict = check_head(
        parser_->get(), parser_->content_length(),
        {server_.auth->required(), who.principal.has_value(), who.why, server_.options.body_limit,
         server_.options.gateway_body_limit, admin, server_.options.blob_body_limit});
    gateway_ = verdict.gateway;
    limit_ = verdict.body_limit;
    principal_ = std::move(who.principal);
    parser_->body_limit(limit_);
    if (verdict.status != 0)
      return refuse(verdict.status, verdict.message, parser_->get().version());
    // What unauthenticated clients may make the server hold is capped server-wide, decided from
    // the head (a chunked body counts as its limit).
    if (!verdict.authenticated && !parser_->is_done()) {
      // A public body for a path no trigger serves is not read at all.
      if (gateway_) {
        if (auto path = server_.gateway->unrouted_path(parser_->get().target())) {
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
      routed = server_.route(req, principal_);
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
      case Routed::Mode::upgrade:
        return upgrade(std::move(routed.upgrade), req);
    }
  }

  // A WebSocket route: the handshake is answered here, then the connection is the hook's (its
  // place under max_connections with it). A plain request to such a route gets 426.
  void upgrade(std::shared_ptr<const WebSocketHandler> handler,
               const std::shared_ptr<const Request>& req) {
    if (!websocket::is_upgrade(*req)) {
      auto res = error_response(errc::invalid_spec, std::string(req->target()) +
                                                        " takes WebSocket connections only "
                                                        "(send \"Upgrade: websocket\")");
      res.result(http::status::upgrade_required);
      res.set(http::field::upgrade, "websocket");
      return write(std::move(res), req->version(), req);
    }
    if (auto& log = server_.options.logger) {
      log->debug("{} {} -> WebSocket", std::string_view(req->method_string()),
                 std::string_view(req->target()));
    }
    handed_over_ = true;
    auto place = std::make_shared<ConnectionPlace>(server_.open_connections);
    auto conn = std::make_unique<WebSocketConnection>(std::move(stream_), *req,
                                                      principal_.value_or(Principal{}), place);
    WebSocketConnection& c = *conn;
    c.ws.set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
    c.ws.set_option(websocket::stream_base::decorator(
        [](websocket::response_type& res) { res.set(http::field::server, "blixard"); }));
    c.ws.async_accept(c.request, [conn = std::move(conn),
                                  handler = std::move(handler)](beast::error_code ec) mutable {
      if (ec) return;  // the client went away during the handshake
      (*handler)(std::move(conn));
    });
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
    std::string address() const override {
      auto session = session_.lock();
      return session ? session->peer_address_ : std::string();
    }
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
  std::string peer_address_;  // the client's IP address (cold starts prefer nodes near it)
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
  bool gateway_ = false;                // the request being read is for the trigger gateway
  std::optional<Principal> principal_;  // who its token says; nullopt: no good token
  bool handed_over_ = false;            // to a WebSocket hook, with the connection's place
  std::size_t limit_ = 0;               // its body limit
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

Routed Core::route(const std::shared_ptr<const Request>& req,
                   const std::optional<Principal>& principal) {
  if (!is_api_target(req->target())) return gateway->route(req, principal);
  return table.dispatch(req, parse_target(req->target()), principal ? &*principal : nullptr);
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
    impl_->options.stream_poll_wait = HttpServerOptions{}.stream_poll_wait;
  }
  auto& im = *impl_;
  im.auth = std::make_unique<Authenticator>(im.options.token, im.backend);
  add_api_routes(im.table,
                 {im.backend, im.options.max_wait, im.options.stream_poll_wait, &im.stopping});
  im.gateway =
      std::make_unique<TriggerGateway>(im.backend, im.options.route_refresh, im.options.logger);
}

void HttpServer::add_websocket(const std::string& path, Scope scope, WebSocketHandler handler) {
  if (impl_->started) throw Error(errc::internal, "HttpServer::add_websocket after start()");
  if (!is_api_target(path)) {
    throw Error(errc::invalid_spec, "a WebSocket path is under /v1, not \"" + path + "\"", "path");
  }
  if (!handler) throw Error(errc::invalid_spec, "a WebSocket hook needs a handler", "handler");
  auto hook = std::make_shared<const WebSocketHandler>(std::move(handler));
  impl_->table.add(http::verb::get, path, scope,
                   [hook](const RouteRequest&) { return upgrade(hook); });
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
