// The HTTP trigger gateway: every path the API does not own belongs to it. A request is routed by
// the http triggers (exact paths, and "/prefix/*" longest first) to its function, as an event in
// Lambda function URL's shape; the handler's result becomes the answer ({statusCode, headers,
// body, isBase64Encoded}, or any JSON as a 200). Errors are {"error": code, "message"}, what a
// function's HTTP client expects, not the API's Status.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "api/auth.hpp"
#include "api/http_message.hpp"

namespace spdlog {
class logger;
}

namespace blixard::api {

Response gateway_error(unsigned status, std::string_view code, const std::string& message);
Response gateway_error(errc code, const std::string& message);

class TriggerGateway {
 public:
  // The routing table (the http triggers) is re-read when older than `route_refresh`, so a new
  // trigger routes within it; a path that matches nothing re-reads it at most every 1/4 of it.
  TriggerGateway(std::shared_ptr<detail::Backend> backend, milliseconds route_refresh,
                 std::shared_ptr<spdlog::logger> logger);
  ~TriggerGateway();
  TriggerGateway(const TriggerGateway&) = delete;
  TriggerGateway& operator=(const TriggerGateway&) = delete;

  // How a gateway request is answered: without a thread waiting where the Backend can start the
  // call so (a warm instance), else as a worker call. `principal`: the request's bearer token, if
  // any was good (a trigger with `auth: token` needs one with the invoke scope for its function).
  Routed route(const std::shared_ptr<const Request>& req, std::optional<Principal> principal);

  // The path of a gateway target no trigger serves; nullopt when one does or the table cannot
  // be read (the request then takes its usual way, which reports that).
  std::optional<std::string> unrouted_path(std::string_view target);

 private:
  struct Routes;
  std::shared_ptr<const Routes> route_table(bool missed);
  Response gateway(const Request& req, const std::optional<Principal>& principal);
  // The call a gateway request makes, or (returned) the answer when it makes none (405, 401).
  std::optional<Response> gateway_request(const Request& req,
                                          const std::optional<Principal>& principal,
                                          v1::InvokeRequest& call);
  static Response gateway_answer(v1::InvokeResponse out);

  std::shared_ptr<detail::Backend> backend_;
  milliseconds route_refresh_;
  std::shared_ptr<spdlog::logger> logger_;
  std::mutex mu_;  // guards `routes_`
  std::shared_ptr<const Routes> routes_;
  std::mutex refresh_mu_;  // one routing-table read at a time
};

}  // namespace blixard::api
