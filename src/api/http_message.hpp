// What the HTTP transport, the route table, the routes and the trigger gateway share: the request
// and response types, how a routed request is to be answered (Routed), the one error shape
// (blixard.v1.Status as JSON) and body (de)coding as protobuf or its JSON mapping.
#pragma once

#include <google/protobuf/duration.pb.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "api/http_head.hpp"
#include "api/websocket_fwd.hpp"
#include "blixard/detail/backend.hpp"
#include "blixard/error.hpp"

namespace google::protobuf {
class Message;
}

namespace blixard::api {

namespace http = boost::beast::http;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

inline constexpr std::string_view k_json = "application/json";
inline constexpr std::string_view k_protobuf = "application/x-protobuf";
inline constexpr std::string_view k_ndjson = "application/x-ndjson";
inline constexpr std::string_view k_prometheus = "text/plain; version=0.0.4; charset=utf-8";

// ---- How a routed request is answered ------------------------------------------------------

using Job = std::function<Response()>;

// One batch of a stream: NDJSON lines (each ending in '\n') and the sequence to continue after.
struct Batch {
  std::string lines;
  std::int64_t next = 0;
};
using Poll = std::function<Batch(std::int64_t after, milliseconds wait)>;

// Where an asynchronous call's answer goes (any thread; the session takes it to its strand).
using Answer = std::function<void(Response)>;
// Starts a call that answers through Answer later (true), or does nothing (false).
// `caller` notices the client hang up while the call waits to start (Session::watch_caller).
using CallerPtr = std::shared_ptr<detail::Caller>;
using AsyncStart = std::function<bool(const boost::asio::any_io_executor&, Answer, CallerPtr)>;

struct Routed {
  enum class Mode {
    now,      // cheap: answered on the io thread
    worker,   // a Backend call, holding one of the `workers` places
    async,    // `start` without a thread waiting, else `job` as a worker call
    waiter,   // a long poll that may wait: on the stream pool, holding a stream slot
    stream,   // an NDJSON stream: `poll` in a loop on the stream pool, holding a slot
    upgrade,  // a WebSocket: the handshake answered, the connection handed to `upgrade`
  };
  Mode mode = Mode::now;
  Job job;
  Poll poll;
  std::int64_t after = 0;  // where a stream starts
  AsyncStart start;
  std::shared_ptr<const WebSocketHandler> upgrade;
};

inline Routed immediate(Job job) { return {Routed::Mode::now, std::move(job), {}, 0, {}, {}}; }
inline Routed worker(Job job) { return {Routed::Mode::worker, std::move(job), {}, 0, {}, {}}; }
inline Routed async_or_worker(AsyncStart start, Job job) {
  return {Routed::Mode::async, std::move(job), {}, 0, std::move(start), {}};
}
inline Routed waiter(Job job) { return {Routed::Mode::waiter, std::move(job), {}, 0, {}, {}}; }
inline Routed stream(Poll poll, std::int64_t after) {
  return {Routed::Mode::stream, {}, std::move(poll), after, {}, {}};
}
inline Routed upgrade(std::shared_ptr<const WebSocketHandler> handler) {
  return {Routed::Mode::upgrade, {}, {}, 0, {}, std::move(handler)};
}

// ---- Answers --------------------------------------------------------------------------------

// The one error shape: a Status as JSON with the code's HTTP status (401 adds WWW-Authenticate).
Response error_response(const v1::Status& status);
Response error_response(errc code, const std::string& message, std::string field = {});
// The answer for whatever exception is being handled.
Response error_from_current();
Response run_job(const Job& job);

// `m` as the client asked (Accept: application/x-protobuf, else JSON).
Response message_response(const Request& req, const google::protobuf::Message& m,
                          http::status status = http::status::ok);
// The body as `m` (protobuf when its Content-Type says so, else JSON); invalid_spec otherwise.
void decode_body(const Request& req, google::protobuf::Message& m);
template <class M>
M decode_body(const Request& req) {
  M m;
  decode_body(req, m);
  return m;
}

// ---- Query parameters -------------------------------------------------------------------------

// blixard::parse_duration (the spec's parser: "2s", "500ms", "1m30s", a bare number is seconds)
// as a protobuf Duration; `positive`: zero is an error too (a call's timeout).
google::protobuf::Duration duration_param(const std::string& text, const std::string& field,
                                          bool positive);
// ?after=N: a sequence of the server's log or event stream.
// With `from_now`, after=-1 is taken too: only what comes after the stream's current position.
std::int64_t parse_after(const Target& t, bool from_now = false);
// `from`: a store revision (DESIGN §4's watch), 1 or more; nullopt when absent.
std::optional<std::int64_t> parse_from_revision(const Target& t);
// ?wait=DURATION, cut to `max`; none: 0.
milliseconds parse_wait(const Target& t, milliseconds max);
// ?KEY=1|0|true|false; a bare "?KEY" counts as 1.
bool parse_flag(const Target& t, const char* key);
// POST /v1/apply's query: ?mode=create|apply|remove (default apply), &dryRun=1, &prune=1,
// &stack=NAME.
detail::ApplyOptions parse_apply_options(const Target& t);

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

}  // namespace blixard::api
