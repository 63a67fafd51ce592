// libFuzzer target: a request head through Beast's parser with the server's limits, then the
// checks the server makes on it before reading any body (api/http_head).
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "api/http_head.hpp"

namespace http = boost::beast::http;
using namespace blixard::api;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  http::request_parser<http::empty_body> parser;
  parser.header_limit(static_cast<std::uint32_t>(k_max_header));
  parser.eager(false);
  boost::system::error_code ec;
  parser.put(boost::asio::buffer(bytes.data(), bytes.size()), ec);

  if (ec && ec != http::error::need_more) {
    const unsigned status = head_error_status(ec, parser.get().target(), bytes);
    if (status != 0 && status != 400 && status != 414 && status != 431) std::abort();
    if (ec == http::error::header_limit && status != 414 && status != 431) std::abort();
    return 0;
  }
  if (!parser.is_header_done()) return 0;

  const auto& head = parser.get();
  const std::string_view target = head.target();
  // The fast path and the full parse agree on who owns a path.
  if (is_api_target(target) != is_api_path(parse_target(target))) std::abort();

  const bool good = bearer_matches(head[http::field::authorization], "t0ken");
  const HeadLimits limits{true, good, {}, 1024, 2048};
  const HeadVerdict v = check_head(head, parser.content_length(), limits);
  if (target.size() > k_max_target) {
    if (v.status != 414) std::abort();
    return 0;
  }
  if (v.gateway == is_api_target(target)) std::abort();
  if (v.body_limit != (v.gateway ? 2048u : 1024u)) std::abort();
  if (v.status == 401 && v.gateway) std::abort();  // the gateway is public
  if (v.authenticated && (v.gateway || v.status == 401)) std::abort();
  if (v.status != 0 && v.status != 401 && v.status != 413) std::abort();
  if (v.status != 0 && v.message.empty()) std::abort();
  if (v.status == 0 && parser.content_length() && *parser.content_length() > v.body_limit) {
    std::abort();
  }
  // Without a token nothing is unauthenticated.
  const HeadVerdict open =
      check_head(head, parser.content_length(), {false, false, {}, 1024, 2048});
  if (open.status == 401) std::abort();
  return 0;
}
