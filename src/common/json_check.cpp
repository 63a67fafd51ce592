// The one linear JSON check of the wire (see json_check.hpp).
#include "common/json_check.hpp"

#include "common/json_sax.hpp"

namespace blixard {

boost::json::parse_options json_parse_options() {
  boost::json::parse_options options;
  options.max_depth = k_max_json_depth;
  return options;
}

JsonCheck json_verdict(const boost::system::error_code& ec) {
  if (!ec) return {};
  if (ec == boost::json::error::too_deep) return {JsonVerdict::too_deep, ec.message()};
  return {JsonVerdict::invalid, ec.message()};
}

JsonCheck check_json_text(std::string_view text) {
  // A SAX parser that builds nothing: Boost.JSON keeps its own stack, so depth costs no recursion.
  boost::json::basic_parser<json_sax::Ignore> parser{json_parse_options()};
  boost::system::error_code ec;
  const std::size_t n = parser.write_some(false, text.data(), text.size(), ec);
  if (!ec && n < text.size()) ec = boost::json::error::extra_data;
  return json_verdict(ec);
}

std::string json_problem(const JsonCheck& check, std::string_view what) {
  std::string out(what);
  switch (check.verdict) {
    case JsonVerdict::ok:
      return out + " is valid JSON";
    case JsonVerdict::too_deep:
      return out + " is nested deeper than " + std::to_string(k_max_json_depth) + " levels";
    case JsonVerdict::invalid:
      break;
  }
  return out + " is not valid JSON: " + check.detail;
}

}  // namespace blixard
