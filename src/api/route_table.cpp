// Matching requests to routes, 404/405, and the scope check before a handler (route_table.hpp).
#include "api/route_table.hpp"

#include <algorithm>

namespace blixard::api {

std::string_view to_string(Scope scope) noexcept {
  switch (scope) {
    case Scope::none:
      return "public";
    case Scope::read:
      return "read";
    case Scope::invoke:
      return "invoke";
    case Scope::admin:
      return "admin";
    case Scope::node:
      return "node";
  }
  return "unknown";
}

const std::string& RouteRequest::param(std::string_view name) const {
  if (names != nullptr) {
    for (std::size_t i = 0; i < names->size() && i < captures.size(); ++i) {
      if ((*names)[i] == name) return captures[i];
    }
  }
  throw Error(errc::internal, "the route has no capture {" + std::string(name) + "}");
}

void RouteTable::add(http::verb verb, std::string_view pattern, Scope scope, RouteHandler handler) {
  Route r;
  r.verb = verb;
  r.pattern = std::string(pattern);
  r.scope = scope;
  r.handler = std::move(handler);
  if (pattern.empty() || pattern.front() != '/' || !r.handler) {
    throw Error(errc::internal, "bad route \"" + r.pattern + "\": a pattern starts with /");
  }
  std::string_view rest = pattern.substr(1);
  while (!rest.empty()) {
    const auto slash = rest.find('/');
    std::string segment(rest.substr(0, slash));
    rest = slash == rest.npos ? std::string_view{} : rest.substr(slash + 1);
    if (segment.empty())
      throw Error(errc::internal, "bad route \"" + r.pattern + "\": empty segment");
    if (segment.front() == '{') {
      if (segment.size() < 3 || segment.back() != '}') {
        throw Error(errc::internal, "bad route \"" + r.pattern + "\": unclosed capture");
      }
      r.names.push_back(segment.substr(1, segment.size() - 2));
    }
    r.segments.push_back(std::move(segment));
  }
  // Two patterns that differ only in their captures' names match the same paths.
  auto same_paths = [](const Route& a, const Route& b) {
    if (a.segments.size() != b.segments.size()) return false;
    for (std::size_t i = 0; i < a.segments.size(); ++i) {
      const bool capture = a.segments[i].front() == '{';
      if (capture != (b.segments[i].front() == '{') ||
          (!capture && a.segments[i] != b.segments[i])) {
        return false;
      }
    }
    return true;
  };
  for (const auto& other : routes_) {
    if (other.verb == verb && same_paths(other, r)) {
      throw Error(errc::internal, "route " + std::string(http::to_string(verb)) + " " + r.pattern +
                                      " is there already");
    }
  }
  routes_.push_back(std::move(r));
}

RouteTable::Match RouteTable::match(http::verb verb,
                                    const std::vector<std::string>& segments) const {
  Match m;
  for (const auto& r : routes_) {
    if (r.segments.size() != segments.size()) continue;
    bool same = true;
    for (std::size_t i = 0; i < segments.size() && same; ++i) {
      const std::string& p = r.segments[i];
      same = p.front() == '{' || p == segments[i];
    }
    if (!same) continue;
    if (r.verb == verb) {
      m.route = &r;
      for (std::size_t i = 0; i < segments.size(); ++i) {
        if (r.segments[i].front() == '{') m.captures.push_back(segments[i]);
      }
      m.allow.clear();
      return m;
    }
    const std::string_view name = http::to_string(r.verb);
    if (m.allow.find(name) == std::string::npos) {
      m.allow += (m.allow.empty() ? "" : ", ") + std::string(name);
    }
  }
  return m;
}

Response forbidden(const Principal& who, Scope scope, std::string_view what) {
  return error_response(errc::permission_denied,
                        "the token \"" + who.name + "\" may not " + std::string(what) +
                            " (it lacks the " + std::string(to_string(scope)) + " scope" +
                            (who.function.empty() ? "" : " for anything but " + who.function) +
                            ")");
}

Routed RouteTable::dispatch(const std::shared_ptr<const Request>& req, Target target,
                            const Principal* principal) const {
  Match m = match(req->method(), target.segments);
  if (m.route == nullptr) {
    if (m.allow.empty()) {
      return immediate([req] {
        return error_response(errc::not_found, "no such endpoint: " + std::string(req->target()));
      });
    }
    return immediate([req, allow = std::move(m.allow)] {
      auto res = error_response(errc::invalid_spec,
                                std::string(req->method_string()) + " is not allowed on " +
                                    std::string(req->target()) + " (allowed: " + allow + ")");
      res.result(http::status::method_not_allowed);
      res.set(http::field::allow, allow);
      return res;
    });
  }
  const Route& route = *m.route;
  if (route.scope != Scope::none) {
    if (principal == nullptr) {
      return immediate([] {
        return error_response(errc::unauthenticated,
                              "this server needs a token: send \"Authorization: Bearer <token>\"");
      });
    }
    if (!principal->has(route.scope)) {
      return immediate([who = *principal, scope = route.scope, req] {
        return forbidden(who, scope,
                         std::string(req->method_string()) + " " + std::string(req->target()));
      });
    }
  }
  RouteRequest r{req, std::move(target), principal, &route.names, std::move(m.captures)};
  return route.handler(r);
}

}  // namespace blixard::api
