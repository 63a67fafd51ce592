// Routes about the server itself: health, Prometheus metrics, info, nodes (list, get, cordon,
// uncordon, drain), and apply.
#include "api/routes.hpp"

namespace blixard::api {

void add_server_routes(RouteTable& table, const RouteContext& context) {
  auto backend = context.backend;
  table.add(http::verb::get, "/healthz", Scope::none, [](const RouteRequest&) {
    return immediate([] {
      Response res{http::status::ok, 11};
      res.set(http::field::content_type, "text/plain");
      res.body() = "ok";
      return res;
    });
  });
  table.add(http::verb::get, "/metrics", Scope::read, [backend](const RouteRequest&) {
    return worker([backend] {
      Response res{http::status::ok, 11};
      res.set(http::field::content_type, k_prometheus);
      res.body() = backend->prometheus_metrics();
      return res;
    });
  });
  table.add(http::verb::get, "/v1/info", Scope::read, [backend](const RouteRequest& r) {
    return worker([req = r.req, backend] { return message_response(*req, backend->info()); });
  });
  table.add(http::verb::get, "/v1/nodes", Scope::read, [backend](const RouteRequest& r) {
    return worker([req = r.req, backend] { return message_response(*req, backend->list_nodes()); });
  });
  table.add(http::verb::get, "/v1/nodes/{name}", Scope::read, [backend](const RouteRequest& r) {
    return worker([req = r.req, backend, name = r.param("name")] {
      return message_response(*req, backend->get_node(name));
    });
  });
  using Action = detail::Backend::NodeAction;
  for (const auto& [verb, action] :
       {std::pair{"cordon", Action::cordon}, std::pair{"uncordon", Action::uncordon},
        std::pair{"drain", Action::drain}}) {
    table.add(http::verb::post, std::string("/v1/nodes/{name}/") + verb, Scope::admin,
              [backend, action = action](const RouteRequest& r) {
                return worker([req = r.req, backend, name = r.param("name"), action] {
                  return message_response(*req, backend->change_node(name, action));
                });
              });
  }
  table.add(http::verb::post, "/v1/apply", Scope::admin, [backend](const RouteRequest& r) {
    return worker([req = r.req, backend, options = parse_apply_options(r.target)] {
      return message_response(*req, backend->apply(decode_body<v1::ObjectSet>(*req), options));
    });
  });
}

void add_api_routes(RouteTable& table, const RouteContext& context) {
  add_server_routes(table, context);
  add_object_routes(table, context);
  add_function_routes(table, context);
  add_event_routes(table, context);
  add_token_routes(table, context);
  add_blob_routes(table, context);
  add_queue_routes(table, context);
  add_ui_routes(table, context);
}

}  // namespace blixard::api
