// GET /v1/events?kind=&name=&after=: object changes and records of this server's event stream;
// ?from=REV: the store's object changes from that revision. A long poll (?wait=) or an NDJSON
// stream (?watch=1).
#include "api/routes.hpp"

#include "common/json.hpp"

namespace blixard::api {
namespace {

// ?from=REV: the store's changes from that revision, the same long poll or stream, where `next`
// is a store revision.
Routed route_changes(const RouteRequest& r, const RouteContext& context, const std::string& kind,
                     const std::string& name, std::int64_t from) {
  auto backend = context.backend;
  if (parse_flag(r.target, "watch")) {
    return stream(
        [backend, kind, name](std::int64_t rev, milliseconds wait) {
          auto list = backend->changes(kind, name, rev, wait);
          Batch b;
          for (const auto& e : list.events()) b.lines += to_json(e) + "\n";
          b.next = list.next();
          return b;
        },
        from);
  }
  const milliseconds wait = parse_wait(r.target, context.max_wait);
  Job job = [req = r.req, context, kind, name, from, wait] {
    std::int64_t rev = from;
    auto list = sliced_poll(
        [&](milliseconds w) {
          auto l = context.backend->changes(kind, name, rev, w);
          rev = l.next();
          return l;
        },
        wait, context.stream_poll_wait, *context.stopping,
        [](const v1::WatchEventList& l) { return l.events_size() == 0; });
    return message_response(*req, list);
  };
  return wait.count() > 0 ? waiter(std::move(job)) : worker(std::move(job));
}

Routed route_events(const RouteRequest& r, const RouteContext& context) {
  auto backend = context.backend;
  const Target& t = r.target;
  const std::string kind = t.param("kind") ? *t.param("kind") : "";
  const std::string name = t.param("name") ? *t.param("name") : "";
  if (auto from = parse_from_revision(t)) return route_changes(r, context, kind, name, *from);
  const std::int64_t after = parse_after(t, true);
  if (parse_flag(t, "watch")) {
    return stream(
        [backend, kind, name](std::int64_t from, milliseconds wait) {
          auto list = backend->events(kind, name, from, wait);
          Batch b;
          for (const auto& e : list.events()) b.lines += to_json(e) + "\n";
          b.next = list.next();
          return b;
        },
        after);
  }
  const milliseconds wait = parse_wait(t, context.max_wait);
  Job job = [req = r.req, context, kind, name, after, wait] {
    // Each slice goes on from where the last ended: after=-1 ("from now") is resolved once.
    std::int64_t from = after;
    auto list = sliced_poll(
        [&](milliseconds w) {
          auto l = context.backend->events(kind, name, from, w);
          from = l.next();
          return l;
        },
        wait, context.stream_poll_wait, *context.stopping,
        [](const v1::WatchEventList& l) { return l.events_size() == 0; });
    return message_response(*req, list);
  };
  return wait.count() > 0 ? waiter(std::move(job)) : worker(std::move(job));
}

}  // namespace

void add_event_routes(RouteTable& table, const RouteContext& context) {
  table.add(http::verb::get, "/v1/events", Scope::read,
            [context](const RouteRequest& r) { return route_events(r, context); });
}

}  // namespace blixard::api
