// The /v1 route table: entries {verb, pattern, scope, handler}. A pattern is a path of literal
// segments and {name} captures ("/v1/functions/{name}/invoke"). dispatch() finds the route of a
// request: none for its path is 404, none for its verb 405 with an Allow header listing the verbs
// the path has, a principal without the route's scope 403 (401 without a principal); only then
// does the handler run. Routes are added before the server starts and read-only after.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "api/auth.hpp"
#include "api/http_message.hpp"

namespace blixard::api {

// A request that matched a route: its target and the values of the pattern's captures.
struct RouteRequest {
  std::shared_ptr<const Request> req;
  Target target;
  const Principal* principal = nullptr;  // never null in a handler
  const std::vector<std::string>* names = nullptr;
  std::vector<std::string> captures;  // decoded, in pattern order

  // The capture `{name}`; Error(internal) for a name the pattern lacks (a bug of the route).
  const std::string& param(std::string_view name) const;
};

using RouteHandler = std::function<Routed(const RouteRequest&)>;

struct Route {
  http::verb verb = http::verb::get;
  std::string pattern;
  Scope scope = Scope::read;
  RouteHandler handler;
  std::vector<std::string> segments;  // of the pattern; a capture as "{name}"
  std::vector<std::string> names;     // the captures' names, in order
};

class RouteTable {
 public:
  // Throws Error(internal) for a malformed pattern or one already there with this verb.
  void add(http::verb verb, std::string_view pattern, Scope scope, RouteHandler handler);

  struct Match {
    const Route* route = nullptr;  // null: none for this verb (then `allow`) or this path
    std::vector<std::string> captures;
    std::string allow;  // the verbs the path has, "GET, POST", when `route` is null
  };
  Match match(http::verb verb, const std::vector<std::string>& segments) const;

  // 404, 405 (Allow), 401/403, or what the route's handler makes of the request.
  Routed dispatch(const std::shared_ptr<const Request>& req, Target target,
                  const Principal* principal) const;

  const std::vector<Route>& routes() const noexcept { return routes_; }

 private:
  std::vector<Route> routes_;
};

// The 403 a principal without `scope` gets (the route's, or invoke of one function).
Response forbidden(const Principal& who, Scope scope, std::string_view what);

}  // namespace blixard::api
