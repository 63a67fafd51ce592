// Code archives by digest (DESIGN §5): an admin uploads what the client packed (PUT, checked
// against the digest, idempotent); agents (scope node) fetch it (GET); HEAD tells whether the
// server has it, so a client uploads each archive once.
#include "api/routes.hpp"

namespace blixard::api {

void add_blob_routes(RouteTable& table, const RouteContext& context) {
  auto backend = context.backend;
  table.add(http::verb::put, "/v1/blobs/{digest}", Scope::admin, [backend](const RouteRequest& r) {
    return worker([req = r.req, backend, digest = r.param("digest")] {
      return message_response(*req, backend->put_blob(digest, req->body()), http::status::created);
    });
  });
  table.add(http::verb::get, "/v1/blobs/{digest}", Scope::node, [backend](const RouteRequest& r) {
    return worker([backend, digest = r.param("digest")] {
      auto blob = backend->get_blob(digest);
      if (!blob) return error_response(errc::not_found, "no blob " + digest, "digest");
      Response res{http::status::ok, 11};
      res.set(http::field::content_type, "application/octet-stream");
      res.set(http::field::cache_control, "public, max-age=31536000, immutable");
      res.body() = std::move(*blob);
      return res;
    });
  });
  table.add(http::verb::head, "/v1/blobs/{digest}", Scope::read, [backend](const RouteRequest& r) {
    return worker([backend, digest = r.param("digest")] {
      if (!backend->has_blob(digest)) {
        return error_response(errc::not_found, "no blob " + digest, "digest");
      }
      return Response{http::status::ok, 11};
    });
  });
}

}  // namespace blixard::api
