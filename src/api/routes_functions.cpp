// What a function does besides being stored: invoke (asynchronous where the Backend can), its
// metrics, and its logs (a long poll, or an NDJSON stream with ?follow=1).
#include "api/routes.hpp"

#include "common/json.hpp"
#include "common/json_check.hpp"

namespace blixard::api {
namespace {

// POST /v1/functions/NAME/invoke?timeout=D: the body is the payload (JSON; none is null).
v1::InvokeRequest invoke_request(const Request& req, const std::string& name, const Target& t) {
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
    *call.mutable_timeout() = duration_param(*timeout, "timeout", true);
  }
  return call;
}

// The result as the body, the call's facts in X-Blixard-* headers.
Response invoke_response(v1::InvokeResponse out) {
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

Routed route_invoke(const RouteRequest& r, const std::shared_ptr<detail::Backend>& backend) {
  const std::string& name = r.param("name");
  if (!r.principal->may_invoke(name)) {
    return immediate(
        [who = *r.principal, name] { return forbidden(who, Scope::invoke, "invoke " + name); });
  }
  auto call = std::make_shared<v1::InvokeRequest>(invoke_request(*r.req, name, r.target));
  return async_or_worker(
      [backend, call](const boost::asio::any_io_executor& executor, const Answer& answer,
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

// A function's or a VM set's lines (`of` reads them from the backend).
using LogSource = v1::LogChunk (detail::Backend::*)(const std::string&, std::int64_t,
                                                    std::chrono::milliseconds);

Routed route_logs(const RouteRequest& r, const RouteContext& context, LogSource of) {
  auto backend = context.backend;
  const std::string& name = r.param("name");
  const std::int64_t after = parse_after(r.target);
  if (parse_flag(r.target, "follow")) {
    return stream(
        [backend, name, of](std::int64_t from, milliseconds wait) {
          auto chunk = ((*backend).*of)(name, from, wait);
          Batch b;
          for (const auto& line : chunk.lines()) b.lines += to_json(line) + "\n";
          b.next = chunk.next();
          return b;
        },
        after);
  }
  const milliseconds wait = parse_wait(r.target, context.max_wait);
  Job job = [req = r.req, context, name, after, wait, of] {
    auto chunk =
        sliced_poll([&](milliseconds w) { return ((*context.backend).*of)(name, after, w); }, wait,
                    context.stream_poll_wait, *context.stopping,
                    [](const v1::LogChunk& c) { return c.lines_size() == 0; });
    return message_response(*req, chunk);
  };
  return wait.count() > 0 ? waiter(std::move(job)) : worker(std::move(job));
}

}  // namespace

void add_function_routes(RouteTable& table, const RouteContext& context) {
  auto backend = context.backend;
  table.add(http::verb::post, "/v1/functions/{name}/invoke", Scope::invoke,
            [backend](const RouteRequest& r) { return route_invoke(r, backend); });
  table.add(http::verb::get, "/v1/functions/{name}/metrics", Scope::read,
            [backend](const RouteRequest& r) {
              return worker([req = r.req, backend, name = r.param("name")] {
                return message_response(*req, backend->function_metrics(name));
              });
            });
  table.add(http::verb::get, "/v1/functions/{name}/logs", Scope::read,
            [context](const RouteRequest& r) {
              return route_logs(r, context, &detail::Backend::function_logs);
            });
  table.add(http::verb::get, "/v1/vms/{name}/logs", Scope::read, [context](const RouteRequest& r) {
    return route_logs(r, context, &detail::Backend::vm_logs);
  });
}

}  // namespace blixard::api
