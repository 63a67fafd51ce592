// detail::Backend over HTTP: what Cluster::connect talks to, so a remote cluster is driven with
// the same objects as an embedded one. Errors from the server come back as the same blixard::Error
// (code, field, file/line); transport failures are Error(unavailable) / Error(timeout).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "blixard/detail/backend.hpp"

namespace blixard::client {

struct HttpBackendOptions {
  std::string token;  // sent as "Authorization: Bearer <token>" when set
  // Per request; an invoke with its own timeout waits that long plus a margin, whichever is more.
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
  // Binary protobuf bodies (smaller, faster); false: canonical JSON.
  bool protobuf = true;
  // Keep-alive connections kept open between calls (one is opened per concurrent call).
  std::size_t max_idle_connections = 8;
};

// `url` is "http://host[:port][/prefix]"; any other scheme is Error(invalid_spec, field "url").
// Thread-safe: concurrent calls each use their own connection, taken from a small keep-alive pool.
std::shared_ptr<detail::Backend> make_http_backend(const std::string& url,
                                                   HttpBackendOptions options);
std::shared_ptr<detail::Backend> make_http_backend(const std::string& url, const std::string& token,
                                                   std::chrono::milliseconds timeout);

}  // namespace blixard::client
