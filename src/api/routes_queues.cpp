// Durable queues, events and async invocations (docs/queues.md): sending and publishing take the
// invoke scope (they make functions run), reading takes read, consuming by hand takes admin.
#include <charconv>

#include "api/routes.hpp"
#include "common/json_check.hpp"

namespace blixard::api {
namespace {

// ?max=N for a peek (0 when absent: the backend's default).
std::uint32_t parse_max(const Target& t) {
  const std::string* v = t.param("max");
  if (v == nullptr) return 0;
  std::uint32_t n = 0;
  auto [end, ec] = std::from_chars(v->data(), v->data() + v->size(), n);
  if (ec != std::errc() || end != v->data() + v->size())
    throw Error(errc::invalid_spec, "max must be a whole number, not " + *v, "max");
  return n;
}

// A message or an event runs whichever functions its triggers name: an invoke token limited to
// one function may not send or publish, or it could run the others.
bool reaches_any_function(const Principal& who) { return who.may_invoke({}); }

Routed refused(const Principal& who, const std::string& what) {
  return immediate([who, what] {
    return forbidden(who, Scope::invoke, what + " (a token limited to one function may not)");
  });
}

// POST /v1/functions/NAME/invocations: the body is the payload, as for invoke.
v1::InvokeRequest async_request(const Request& req, const std::string& name) {
  v1::InvokeRequest call;
  call.set_function(name);
  std::string_view body = req.body();
  if (body.find_first_not_of(" \t\r\n") == body.npos) {
    call.set_payload("null");
  } else {
    if (auto check = check_json_text(body); !check.ok())
      throw Error(errc::invalid_spec, json_problem(check, "the invocation payload"), "payload");
    call.set_payload(std::string(body));
  }
  return call;
}

}  // namespace

void add_queue_routes(RouteTable& table, const RouteContext& context) {
  auto backend = context.backend;
  table.add(http::verb::get, "/v1/queues", Scope::read, [backend](const RouteRequest& r) {
    return worker(
        [req = r.req, backend] { return message_response(*req, backend->list_queues()); });
  });
  table.add(http::verb::get, "/v1/queues/{name}", Scope::read, [backend](const RouteRequest& r) {
    return worker([req = r.req, backend, name = r.param("name")] {
      return message_response(*req, backend->get_queue(name));
    });
  });
  table.add(http::verb::post, "/v1/queues/{name}/messages", Scope::invoke,
            [backend](const RouteRequest& r) {
              if (!reaches_any_function(*r.principal))
                return refused(*r.principal, "send to queue " + r.param("name"));
              return worker([req = r.req, backend, name = r.param("name")] {
                return message_response(
                    *req, backend->send_messages(name, decode_body<v1::SendRequest>(*req)));
              });
            });
  table.add(
      http::verb::get, "/v1/queues/{name}/messages", Scope::read, [backend](const RouteRequest& r) {
        return worker([req = r.req, backend, name = r.param("name"), max = parse_max(r.target)] {
          return message_response(*req, backend->peek_messages(name, max));
        });
      });
  // A long poll when it asks to wait: a waiter, not one of the workers.
  table.add(http::verb::post, "/v1/queues/{name}/receive", Scope::admin,
            [backend](const RouteRequest& r) {
              auto request =
                  std::make_shared<v1::ReceiveRequest>(decode_body<v1::ReceiveRequest>(*r.req));
              Job job = [req = r.req, backend, name = r.param("name"), request] {
                return message_response(*req, backend->receive_messages(name, *request));
              };
              const bool waits = request->wait().seconds() > 0 || request->wait().nanos() > 0;
              return waits ? waiter(std::move(job)) : worker(std::move(job));
            });
  table.add(http::verb::post, "/v1/queues/{name}/ack", Scope::admin,
            [backend](const RouteRequest& r) {
              return worker([req = r.req, backend, name = r.param("name")] {
                return message_response(
                    *req, backend->acknowledge_messages(name, decode_body<v1::AckRequest>(*req)));
              });
            });
  table.add(http::verb::post, "/v1/queues/{name}/purge", Scope::admin,
            [backend](const RouteRequest& r) {
              return worker([req = r.req, backend, name = r.param("name")] {
                return message_response(*req, backend->purge_queue(name));
              });
            });
  table.add(http::verb::post, "/v1/events", Scope::invoke, [backend](const RouteRequest& r) {
    if (!reaches_any_function(*r.principal)) return refused(*r.principal, "publish events");
    return worker([req = r.req, backend] {
      return message_response(*req, backend->publish_event(decode_body<v1::PublishRequest>(*req)));
    });
  });
  table.add(http::verb::post, "/v1/functions/{name}/invocations", Scope::invoke,
            [backend](const RouteRequest& r) {
              const std::string& name = r.param("name");
              if (!r.principal->may_invoke(name)) {
                return immediate([who = *r.principal, name] {
                  return forbidden(who, Scope::invoke, "invoke " + name);
                });
              }
              return worker([req = r.req, backend, name] {
                return message_response(*req, backend->submit_invocation(async_request(*req, name)),
                                        http::status::accepted);
              });
            });
  table.add(http::verb::get, "/v1/invocations/{id}", Scope::read, [backend](const RouteRequest& r) {
    return worker([req = r.req, backend, id = r.param("id")] {
      return message_response(*req, backend->get_invocation(id));
    });
  });
}

}  // namespace blixard::api
