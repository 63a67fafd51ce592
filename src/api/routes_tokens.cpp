// Tokens: create (the secret in the answer, once), list (no hashes), revoke by name or id. Admin.
#include "api/routes.hpp"

namespace blixard::api {

void add_token_routes(RouteTable& table, const RouteContext& context) {
  auto backend = context.backend;
  table.add(http::verb::get, "/v1/tokens", Scope::admin, [backend](const RouteRequest& r) {
    return worker(
        [req = r.req, backend] { return message_response(*req, backend->list_tokens()); });
  });
  table.add(http::verb::post, "/v1/tokens", Scope::admin, [backend](const RouteRequest& r) {
    return worker([req = r.req, backend] {
      return message_response(*req, backend->create_token(decode_body<v1::TokenRequest>(*req)),
                              http::status::created);
    });
  });
  table.add(http::verb::delete_, "/v1/tokens/{name}", Scope::admin,
            [backend](const RouteRequest& r) {
              return worker([req = r.req, backend, name = r.param("name")] {
                return message_response(*req, backend->revoke_token(name));
              });
            });
}

}  // namespace blixard::api
